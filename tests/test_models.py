"""models.iso(): the cached formatter agrees with datetime everywhere."""

import random
from datetime import UTC, datetime

from rpad.core.times import iso, parse_iso


def _reference(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def test_iso_matches_datetime_on_many_times() -> None:
    rng = random.Random(1234)
    times = [0.0, -1.5, 1767225600.123, 1767225600.9995, 1767225600.0005, 253402300799.5]
    times += [rng.uniform(0, 4e9) for _ in range(20000)]
    times += [1767225600 + rng.randint(0, 999_999) / 1000 for _ in range(20000)]
    for ts in times:
        assert iso(ts) == _reference(ts), ts
    assert iso(None) is None


def test_parse_iso_round_trip_and_zones() -> None:
    assert parse_iso("2025-07-23T12:00:00Z") == 1753272000.0
    assert parse_iso("2025-07-23T12:00:00") == 1753272000.0
    assert parse_iso("2025-07-23T14:00:00+02:00") == 1753272000.0
    assert parse_iso(iso(1753272000.25) or "") == 1753272000.25
