"""The alert policy (rpad/core/alert_policy.py) with exact times.

The policy is pure: transitions and ticks carry their times, so each rule is checked at the
exact moment it must fire and a hair before. ``T`` is an arbitrary origin (wall-clock epoch
seconds); ``at(x)`` is ``T + x``.
"""

from __future__ import annotations

from typing import Any

import pytest

from rpad.core.alert_policy import (
    Alert,
    AlertPolicy,
    Grouping,
    Overrides,
    Policy,
    PolicyOverride,
)
from rpad.core.errors import ValidationFailed
from rpad.core.model import CLIENT_CONNECTED, CLIENT_DISCONNECTED, CLIENT_REMOVED, Event
from rpad.core.silences import (
    MaintenanceWindow,
    Match,
    Silence,
    SilenceBook,
    parse_clock,
    parse_silence,
    parse_weekdays,
)
from rpad.core.times import parse_iso

T = 1767225600.0  # 2026-01-01T00:00:00Z
NO_GROUPING = Grouping(group_threshold=0)


def at(x: float) -> float:
    return T + x


def down(cid: str, x: float, reason: str = "timeout", tags: tuple[str, ...] = ()) -> Event:
    return Event(CLIENT_DISCONNECTED, cid, at(x), {"clientId": cid, "tags": list(tags)},
                 reason, "online")


def up(cid: str, x: float, previous: str = "offline", tags: tuple[str, ...] = ()) -> Event:
    return Event(CLIENT_CONNECTED, cid, at(x), {"clientId": cid, "tags": list(tags)},
                 "heartbeat", previous)


def policy(grouping: Grouping = NO_GROUPING, silences: SilenceBook | None = None,
           overrides: Overrides | None = None, **fields: Any) -> AlertPolicy:
    fields.setdefault("flap_transitions", 0)
    return AlertPolicy(Policy(**fields), grouping=grouping, silences=silences,
                       overrides=overrides)


def summary(alerts: list[Alert]) -> list[tuple[str, float, list[str]]]:
    return [(a.event, round(a.at - T, 6), [i.client_id for i in a.items]) for a in alerts]


def run(p: AlertPolicy, events: list[Event], until: float) -> list[tuple[str, float, list[str]]]:
    """Feed events in order, ticking at every moment the policy asks for, up to ``until``."""
    out: list[Alert] = []
    queue = sorted(events, key=lambda e: e.at)
    while True:
        nxt = p.next_tick()
        ev_at = queue[0].at if queue else None
        if ev_at is not None and (nxt is None or ev_at < nxt):
            ev = queue.pop(0)
            out.extend(p.tick(ev.at))
            p.observe(ev)
            continue
        if nxt is None or nxt > at(until):
            break
        out.extend(p.tick(nxt))
    return summary(out)


# -- thresholds --------------------------------------------------------------------------------


def test_alert_after_holds_back_a_short_outage_and_fires_exactly_at_the_threshold() -> None:
    p = policy(alert_after_seconds=120)
    p.observe(down("a", 0))
    assert p.next_tick() == at(120)
    p.observe(up("a", 90))  # back within 120 s: nothing, ever
    assert p.next_tick() is None
    assert p.tick(at(10_000)) == []
    p.observe(down("a", 200))
    assert p.tick(at(319.999)) == []
    assert summary(p.tick(at(320))) == [("client.offline", 320.0, ["a"])]
    alert = p.tick(at(320))
    assert alert == []


def test_zero_threshold_alerts_at_the_transition_and_a_new_client_raises_nothing() -> None:
    p = policy()
    p.observe(up("new", 0, previous="unknown"))
    assert p.next_tick() is None
    p.observe(down("new", 5, reason="agent_shutdown"))
    alerts = p.tick(at(5))
    assert summary(alerts) == [("client.offline", 5.0, ["new"])]
    assert (alerts[0].level, alerts[0].items[0].reason) == ("warning", "agent_shutdown")
    p.observe(up("new", 8))
    alerts = p.tick(at(8))
    assert summary(alerts) == [("client.online", 8.0, ["new"])]
    assert alerts[0].level == "success"


