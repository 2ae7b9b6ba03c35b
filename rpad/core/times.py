"""Time formatting: epoch seconds <-> ISO 8601 UTC, the one format rpad sends and reads."""

from __future__ import annotations

import math
from datetime import UTC, datetime

_ISO_SECONDS_CACHE: dict[int, str] = {}
_ISO_CACHE_SIZE = 8192


def iso(ts: float | None) -> str | None:
    """Epoch seconds → ISO 8601 UTC with ``Z`` and milliseconds.

    Called several times per client view, so the whole-second prefix is cached.
    """
    if ts is None:
        return None
    whole = math.floor(ts)
    # Round to microseconds first (as datetime does), then truncate to milliseconds.
    micros = round((ts - whole) * 1_000_000)
    if micros >= 1_000_000:
        whole, micros = whole + 1, micros - 1_000_000
    millis = micros // 1000
    prefix = _ISO_SECONDS_CACHE.get(whole)
    if prefix is None:
        if len(_ISO_SECONDS_CACHE) >= _ISO_CACHE_SIZE:
            _ISO_SECONDS_CACHE.clear()
        # (isoformat, not strftime: %Y leaves a year before 1000 unpadded, "14-07-25")
        prefix = datetime.fromtimestamp(whole, UTC).replace(tzinfo=None).isoformat("T",
                                                                                  "seconds")
        _ISO_SECONDS_CACHE[whole] = prefix
    return f"{prefix}.{millis:03d}Z"


def parse_iso(text: str) -> float:
    """ISO 8601 → epoch seconds. A time without zone is taken as UTC. Raises ValueError."""
    if not isinstance(text, str) or len(text) > 64:
        raise ValueError("not an ISO 8601 time")
    t = text.strip()
    if t.endswith(("Z", "z")):
        t = t[:-1] + "+00:00"
    dt = datetime.fromisoformat(t)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()
