"""The windowed fleet view (rpad/core/window.py): across random changes, every view's page and
counts equal a brute-force filter, sort and slice of the whole list."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rpad.core import window as window_mod
from rpad.core.errors import RateLimited, UnknownClient, ValidationFailed
from rpad.core.registry import Registry
from rpad.core.validation import Heartbeat, Registration
from rpad.core.window import FILTERS, SORT_KEYS, View, WindowEngine, brute_force, parse_view

IDS = [f"c{i}" for i in range(14)] + ["Robot-A", "robot-b", "10.0.0.9"]

def _beat(cid: str, status: str, version: str | None, name: str | None, ip: str | None,
          cpu: float | None, mem: float | None) -> tuple[str, Heartbeat]:
    metrics = None
    if cpu is not None:
        metrics = {"cpuUsagePercent": cpu}
        if mem is not None:
            metrics.update(memoryUsageBytes=mem, memoryTotalBytes=8.0)
    return ("beat", Heartbeat(client_id=cid, status=status, version=version, name=name,
                              ip_address=ip, metrics=metrics))


heartbeats = st.builds(
    _beat, st.sampled_from(IDS), st.sampled_from(["online", "busy", "offline"]),
    st.sampled_from([None, "1.0", "1.1", "2.0"]), st.sampled_from([None, "Alpha", "beta", "x"]),
    st.sampled_from([None, "10.0.0.1", "10.0.0.2"]),
    st.one_of(st.none(), st.sampled_from([0.0, 5.0, 50.0, 99.5])),
    st.one_of(st.none(), st.sampled_from([1.0, 4.0])))
registrations = st.builds(
    lambda cid, name, tags: ("register", Registration(cid, name, tags)),
    st.sampled_from(IDS), st.sampled_from([None, "Gamma", "robot one"]),
    st.sampled_from([None, [], ["t1"], ["t2"], ["t1", "t2"]]))
removals = st.builds(lambda cid: ("remove", cid), st.sampled_from(IDS))
sweeps = st.just(("sweep", None))
ticks = st.integers(0, 90).map(lambda s: ("time", float(s)))
op = st.one_of(heartbeats, heartbeats, heartbeats, registrations, removals, sweeps, ticks)

views = st.builds(View, st.sampled_from(FILTERS), st.sampled_from(["", "a", "1", "robot", "10.0"]),
                  st.sampled_from([None, "t1", "t2"]), st.sampled_from(SORT_KEYS), st.booleans(),
                  st.integers(0, 12), st.integers(1, 8))


def apply(reg: Registry, now: float, op: tuple[str, Any]) -> None:
    kind, arg = op
    try:
        if kind == "beat":
            reg.heartbeat(arg, now)
        elif kind == "register":
            reg.register(arg, now)
        elif kind == "remove":
            reg.remove(arg, now)
        elif kind == "sweep":
            reg.sweep(now)
    except (RateLimited, UnknownClient):
        pass


@pytest.mark.parametrize("small_family", [window_mod.SMALL_FAMILY, 2])
@settings(max_examples=150, derandomize=True, deadline=None)
@given(st.lists(st.tuples(st.lists(op, max_size=12), st.lists(views, min_size=1, max_size=4)),
                min_size=1, max_size=12))
def test_a_window_equals_brute_force_across_random_changes(
        small_family: int, rounds: list[tuple[list[tuple[str, Any]], list[View]]]) -> None:
    saved = window_mod.SMALL_FAMILY, window_mod.IDLE_REFRESHES
    window_mod.SMALL_FAMILY, window_mod.IDLE_REFRESHES = small_family, 2
    try:
        reg = Registry(default_timeout_seconds=60, min_interval_seconds=0, auto_register=True)
        reg.heartbeat(Heartbeat(client_id="c0", metrics={"cpuUsagePercent": 1.0}), 0.0)
        engine = WindowEngine(reg)
        now = 0.0
        for ops, round_views in rounds:
            for o in ops:
                if o[0] == "time":
                    now += o[1]
                else:
                    apply(reg, now, o)
            engine.refresh()
            for v in round_views:
                got, want = engine.window(v), brute_force(reg, v)
                assert got == want, v
    finally:
        window_mod.SMALL_FAMILY, window_mod.IDLE_REFRESHES = saved


def test_views_are_parsed_with_every_bad_field_named() -> None:
    v = parse_view({"filter": "online", "q": "  Robot ", "tag": "t1", "sort": "-cpu",
                    "offset": 100, "limit": 50})
    assert v == View("online", "robot", "t1", "cpu", True, 100, 50)
    assert v.as_json()["sort"] == "-cpu"
    assert parse_view({}) == View()
    with pytest.raises(ValidationFailed) as info:
        parse_view({"filter": "gone", "q": 5, "tag": "", "sort": "-size", "offset": -1,
                    "limit": 10_000, "page": 2})
    fields = {d["field"] for d in info.value.details}
    assert fields == {"view.filter", "view.q", "view.tag", "view.sort", "view.offset",
                      "view.limit", "view.page"}
    for bad in ([], "x", None):
        with pytest.raises(ValidationFailed):
            parse_view(bad)
    with pytest.raises(ValidationFailed):
        parse_view({"limit": True})