def test_recovery_only_after_staying_back_and_only_after_an_offline_alert() -> None:
    p = policy(alert_after_seconds=120, recover_after_seconds=60)
    assert run(p, [down("a", 0), up("a", 300), down("a", 330), up("a", 400)], 10_000) == [
        ("client.offline", 120.0, ["a"]),
        # back at 300, down again at 330 (before 360): no recovery, no second offline alert;
        # back at 400 for good: recovered at 460.
        ("client.online", 460.0, ["a"]),
    ]
    # Never alerted offline: never a recovery.
    q = policy(alert_after_seconds=120, recover_after_seconds=60)
    assert run(q, [down("b", 0), up("b", 100)], 10_000) == []


# -- reminders ---------------------------------------------------------------------------------


def test_reminders_repeat_while_down_up_to_their_cap() -> None:
    p = policy(alert_after_seconds=60, repeat_every_seconds=600, max_reminders=2)
    p.observe(down("a", 0))
    alerts: list[Alert] = []
    for x in (60, 659.999, 660, 1259.999, 1260, 1860, 100_000):
        alerts += p.tick(at(x))
    assert summary(alerts) == [("client.offline", 60.0, ["a"]),
                               ("client.reminder", 660.0, ["a"]),
                               ("client.reminder", 1260.0, ["a"])]
    assert [(a.items[0].reminder, a.items[0].max_reminders) for a in alerts[1:]] == [(1, 2), (2, 2)]
    assert p.next_tick() is None  # the cap: no third reminder


def test_reminders_stop_when_the_client_is_back() -> None:
    p = policy(repeat_every_seconds=600, max_reminders=5)
    assert run(p, [down("a", 0), up("a", 900)], 100_000) == [
        ("client.offline", 0.0, ["a"]), ("client.reminder", 600.0, ["a"]),
        ("client.online", 900.0, ["a"])]


# -- flapping ----------------------------------------------------------------------------------


def test_flapping_gives_one_alert_then_quiet_until_stable_then_the_settled_state() -> None:
    p = policy(alert_after_seconds=0, flap_transitions=4, flap_window_seconds=300)
    events = [down("a", 0), up("a", 10), down("a", 20), up("a", 30), down("a", 40),
              up("a", 50), down("a", 200)]
    # 0: offline alert; 10: recovery; 20: offline; 30: the 4th transition in 300 s is
    # flapping (one alert, nothing more while it flaps); stable 300 s after the last
    # transition (200): at 500 it is down, so its offline alert.
    assert run(p, events, 10_000) == [
        ("client.offline", 0.0, ["a"]), ("client.online", 10.0, ["a"]),
        ("client.offline", 20.0, ["a"]), ("client.flapping", 30.0, ["a"]),
        ("client.offline", 500.0, ["a"])]


def test_flapping_that_settles_online_is_announced_as_recovered() -> None:
    p = policy(alert_after_seconds=120, flap_transitions=4, flap_window_seconds=300)
    events = [down("a", 0), up("a", 10), down("a", 20), up("a", 30)]
    # Every outage was shorter than 120 s, yet it flaps: one flapping alert at 30, and the
    # recovery once it has been stable for 300 s.
    assert run(p, events, 10_000) == [("client.flapping", 30.0, ["a"]),
                                      ("client.online", 330.0, ["a"])]
    assert not p.is_flapping("a")


# -- grouping ----------------------------------------------------------------------------------


def test_a_partition_is_grouped_into_one_alert_with_counts() -> None:
    p = policy(grouping=Grouping(group_window_seconds=60, group_threshold=3))
    events = [down(f"c{i:03d}", i * 0.1) for i in range(300)]
    events += [up(f"c{i:03d}", 600 + i * 0.1) for i in range(300)]
    alerts = run(p, events, 10_000)
    assert alerts[:3] == [("client.offline", 0.0, ["c000"]), ("client.offline", 0.1, ["c001"]),
                          ("client.offline", 0.2, ["c002"])]
    event, when, clients = alerts[3]
    assert (event, when, len(clients)) == ("clients.offline", 60.3, 297)
    assert clients == [f"c{i:03d}" for i in range(3, 300)]
    # The recoveries, ten minutes later: three, then one group.
    assert [a[0] for a in alerts[4:]] == ["client.online"] * 3 + ["clients.online"]
    assert len(alerts[7][2]) == 297 and len(alerts) == 8
    assert p.messages == 8 and p.raised == {"offline": 300, "online": 300}


