"""Availability arithmetic (rpad/core/uptime.py): uptime across rpad restarts (clean and
crashed) and start-up graces, which never count against the client."""

from __future__ import annotations

import attrs
import pytest

from rpad.core.uptime import (
    GRACE,
    RPAD_DOWN,
    Period,
    StatusEvent,
    availability,
    rpad_periods,
    timeline,
)

DAY = 86400.0


@attrs.frozen
class R:
    started_at: float
    alive_at: float
    stopped_at: float | None
    grace_until: float


def test_always_online_is_100_percent_and_before_the_first_event_is_unknown() -> None:
    events = [StatusEvent(1000.0, "online", "heartbeat")]
    a = availability(events, [], now=5000.0, window_seconds=DAY)
    assert (a.online_seconds, a.offline_seconds, a.unknown_seconds) == (4000.0, 0.0, DAY - 4000)
    assert a.percent == 100.0


def test_offline_time_counts_against_the_client() -> None:
    events = [StatusEvent(0.0, "online", "heartbeat"), StatusEvent(600.0, "offline", "timeout"),
              StatusEvent(900.0, "online", "heartbeat")]
    a = availability(events, [], now=1200.0, window_seconds=1200.0)
    assert (a.online_seconds, a.offline_seconds) == (900.0, 300.0)
    assert a.percent == pytest.approx(75.0)
    # A window that starts inside a period takes the state in force then.
    a = availability(events, [], now=1200.0, window_seconds=500.0)
    assert (a.online_seconds, a.offline_seconds) == (300.0, 200.0)


def test_rpad_down_and_grace_are_never_the_clients() -> None:
    # Run 1: 0..1000, stopped cleanly. Run 2 starts at 1500 with 60 s grace, crashes (last
    # alive 3000). Run 3 starts at 3600 with 60 s grace and runs until now (5000).
    runs = [R(0.0, 1000.0, 1000.0, 0.0), R(1500.0, 3000.0, None, 1560.0),
            R(3600.0, 3600.0, None, 3660.0)]
    periods = rpad_periods(runs, 5000.0)
    assert periods == [Period(1000.0, 1500.0, RPAD_DOWN), Period(1500.0, 1560.0, GRACE),
                       Period(3000.0, 3600.0, RPAD_DOWN), Period(3600.0, 3660.0, GRACE)]
    # Online from 0; rpad's view kept it online through its downtimes; after the third
    # start it timed out at 3700 (after the grace) and came back at 4700.
    events = [StatusEvent(0.0, "online", "heartbeat"), StatusEvent(3700.0, "offline", "timeout"),
              StatusEvent(4700.0, "online", "heartbeat")]
    a = availability(events, periods, now=5000.0, window_seconds=5000.0)
    assert a.rpad_down_seconds == 500.0 + 600.0
    assert a.grace_seconds == 60.0 + 60.0
    assert a.offline_seconds == 1000.0
    assert a.online_seconds == 5000.0 - 1100.0 - 120.0 - 1000.0
    assert a.percent == pytest.approx(100 * 2780 / 3780)
    segs = [(s.start, s.end, s.state, s.reason) for s in timeline(events, periods, 0.0, 5000.0)]
    assert segs == [(0.0, 1000.0, "online", "heartbeat"), (1000.0, 1500.0, RPAD_DOWN, None),
                    (1500.0, 1560.0, GRACE, None), (1560.0, 3000.0, "online", "heartbeat"),
                    (3000.0, 3600.0, RPAD_DOWN, None), (3600.0, 3660.0, GRACE, None),
                    (3660.0, 3700.0, "online", "heartbeat"),
                    (3700.0, 4700.0, "offline", "timeout"),
                    (4700.0, 5000.0, "online", "heartbeat")]


def test_a_client_offline_while_rpad_was_down_is_not_counted_until_the_grace_ends() -> None:
    runs = [R(0.0, 100.0, 100.0, 0.0), R(400.0, 400.0, None, 460.0)]
    periods = rpad_periods(runs, 1000.0)
    events = [StatusEvent(0.0, "online", "heartbeat"), StatusEvent(460.0, "offline", "timeout")]
    a = availability(events, periods, now=1000.0, window_seconds=1000.0)
    assert (a.online_seconds, a.rpad_down_seconds, a.grace_seconds, a.offline_seconds) == (
        100.0, 300.0, 60.0, 540.0)


def test_nothing_known_gives_no_percentage() -> None:
    a = availability([], rpad_periods([R(0.0, 0.0, None, 60.0)], 30.0), 30.0, DAY)
    assert a.percent is None and a.grace_seconds == 30.0


def test_a_grace_longer_than_its_run_ends_with_the_run() -> None:
    assert rpad_periods([R(0.0, 10.0, 10.0, 60.0), R(100.0, 100.0, None, 100.0)], 200.0) == [
        Period(0.0, 10.0, GRACE), Period(10.0, 100.0, RPAD_DOWN)]
