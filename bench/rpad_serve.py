"""``rpad serve`` for the fan-out benchmark: exactly ``python -m rpad serve --config PATH``,
except that the hub's per-connection limit on client messages (a flood guard, 50 a second) is
lifted, since the benchmark's publisher sends the hub's ``publish`` action thousands of times a
second on one connection. The limiter itself still runs on every message.

    python bench/rpad_serve.py --config PATH
"""

from __future__ import annotations

import sys

from rpad import cli

try:
    from rpad.hub import connection as limits
except ImportError:  # an rpad from before the layers (BENCH_RPAD_ROOT at an older checkout)
    from rpad import hub as limits  # type: ignore[no-redef]

UNLIMITED = 10**12

limits.MESSAGES_PER_SECOND = float(UNLIMITED)
limits.MESSAGE_BURST = UNLIMITED

if __name__ == "__main__":
    sys.exit(cli.main(["serve", *sys.argv[1:]]))