def test_grouping_off_sends_one_alert_per_client() -> None:
    p = policy()
    events = [down(f"c{i}", 0) for i in range(10)]
    assert len(run(p, events, 100)) == 10


def test_a_group_of_mixed_kinds_flushes_one_alert_per_kind() -> None:
    p = policy(grouping=Grouping(group_window_seconds=30, group_threshold=1))
    events = [down("a", 0), down("b", 1), up("a", 2), down("c", 3)]
    alerts = run(p, events, 100)
    assert alerts == [("client.offline", 0.0, ["a"]), ("clients.offline", 31.0, ["b", "c"]),
                      ("client.online", 31.0, ["a"])]


# -- silences ----------------------------------------------------------------------------------


def silence(cid: str | None, start: float, end: float, tag: str | None = None,
            sid: str = "s1") -> Silence:
    match = Match(frozenset({cid} if cid else ()), frozenset({tag} if tag else ()))
    return Silence(sid, match, at(start), at(end), "maintenance", "tester", at(0))


def test_an_alert_due_in_a_silence_is_raised_when_it_ends_if_still_down() -> None:
    book = SilenceBook([silence("a", 100, 200), silence("b", 100, 200, sid="s2")])
    p = policy(alert_after_seconds=60, silences=book)
    # a: down at 50, due at 110 inside the silence: raised at its end, 200, still down.
    # b: down at 50, back at 150 inside the silence: nothing.
    events = [down("a", 50), down("b", 50), up("b", 150)]
    assert run(p, events, 1000) == [("client.offline", 200.0, ["a"])]
    assert p.silenced_until("a", (), at(199.999)) == at(200)
    assert p.silenced_until("a", (), at(200)) is None  # the end is not silenced


def test_silence_boundaries_start_inclusive_end_exclusive() -> None:
    book = SilenceBook([silence("a", 100, 200)])
    p = policy(silences=book)
    events = [down("a", 99.999), up("a", 99.9995), down("a", 100), up("a", 199.5),
              down("a", 200.5)]
    assert run(p, events, 1000) == [
        ("client.offline", 99.999, ["a"]), ("client.online", 99.9995, ["a"]),
        ("client.offline", 200.5, ["a"])]


def test_a_recovery_owed_from_before_a_silence_comes_at_its_end() -> None:
    book = SilenceBook()
    p = policy(silences=book)
    p.observe(down("a", 0))
    assert summary(p.tick(at(0))) == [("client.offline", 0.0, ["a"])]
    book.add(silence("a", 10, 100))
    p.observe(up("a", 50))
    assert p.tick(at(99.999)) == []
    assert summary(p.tick(at(100))) == [("client.online", 100.0, ["a"])]


def test_a_deleted_silence_releases_what_it_held_back() -> None:
    book = SilenceBook([silence(None, 0, 3600, tag="line-2")])
    p = policy(silences=book)
    p.observe(down("a", 10, tags=("line-2",)))
    assert p.tick(at(10)) == [] and p.next_tick() == at(3600)
    book.remove("s1")
    assert p.next_tick() == at(10)
    assert summary(p.tick(at(20))) == [("client.offline", 10.0, ["a"])]


def test_overlapping_silences_chain() -> None:
    book = SilenceBook([silence("a", 0, 100), silence("a", 90, 300, sid="s2")])
    assert book.silenced_until("a", (), at(50)) == at(300)
    assert book.silenced_until("b", (), at(50)) is None


