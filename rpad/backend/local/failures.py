"""Failed authentications per address, in this process (brute-force protection).

An address with ``max_per_window`` failures in the last minute is refused (HTTP 429, WebSocket
4001) until its oldest failure is a minute old. Memory is bounded: under a spray of addresses
the table is cleared rather than grown past :data:`MAX_ADDRESSES`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

WINDOW_SECONDS = 60.0
MAX_ADDRESSES = 100_000


class LocalFailureCounter:
    """:class:`~rpad.backend.base.FailureCounter` for one node."""

    def __init__(self, max_per_window: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_per_window = max_per_window
        self.clock = clock
        self._failures: dict[str, list[float]] = {}

    def blocked(self, peer: str) -> float | None:
        times = self._failures.get(peer)
        if not times:
            return None
        now = self.clock()
        while times and times[0] < now - WINDOW_SECONDS:
            times.pop(0)
        if len(times) >= self.max_per_window:
            return times[0] + WINDOW_SECONDS - now
        if not times:
            del self._failures[peer]
        return None

    def failed(self, peer: str) -> None:
        if len(self._failures) > MAX_ADDRESSES:
            self._failures.clear()
        times = self._failures.setdefault(peer, [])
        times.append(self.clock())
        del times[: -self.max_per_window]
