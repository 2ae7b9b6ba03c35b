"""Metrics history, pure (rpad/core/history.py): downsampling with exact values at tier
boundaries, the encodings, re-bucketing, and choosing the tier of a query."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rpad.core.history import (
    METRIC_NAMES,
    Downsampler,
    Grid,
    PlanError,
    acc_stats,
    auto_step,
    new_acc,
    pack_rollup,
    pack_sample,
    plan_query,
    unpack_rollup,
    unpack_sample,
)

T0 = 1767225600  # 2026-01-01T00:00:00Z: a minute, quarter-hour and hour boundary
CPU = "cpuUsagePercent"


def stats(rollups: list, step: int) -> dict[int, dict[str, tuple[int, float, float, float]]]:
    return {r.start - T0: acc_stats(r.acc) for r in rollups if r.step == step}


def test_a_sample_on_a_boundary_opens_the_next_bucket() -> None:
    d = Downsampler()
    for t, cpu in ((0, 10.0), (30, 20.0), (59.999, 30.0), (60, 40.0), (119.5, 50.0),
                   (899.999, 60.0), (900, 70.0), (3599.5, 80.0), (3600, 90.0)):
        d.add("a", T0 + t, {CPU: cpu})
    # Nothing has ended before its end.
    assert d.close(T0 + 59.999) == []
    closed = d.close(T0 + 60)
    assert stats(closed, 60) == {0: {CPU: (3, 10.0, 20.0, 30.0)}}
    assert stats(d.close(T0 + 120), 60) == {60: {CPU: (2, 40.0, 45.0, 50.0)}}
    assert d.close(T0 + 899.999) == []  # the bucket of 899.999 ends at 900
    closed = d.close(T0 + 900)
    assert stats(closed, 60) == {840: {CPU: (1, 60.0, 60.0, 60.0)}}
    assert stats(closed, 900) == {0: {CPU: (6, 10.0, 35.0, 60.0)}}
    closed = d.close(T0 + 3600)
    assert stats(closed, 900) == {900: {CPU: (1, 70.0, 70.0, 70.0)},
                                  2700: {CPU: (1, 80.0, 80.0, 80.0)}}
    assert stats(closed, 3600) == {0: {CPU: (8, 10.0, 45.0, 80.0)}}
    closed = d.close(T0 + 7200)
    assert stats(closed, 60) == {3600: {CPU: (1, 90.0, 90.0, 90.0)}}
    assert stats(closed, 3600) == {3600: {CPU: (1, 90.0, 90.0, 90.0)}}
    assert d.open_count() == 0


def test_clients_and_metrics_are_kept_apart() -> None:
    d = Downsampler()
    d.add("a", T0 + 1, {CPU: 1.0, "load1": 0.5})
    d.add("b", T0 + 2, {CPU: 3.0})
    d.add("a", T0 + 3, {CPU: 5.0, "unknownMetric": 7.0})
    out = {(r.client_id, r.step): acc_stats(r.acc) for r in d.close(T0 + 3600)}
    assert out[("a", 60)] == {CPU: (2, 1.0, 3.0, 5.0), "load1": (1, 0.5, 0.5, 0.5)}
    assert out[("b", 3600)] == {CPU: (1, 3.0, 3.0, 3.0)}


def test_a_late_sample_goes_to_the_oldest_open_bucket() -> None:
    """The wall clock stepped back past a boundary already closed (and stored): the sample is
    counted in the bucket still open instead of reopening the stored one."""
    d = Downsampler()
    d.add("a", T0 + 70, {CPU: 1.0})
    d.close(T0 + 60)  # closes nothing for "a", but [T0, T0+60) is over for every client
    d.add("a", T0 + 10, {CPU: 3.0})
    assert stats(d.close(T0 + 120), 60) == {60: {CPU: (2, 1.0, 2.0, 3.0)}}


def test_merge_of_a_replay_is_the_same_as_one_downsampler() -> None:
    samples = [("a", T0 + i * 7.5, {CPU: float(i), "load1": i / 2}) for i in range(300)]
    one = Downsampler()
    for cid, at, v in samples:
        one.add(cid, at, v)
    live, replay = Downsampler(), Downsampler()
    for i, (cid, at, v) in enumerate(samples):
        (live if i % 3 else replay).add(cid, at, v)
    live.merge(replay)
    end = T0 + 7200
    a = {(r.step, r.start): acc_stats(r.acc) for r in one.close(end)}
    b = {(r.step, r.start): acc_stats(r.acc) for r in live.close(end)}
    assert a.keys() == b.keys()
    for key, metrics in a.items():
        for name, (n1, lo1, avg1, hi1) in metrics.items():
            n2, lo2, avg2, hi2 = b[key][name]
            assert (n1, lo1, hi1) == (n2, lo2, hi2) and avg1 == pytest.approx(avg2, rel=1e-12)


def test_forget_drops_a_removed_client() -> None:
    d = Downsampler()
    d.add("a", T0, {CPU: 1.0})
    d.add("b", T0, {CPU: 1.0})
    d.forget("a")
    assert {r.client_id for r in d.close(T0 + 3600)} == {"b"}


# -- encodings -----------------------------------------------------------------------------------

values = st.floats(min_value=0, max_value=1e18, allow_nan=False)


@settings(max_examples=200, derandomize=True)
@given(st.dictionaries(st.sampled_from(METRIC_NAMES), values))
def test_a_sample_round_trips_exactly(sample: dict[str, float]) -> None:
    assert unpack_sample(pack_sample(sample)) == sample


@settings(max_examples=200, derandomize=True)
@given(st.lists(st.dictionaries(st.sampled_from(METRIC_NAMES),
                                st.integers(0, 2**20).map(float)), min_size=1, max_size=20))
def test_a_rollup_round_trips(samples: list[dict[str, float]]) -> None:
    d = Downsampler([60])
    for s in samples:
        d.add("a", T0, s)
    closed = d.close(T0 + 60)
    if not any(samples):
        return
    (r,) = closed
    before = acc_stats(r.acc)
    after = acc_stats(unpack_rollup(pack_rollup(r.acc)))
    assert before.keys() == after.keys()
    for name, (n, lo, avg, hi) in before.items():
        n2, lo2, avg2, hi2 = after[name]
        # Counts exact; min/max exact (integers under 2**24 are exact in float32); the
        # average to float32 precision.
        assert (n2, lo2, hi2) == (n, lo, hi)
        assert avg2 == pytest.approx(avg, rel=1e-6)


def test_bad_blobs_are_refused() -> None:
    for blob in (b"", b"\x01"):
        with pytest.raises((ValueError, struct.error)):
            unpack_sample(blob)
    with pytest.raises((ValueError, struct.error)):
        unpack_rollup(b"\x01\x00")


def test_a_rollup_of_eleven_metrics_is_small() -> None:
    acc = new_acc()
    d = Downsampler([60])
    d.add("a", T0, dict.fromkeys(METRIC_NAMES, 1.0))
    (r,) = d.close(T0 + 60)
    assert len(pack_rollup(r.acc)) == 8 + 12 * len(METRIC_NAMES)
    assert acc_stats(acc) == {}


# -- the grid ------------------------------------------------------------------------------------


def test_grid_re_buckets_stored_buckets_and_samples() -> None:
    d = Downsampler([60])
    for i in range(30):  # one sample every 10 s for 5 minutes: cpu 0..29
        d.add("a", T0 + 10 * i, {CPU: float(i)})
    rows = d.close(T0 + 300)
    grid = Grid(T0, 120, 3)
    for r in rows:
        grid.add_bucket(r.start, r.acc)
    s = grid.series([CPU, "load1"])
    assert s.count == [12, 12, 6]
    assert s.stats[CPU] == ([0.0, 12.0, 24.0], [5.5, 17.5, 26.5], [11.0, 23.0, 29.0])
    assert s.stats["load1"] == ([None] * 3, [None] * 3, [None] * 3)
    raw = Grid(T0, 120, 3)
    for i in range(30):
        raw.add_sample(T0 + 10 * i, {CPU: float(i)})
    raw.add_sample(T0 - 1, {CPU: 99.0})  # outside: ignored
    assert raw.series([CPU]).stats[CPU] == s.stats[CPU]


# -- choosing the tier ---------------------------------------------------------------------------

RETENTION = {0: 3600.0, 60: 25 * 3600.0, 900: 8 * 86400.0, 3600: 31 * 86400.0}
NOW = T0 + 40 * 86400


def test_the_plan_uses_the_coarsest_tier_that_holds_the_range() -> None:
    hour, day = 3600, 86400
    assert plan_query(RETENTION, NOW, NOW - hour, NOW, 30, 5000).tier == 0
    assert plan_query(RETENTION, NOW, NOW - hour, NOW, 60, 5000).tier == 60
    p = plan_query(RETENTION, NOW, NOW - day, NOW, 60, 5000)
    assert (p.tier, p.start, p.step, p.n) == (60, NOW - day, 60, 1440)
    assert plan_query(RETENTION, NOW, NOW - day, NOW, 900, 5000).tier == 900
    assert plan_query(RETENTION, NOW, NOW - 7 * day, NOW, 900, 5000).tier == 900
    assert plan_query(RETENTION, NOW, NOW - 30 * day, NOW, 3600, 5000).tier == 3600
    # Older than every retention: the tier that reaches back furthest.
    assert plan_query(RETENTION, NOW, NOW - 90 * day, NOW - 80 * day, 3600, 5000).tier == 3600
    # The grid starts on a multiple of the step.
    p = plan_query(RETENTION, NOW, NOW - day + 30, NOW, 60, 5000)
    assert (p.start, p.n) == (NOW - day, 1440)


@pytest.mark.parametrize(("start", "end", "step", "field", "text"), [
    (NOW, NOW - 60, 60, "from", "before to"),
    (NOW, NOW, 60, "from", "before to"),
    (NOW - 2 * 86400, NOW, 60, "step", "at least 900"),
    (NOW - 2 * 86400, NOW, 1000, "step", "multiple of 900"),
    (NOW - 30 * 86400, NOW, 1, "step", "more than 5000"),
    (NOW - 3600, NOW, 0, "step", "at least 1"),
])
def test_bad_plans_name_the_parameter(start: float, end: float, step: int, field: str,
                                      text: str) -> None:
    with pytest.raises(PlanError) as info:
        plan_query(RETENTION, NOW, start, end, step, 5000)
    assert info.value.field == field and text in info.value.message


def test_auto_step() -> None:
    assert auto_step(RETENTION, NOW, NOW - 3600, NOW, 720) == 5
    assert auto_step(RETENTION, NOW, NOW - 86400, NOW, 720) == 120
    assert auto_step(RETENTION, NOW, NOW - 30 * 86400, NOW, 720) == 3600
    assert math.isfinite(auto_step({0: 0.0, 60: 60.0}, NOW, NOW - 10, NOW, 720))
