"""One client's story: its metrics over time and its availability, for the detail API.

Reads only: the metrics from the :class:`~rpad.backend.base.MetricsHistory` (tier chosen by
:func:`rpad.core.history.plan_query`), the status events from the
:class:`~rpad.backend.base.PresenceBackend`, rpad's runs from the history; the arithmetic is
:mod:`rpad.core.uptime`.

Error handling: a query the history cannot answer raises
:class:`~rpad.core.history.PlanError` (naming the query parameter); unreadable storage raises
:class:`~rpad.core.errors.StorageUnavailable`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..backend.base import MetricsHistory, PresenceBackend
from ..core.history import TIER_NAMES, auto_step, plan_query
from ..core.times import iso
from ..core.uptime import (
    WINDOWS_SECONDS,
    Availability,
    StatusEvent,
    availability,
    rpad_periods,
    timeline,
)

# A metrics answer holds at most this many buckets (the grid the caller asked for).
MAX_POINTS = 5000
# Buckets of a query that names no step.
DEFAULT_POINTS = 720
# Status events read for availability (the store keeps at most this many per client).
MAX_STATUS_EVENTS = 10_000
TIMELINE_WINDOWS_SECONDS = {"1h": 3600.0, **WINDOWS_SECONDS}


def _rounded(values: list[float | None]) -> list[float | None]:
    """Six decimals (stored buckets are float32: the rest is noise, and bytes on the wire)."""
    r = round
    return [None if v is None else r(v, 6) for v in values]


def availability_json(a: Availability) -> dict[str, Any]:
    pct = a.percent
    return {
        "percent": None if pct is None else round(pct, 3),
        "onlineSeconds": round(a.online_seconds, 3),
        "offlineSeconds": round(a.offline_seconds, 3),
        "unknownSeconds": round(a.unknown_seconds, 3),
        "rpadDownSeconds": round(a.rpad_down_seconds, 3),
        "graceSeconds": round(a.grace_seconds, 3),
    }


class ClientHistory:
    def __init__(self, backend: PresenceBackend, history: MetricsHistory, *,
                 wall_clock: Callable[[], float]) -> None:
        self.backend = backend
        self.history = history
        self.wall_clock = wall_clock

    def default_step(self, start: float, end: float) -> int:
        return auto_step(self.history.retention(), self.wall_clock(), start, end,
                         DEFAULT_POINTS)

    async def metrics(self, client_id: str, start: float, end: float, step: int,
                      names: Sequence[str]) -> dict[str, Any]:
        """The client's metrics on a grid of ``step`` seconds over ``[start, end)``: for each
        bucket its number of samples and, per metric, min/avg/max (null where none)."""
        plan = plan_query(self.history.retention(), self.wall_clock(), start, end, step,
                          MAX_POINTS)
        series = await self.history.query(client_id, plan, names)
        return {
            "clientId": client_id,
            "from": iso(start),
            "to": iso(end),
            "tier": TIER_NAMES.get(plan.tier, str(plan.tier)),
            "tierStepSeconds": plan.tier,
            "step": plan.step,
            "start": plan.start,
            "startAt": iso(plan.start),
            "points": plan.n,
            "count": series.count,
            "metrics": {name: {"min": _rounded(lo), "avg": _rounded(avg), "max": _rounded(hi)}
                        for name, (lo, avg, hi) in series.stats.items()},
        }

    async def _inputs(self, client_id: str, now: float) -> tuple[list[StatusEvent], list[Any]]:
        rows = await self.backend.status_history(client_id, MAX_STATUS_EVENTS)
        events = [StatusEvent(at, status, reason) for at, status, reason in reversed(rows)]
        events.sort(key=lambda e: e.at)  # newest-first by id; a clock stepped back reorders
        runs = await self.history.runs(now - max(TIMELINE_WINDOWS_SECONDS.values()))
        return events, rpad_periods(runs, now)

    async def uptime_figures(self, client_id: str) -> dict[str, Any]:
        """Uptime over 24 h, 7 d and 30 d."""
        now = self.wall_clock()
        events, periods = await self._inputs(client_id, now)
        return {name: availability_json(availability(events, periods, now, seconds))
                for name, seconds in WINDOWS_SECONDS.items()}

    async def uptime(self, client_id: str, timeline_window: str) -> dict[str, Any]:
        """Uptime figures, rpad's own downtime and graces over 30 d, and the timeline of the
        client's states over ``timeline_window`` (a key of TIMELINE_WINDOWS_SECONDS)."""
        now = self.wall_clock()
        events, periods = await self._inputs(client_id, now)
        span = TIMELINE_WINDOWS_SECONDS[timeline_window]
        month = WINDOWS_SECONDS["30d"]
        return {
            "clientId": client_id,
            "serverTime": iso(now),
            "uptime": {name: availability_json(availability(events, periods, now, seconds))
                       for name, seconds in WINDOWS_SECONDS.items()},
            "rpadPeriods": [{"start": iso(p.start), "end": iso(p.end), "kind": p.kind}
                            for p in periods if p.end > now - month],
            "timeline": {
                "window": timeline_window,
                "segments": [{"start": iso(s.start), "end": iso(s.end), "state": s.state,
                              "reason": s.reason}
                             for s in timeline(events, periods, now - span, now)],
            },
        }