def test_weekly_maintenance_window_in_a_named_time_zone_across_dst() -> None:
    # Sundays 02:30-04:30 Europe/Berlin. 2026-03-29 is the night clocks jump from 02:00 to
    # 03:00 (02:30 does not exist: zoneinfo takes it as 03:30 CEST = 01:30Z); on 2026-03-22
    # it is 01:30Z (CET); on 2026-04-05 00:30Z (CEST).
    w = MaintenanceWindow("backups", Match(tags=frozenset({"db"})), parse_weekdays(["sun"]),
                          parse_clock("02:30"), 7200, "Europe/Berlin")
    book = SilenceBook(windows=[w])
    for start in ("2026-03-22T01:30:00Z", "2026-04-05T00:30:00Z"):
        s = parse_iso(start)
        assert book.silenced_until("x", ["db"], s - 0.001) is None
        assert book.silenced_until("x", ["db"], s) == s + 7200
        assert book.silenced_until("x", ["web"], s) is None
        assert book.silenced_until("x", ["db"], s + 7200) is None
    assert w.next_start(parse_iso("2026-03-23T00:00:00Z")) == (
        parse_iso("2026-03-29T01:30:00Z"), parse_iso("2026-03-29T03:30:00Z"))
    p = policy(silences=book)
    down_at = parse_iso("2026-04-05T01:00:00Z") - T
    p.observe(down("db-1", down_at, tags=("db",)))
    assert p.tick(at(down_at)) == []
    assert p.next_tick() == parse_iso("2026-04-05T02:30:00Z")


# -- overrides ---------------------------------------------------------------------------------


def test_overrides_per_tag_and_per_client() -> None:
    overrides = Overrides(
        tags={"critical": PolicyOverride(alert_after_seconds=0, offline_level="urgent"),
              "lab": PolicyOverride(alert_after_seconds=3600)},
        clients={"robot-7": PolicyOverride(alert_after_seconds=30)})
    p = policy(alert_after_seconds=120, overrides=overrides)
    assert p.policy_for("x", ["critical", "lab"]).alert_after_seconds == 0  # first tag wins
    assert p.policy_for("x", ["lab", "critical"]).alert_after_seconds == 3600
    assert p.policy_for("robot-7", ["critical"]).alert_after_seconds == 30  # client wins
    assert p.policy_for("robot-7", ["critical"]).offline_level == "urgent"
    p.observe(down("crit", 0, tags=("critical",)))
    p.observe(down("plain", 0))
    alerts = p.tick(at(120))
    assert [(a.items[0].client_id, a.at - T, a.level) for a in alerts] == [
        ("crit", 0.0, "urgent"), ("plain", 120.0, "warning")]


def test_reconfigure_reschedules_pending_alerts() -> None:
    p = policy(alert_after_seconds=600)
    p.observe(down("a", 0))
    assert p.next_tick() == at(600)
    p.reconfigure(Policy(alert_after_seconds=60, flap_transitions=0), Overrides(), NO_GROUPING,
                  at(10))
    assert p.next_tick() == at(60)


def test_removed_clients_are_forgotten_and_restarts_keep_pending_alerts() -> None:
    p = policy(alert_after_seconds=60)
    p.observe(down("a", 0))
    p.observe(Event(CLIENT_REMOVED, "a", at(5), {"clientId": "a"}, "removed"))
    assert p.next_tick() is None
    q = policy(alert_after_seconds=60)
    q.load("b", {"clientId": "b"}, "offline", at(0), "timeout", at(30))  # due at 60
    q.load("c", {"clientId": "c"}, "offline", at(-1000), "timeout", at(30))  # alerted before
    assert q.pending("b") == {"offline": at(60)}
    q.observe(up("c", 40))
    assert summary(q.tick(at(60))) == [("client.online", 40.0, ["c"]),
                                       ("client.offline", 60.0, ["b"])]


# -- silence validation ------------------------------------------------------------------------


def fields_of(data: Any) -> dict[str, str]:
    with pytest.raises(ValidationFailed) as info:
        parse_silence(data, now=at(0), silence_id="x", principal="admin")
    return {d["field"]: d["message"] for d in info.value.details}


