"""Availability: a client's uptime over a window, from its status events and rpad's own runs.

Pure: the events, the runs and ``now`` are given. The client's state at a time is that of its
last status event at or before it (``online`` or ``offline``; ``unknown`` before its first
known event). Two kinds of time are rpad's, never the client's, and are taken out before
anything is counted: *rpad down* (between the end of one run, its clean stop or else the last
time it was known alive, and the start of the next) and the *start-up grace* of each run
(nobody is marked offline then, so the client's state is not known either). They are reported
on their own.

``percent = online / (online + offline)``: time not known (unknown, rpad down, grace) counts
neither for nor against the client; it is None when nothing was known.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence
from typing import Protocol

import attrs

from .model import OFFLINE, ONLINE, UNKNOWN

RPAD_DOWN = "rpad_down"
GRACE = "grace"
# Which wins where they overlap (a run's grace cannot overlap the downtime before it, but a
# clock stepped back could make anything overlap).
_PRIORITY = {RPAD_DOWN: 0, GRACE: 1}

WINDOWS_SECONDS = {"24h": 86400.0, "7d": 7 * 86400.0, "30d": 30 * 86400.0}


class RunLike(Protocol):
    @property
    def started_at(self) -> float: ...

    @property
    def alive_at(self) -> float: ...

    @property
    def stopped_at(self) -> float | None: ...

    @property
    def grace_until(self) -> float: ...


@attrs.frozen
class Period:
    """A stretch of rpad's own time: ``kind`` is :data:`RPAD_DOWN` or :data:`GRACE`."""

    start: float
    end: float
    kind: str


@attrs.frozen
class StatusEvent:
    at: float
    status: str
    reason: str | None = None


@attrs.frozen
class Availability:
    window_seconds: float
    online_seconds: float
    offline_seconds: float
    unknown_seconds: float
    rpad_down_seconds: float
    grace_seconds: float

    @property
    def percent(self) -> float | None:
        known = self.online_seconds + self.offline_seconds
        return None if known <= 0 else 100.0 * self.online_seconds / known


@attrs.frozen
class Segment:
    """A stretch of the timeline: ``state`` is online, offline, unknown, rpad_down or grace;
    ``reason`` that of the status event that began it (client states only)."""

    start: float
    end: float
    state: str
    reason: str | None = None


def rpad_periods(runs: Sequence[RunLike], now: float) -> list[Period]:
    """rpad's downtime between consecutive runs and each run's start-up grace, in time order.
    A run without a clean stop (a crash) ends when it was last known alive."""
    ordered = sorted(runs, key=lambda r: r.started_at)
    out: list[Period] = []
    for i, run in enumerate(ordered):
        last = i == len(ordered) - 1
        end = now if last else (run.stopped_at if run.stopped_at is not None else run.alive_at)
        end = max(end, run.started_at)
        grace_end = min(run.grace_until, end)
        if grace_end > run.started_at:
            out.append(Period(run.started_at, grace_end, GRACE))
        if not last:
            nxt = ordered[i + 1].started_at
            if nxt > end:
                out.append(Period(end, nxt, RPAD_DOWN))
    return out


def timeline(events: Sequence[StatusEvent], periods: Sequence[Period], start: float,
             end: float) -> list[Segment]:
    """The states over ``[start, end)``: events oldest first; neighbours in the same state
    (and reason) are merged."""
    if end <= start:
        return []
    times = [e.at for e in events]
    points = {start, end}
    points.update(t for t in times if start < t < end)
    for p in periods:
        points.update(t for t in (p.start, p.end) if start < t < end)
    edges = sorted(points)
    out: list[Segment] = []
    for a, b in itertools.pairwise(edges):
        state, reason = _state_at(a, events, times, periods)
        if out and out[-1].state == state and out[-1].reason == reason and out[-1].end == a:
            out[-1] = Segment(out[-1].start, b, state, reason)
        else:
            out.append(Segment(a, b, state, reason))
    return out


def _state_at(t: float, events: Sequence[StatusEvent], times: list[float],
              periods: Sequence[Period]) -> tuple[str, str | None]:
    kind: str | None = None
    for p in periods:
        if p.start <= t < p.end and (kind is None or _PRIORITY[p.kind] < _PRIORITY[kind]):
            kind = p.kind
    if kind is not None:
        return kind, None
    i = bisect.bisect_right(times, t) - 1
    if i < 0:
        return UNKNOWN, None
    ev = events[i]
    return (ev.status if ev.status in (ONLINE, OFFLINE) else UNKNOWN), ev.reason


def availability(events: Sequence[StatusEvent], periods: Sequence[Period], now: float,
                 window_seconds: float) -> Availability:
    """Seconds in each state over the last ``window_seconds`` before ``now``."""
    totals = {ONLINE: 0.0, OFFLINE: 0.0, UNKNOWN: 0.0, RPAD_DOWN: 0.0, GRACE: 0.0}
    for seg in timeline(events, periods, now - window_seconds, now):
        totals[seg.state] += seg.end - seg.start
    return Availability(window_seconds, totals[ONLINE], totals[OFFLINE], totals[UNKNOWN],
                        totals[RPAD_DOWN], totals[GRACE])