def test_bad_silences_name_the_field() -> None:
    ok = {"match": {"tags": ["line-2"]}, "endsAt": "2026-01-01T02:00:00Z", "comment": "swap"}
    s = parse_silence(ok, now=at(0), silence_id="x", principal="admin")
    assert (s.starts_at, s.ends_at, s.created_by) == (at(0), at(7200), "admin")
    assert "endsAt" in fields_of({**ok, "startsAt": "2026-01-01T03:00:00Z"})
    assert fields_of({**ok, "endsAt": "2025-12-31T23:00:00Z"})["endsAt"] == "must be in the future"
    assert "match.tags[0]" in fields_of({**ok, "match": {"tags": ["line-*"]}})
    assert "match.tags[0]" in fields_of({**ok, "match": {"tags": [""]}})
    assert "match.clientIds[0]" in fields_of({**ok, "match": {"clientIds": ["a b"]}})
    assert "match" in fields_of({**ok, "match": {}})
    assert "match.hosts" in fields_of({**ok, "match": {"hosts": ["a"], "tags": ["x"]}})
    assert "comment" in fields_of({**ok, "comment": "  "})
    assert "startsAt" in fields_of({**ok, "startsAt": "yesterday"})
    assert "endsAt" in fields_of({k: v for k, v in ok.items() if k != "endsAt"})
    assert "color" in fields_of({**ok, "color": "red"})


# -- the memory another node takes over (cluster mode) -------------------------------------------


def _script() -> list[tuple[str, Any]]:
    """Transitions and ticks covering every kind of memory: a delay, reminders, flapping, a
    silence that defers, a removal, and a group."""
    steps: list[tuple[str, Any]] = []
    steps += [("ev", down("slow", 0)), ("ev", down("rem", 1)), ("tick", 5)]
    for i in range(6):  # "flap" goes down and up quickly
        steps.append(("ev", (down if i % 2 == 0 else up)("flap", 10 + i)))
    steps += [("tick", 20), ("ev", down("quiet", 21)), ("tick", 40), ("ev", up("slow", 50)),
              ("tick", 65), ("ev", Event(CLIENT_REMOVED, "rem", at(70), {"clientId": "rem"})),
              ("tick", 80)]
    steps += [("ev", down(f"g{i}", 100 + i * 0.1)) for i in range(5)]
    steps += [("tick", 100.5), ("tick", 130), ("tick", 200), ("tick", 700), ("tick", 1400)]
    return steps


def _policy_for_memory() -> AlertPolicy:
    silences = SilenceBook()
    silences.add(Silence("s1", Match(frozenset({"quiet"}), frozenset()), at(0), at(60),
                         "maintenance", "tester", at(0)))
    p = AlertPolicy(Policy(alert_after_seconds=3, repeat_every_seconds=30, max_reminders=2,
                           flap_transitions=4, flap_window_seconds=60),
                    grouping=Grouping(group_window_seconds=10, group_threshold=3),
                    silences=silences)
    p.track_changes()
    return p


def _run(p: AlertPolicy, steps: list[tuple[str, Any]]) -> list[tuple[str, float, list[str]]]:
    out: list[Alert] = []
    for kind, arg in steps:
        if kind == "ev":
            p.observe(arg)
        else:
            out += p.tick(at(arg))
    return summary(out)


@pytest.mark.parametrize("cut", range(len(_script()) + 1))
def test_a_policy_restored_from_its_saved_memory_carries_on_exactly(cut: int) -> None:
    import json

    steps = _script()
    whole = _run(_policy_for_memory(), steps)
    assert whole  # the script raises alerts of every kind
    assert {k.rpartition(".")[2] for k, _, _ in whole} >= {"offline", "online", "reminder",
                                                            "flapping"}
    assert any(len(ids) > 1 for _, _, ids in whole)  # a group
    first = _policy_for_memory()
    before = _run(first, steps[:cut])
    # What the alerting node saved after each step: the changes, merged as Redis's hash has
    # them, through JSON.
    saved: dict[str, Any] = {}
    states, group = first.take_changes()
    for cid, state in states.items():
        if state is None:
            saved.pop(cid, None)
        else:
            saved[cid] = json.loads(json.dumps(state))
    second = _policy_for_memory()
    assert second.restore(saved, json.loads(json.dumps(group)) if group else None) == []
    assert before + _run(second, steps[cut:]) == whole
