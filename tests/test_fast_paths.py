"""The fast paths behave exactly like the plain ones.

Each optimisation that bench/ measured into rpad keeps the behaviour of the code it speeds up,
and these tests hold each one against its plain version on real data (the heartbeat's ASGI fast
path has its own matrix in test_fastpath.py):

- group commit: at most one commit per interval, counted from the start of the previous commit
  (a steady load commits every max(interval, commit time), a lone write after a quiet spell at
  once), on Trio's mock clock with exact times;
- the sweep: ``Registry.sweep`` reads an index of online clients by last heartbeat instead of
  every client; random histories (heartbeats, clean shutdowns, registrations with their own
  timeouts, removals, reloads of the default timeout, restarts, a wall clock stepped back) give
  the same events, in the same order, and the same state as ``Registry.sweep_all``;
- the hub's writers: everything queued goes out in one socket write, one frame per message
  (the bytes ``send_message`` would send one by one); and frame batching (opt-in at auth,
  ``?batch=1`` or ``"batch": true``): the real daemon and real WebSocket clients; a batching
  connection, its frames split on newlines, gets exactly the messages an unbatched one gets
  (one frame each), in the same order — live events of a burst, ``since`` replays, messages
  whose data holds newlines — in fewer frames;
- the heartbeat reader: ``parse_heartbeat`` reads a well-behaved agent's heartbeat without the
  validator's bookkeeping; on random bodies (good, odd and bad values, snake_case aliases,
  unknown keys) it gives exactly the validator's Heartbeat or the validator's errors;
- ``push.mode = "delta"``: on the fake clock, the real daemon and a real WebSocket client; the
  full list on subscribe, then the deltas applied to it give, after every tick, exactly the
  list ``GET /api/v1/clients`` (and the full mode) gives — through heartbeats, new clients,
  removals, a removed client coming back, and a new default timeout (a full list then);
  a tick with no change sends nothing.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rpad.backend.local.store import Store
from rpad.config import Config
from rpad.core.registry import Client, Event, RateLimited, Registry, UnknownClient
from rpad.core.validation import (
    METRIC_FIELDS,
    Heartbeat,
    Registration,
    ValidationFailed,
    parse_heartbeat,
    read_plain_heartbeat,
    validate_heartbeat,
)
from rpad.hub.wire import can_write_together

from .conftest import Running, fake_wall_clock
from .wsclient import StartDaemon, Ws, daemons, fake_time, ws_connect

__all__ = ["daemons"]  # the fixture

T0 = 1_767_225_600.0
REAL_GUARD_SECONDS = 10.0


def _client(cid: str) -> Client:
    return Client(client_id=cid, registered_at=T0, status="online", last_heartbeat_at=T0)


async def _open(path: Path, **kwargs: Any) -> Store:
    store = Store(path, **kwargs)
    await trio.to_thread.run_sync(store.open)
    return store


async def _durable_within_real_seconds(store: Store, seconds: float) -> None:
    """store.durable(), failing if it has not returned after ``seconds`` of real time (the mock
    clock does not move by itself, so a Trio timeout would never fire)."""

    async def guard() -> None:
        await trio.to_thread.run_sync(time.sleep, seconds, abandon_on_cancel=True)
        raise AssertionError(f"durable() did not return within {seconds} s of real time")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(guard)
        await store.durable()
        nursery.cancel_scope.cancel()


# -- group commit ------------------------------------------------------------------------------


async def test_a_write_after_a_quiet_spell_is_committed_at_once_then_one_per_interval(
        tmp_path: Path, mock_clock: trio.testing.MockClock, nursery: trio.Nursery) -> None:
    store = await _open(tmp_path / "rpad.db", commit_interval_ms=10)
    await nursery.start(store.run_committer)
    start = trio.current_time()

    store.put_client(_client("a"))
    await _durable_within_real_seconds(store, REAL_GUARD_SECONDS)
    assert trio.current_time() == start  # no interval waited
    assert store.commits == 1

    # The next write comes right after: it waits for the interval since the commit started.
    store.put_client(_client("b"))
    finished = trio.Event()

    async def wait_b() -> None:
        await store.durable()
        finished.set()

    nursery.start_soon(wait_b)
    await trio.testing.wait_all_tasks_blocked()
    assert not finished.is_set() and store.commits == 1
    mock_clock.jump(0.009)
    await trio.testing.wait_all_tasks_blocked()
    assert not finished.is_set() and store.commits == 1
    mock_clock.jump(0.0015)
    for _ in range(2000):  # virtual time stands still now: only the real commit is awaited
        if finished.is_set():
            break
        await trio.to_thread.run_sync(time.sleep, 0.005)
    assert finished.is_set() and store.commits == 2
    nursery.cancel_scope.cancel()
    store.close()


async def test_writes_staged_during_a_commit_wait_only_for_the_interval_since_its_start(
        tmp_path: Path, mock_clock: trio.testing.MockClock, nursery: trio.Nursery) -> None:
    store = await _open(tmp_path / "rpad.db", commit_interval_ms=10)
    gate = threading.Event()
    apply = store._apply

    def slow_apply(batch: Any) -> None:  # the real commit, held back to last 15 ms of Trio time
        gate.wait(REAL_GUARD_SECONDS)
        apply(batch)

    store._apply = slow_apply  # type: ignore[method-assign]
    await nursery.start(store.run_committer)
    start = trio.current_time()

    store.put_client(_client("a"))  # committed at once; the commit is now "running"
    await trio.testing.wait_all_tasks_blocked()
    store.put_client(_client("b"))  # staged while "a" is being committed
    mock_clock.jump(0.015)  # the commit of "a" took 15 ms
    gate.set()
    # "b" goes at once: the interval since the start of "a"'s commit (10 ms) has passed.
    await _durable_within_real_seconds(store, REAL_GUARD_SECONDS)
    assert trio.current_time() == start + 0.015
    assert store.commits == 2 and store.last_batch_size == 1
    nursery.cancel_scope.cancel()
    store.close()


# -- the sweep ---------------------------------------------------------------------------------


class PlainSweep(Registry):
    """The registry with the plain sweep: every client looked at, every time."""

    def sweep(self, now: float) -> list[Event]:
        return self.sweep_all(now)


def _registry(cls: type[Registry], default: float, grace_until: float = 0.0) -> Registry:
    return cls(default_timeout_seconds=default, min_interval_seconds=1.0, auto_register=True,
               grace_until=grace_until)


def _state(reg: Registry) -> Any:
    return ([(c.client_id, reg.view(c)) for c in reg], reg.online_count, reg.revision)


def _events(events: list[Event]) -> list[tuple[Any, ...]]:
    return [(e.type, e.client_id, e.at, e.data, e.reason) for e in events]


def _apply(reg: Registry, op: tuple[Any, ...]) -> Any:
    kind = op[0]
    try:
        if kind == "beat":
            return _events(reg.heartbeat(op[1], op[2]).events)
        if kind == "register":
            return _events(reg.register(op[1], op[2])[1])
        if kind == "remove":
            return _events(reg.remove(op[1], op[2]))
        if kind == "sweep":
            return _events(reg.sweep(op[1]))
        if kind == "default":
            reg.default_timeout_seconds = op[1]
            return None
    except (RateLimited, UnknownClient) as exc:
        return type(exc).__name__
    raise AssertionError(op)


@pytest.mark.parametrize("seed", range(60))
def test_the_indexed_sweep_gives_exactly_what_the_plain_sweep_gives(seed: int) -> None:
    rng = random.Random(seed)
    ids = [f"c{i}" for i in range(rng.choice([3, 12, 40]))]
    default = rng.choice([20.0, 60.0])
    fast, plain = _registry(Registry, default), _registry(PlainSweep, default)
    now = T0
    swept = 0
    for step in range(400):
        r = rng.random()
        if r < 0.05:
            now -= rng.uniform(0, 120)  # the wall clock stepped back
        else:
            now += rng.choice([0.0, 0.5, 1.0, 7.0, 19.99, 20.0, 25.0, 61.0])
        if r < 0.55:
            hb = Heartbeat(client_id=rng.choice(ids),
                           status=rng.choice(["online", "online", "busy", "offline"]),
                           interval_seconds=rng.choice([None, None, 5.0, 45.0]),
                           version=rng.choice([None, "1", "2"]))
            op: tuple[Any, ...] = ("beat", hb, now)
        elif r < 0.62:
            op = ("register", Registration(client_id=rng.choice(ids),
                                           heartbeat_timeout_seconds=rng.choice(
                                               [None, 10.0, 30.0, 300.0])), now)
        elif r < 0.66:
            op = ("remove", rng.choice(ids), now)
        elif r < 0.69:
            op = ("default", rng.choice([15.0, 20.0, 60.0, 90.0]))
        elif r < 0.71:  # a restart: both load copies of the same clients
            grace = now + rng.choice([0.0, 30.0])
            copies = [attrs.evolve(c) for c in fast]
            fast = _registry(Registry, fast.default_timeout_seconds, grace)
            plain = _registry(PlainSweep, plain.default_timeout_seconds, grace)
            fast.load(copies)
            plain.load([attrs.evolve(c) for c in copies])
            continue
        else:
            op = ("sweep", now)
        a, b = _apply(fast, op), _apply(plain, op)
        assert a == b, (seed, step, op)
        assert _state(fast) == _state(plain), (seed, step, op)
        if op[0] == "sweep" and a:
            swept += len(a)
    assert swept > 0 or len(ids) == 3  # the histories do time clients out


# -- frame batching ----------------------------------------------------------------------------

BURST = 40
NETWORK_TIMEOUT_SECONDS = 60


class Frames:
    """Reads a connection frame by frame; a frame is split on newlines into messages."""

    def __init__(self, ws: Ws) -> None:
        self.ws = ws
        self.frames = 0
        self.pending: list[dict[str, Any]] = []

    async def recv(self) -> dict[str, Any]:
        while not self.pending:
            raw = await self.ws.conn.get_message()
            assert isinstance(raw, str)
            self.frames += 1
            self.pending = [json.loads(line) for line in raw.split("\n")]
        return self.pending.pop(0)

    async def until(self, type_: str, **data: Any) -> list[dict[str, Any]]:
        """Every message up to and including the first of ``type_`` whose data has ``data``."""
        out = []
        while True:
            msg = await self.recv()
            out.append(msg)
            if msg["type"] == type_ and all(msg["data"].get(k) == v for k, v in data.items()):
                return out


async def test_a_batching_connection_gets_exactly_what_an_unbatched_one_gets(
        daemons: StartDaemon, make_config: Callable[..., Config]) -> None:
    with trio.fail_after(NETWORK_TIMEOUT_SECONDS):
        r = await daemons(make_config())
        assert r.ws_url is not None
        viewer = r.token("viewer", "watcher", topics=["app.*"])
        topics = ["client_status", "heartbeat", "app.news"]
        async with ws_connect(r.ws_url, token=viewer) as plain, \
                ws_connect(r.ws_url + "?batch=1", token=viewer) as by_query, \
                ws_connect(r.ws_url, established=False) as by_message:
            assert plain.established["batch"] is False
            assert by_query.established["batch"] is True
            # A batch flag that is not a boolean is refused like any bad auth field.
            await by_message.send(action="auth", token=viewer, batch="yes")
            err = await by_message.expect("ERROR")
            assert err["data"]["code"] == "invalid_field" and "batch" in err["data"]["message"]
            await by_message.send(action="auth", token=viewer, batch=True)
            assert (await by_message.expect("CONNECTION_ESTABLISHED"))["data"]["batch"] is True
            # The writers send what is queued in one socket write (one frame per message for
            # the plain connection): trio-websocket offers what that needs.
            assert r.daemon.hub is not None
            conns = list(r.daemon.hub.fanout.connections.values())
            assert len(conns) == 3 and all(can_write_together(c.ws) for c in conns)
            readers = {"plain": Frames(plain), "query": Frames(by_query),
                       "message": Frames(by_message)}
            for f in readers.values():
                for topic in topics:
                    await f.ws.send(action="subscribe", topic=topic)
                    assert (await f.until("SUBSCRIBED", topic=topic))[-1]["data"]["topic"] == topic

            # A burst: one gateway batch (all its events published together after one commit),
            # then app events whose data holds newlines and other characters JSON escapes.
            beats = [{"clientId": f"burst-{i}", "status": "busy", "version": "1.0"}
                     for i in range(BURST)]
            resp = await r.request("POST", "/api/v1/client/heartbeats", role="service",
                                   json={"heartbeats": beats})
            assert resp.status_code == 200 and resp.json()["accepted"] == BURST
            for text in ["line one\nline two", "tab\tquote\"back\\slash", "ü \u2028 \u0000"]:
                resp = await r.request("POST", "/api/v1/publish", role="admin", json={
                    "topic": "app.news", "type": "NEWS", "data": {"text": text}})
                assert resp.status_code == 200, resp.text
            resp = await r.request("POST", "/api/v1/publish", role="admin", json={
                "topic": "app.news", "type": "NEWS", "data": {"text": "end"}})
            got = {name: await f.until("NEWS", text="end") for name, f in readers.items()}

        assert len(got["plain"]) == 2 * BURST + 4  # connected + heartbeat each, 4 news
        assert got["query"] == got["plain"]
        assert got["message"] == got["plain"]
        assert readers["plain"].frames == len(topics) + len(got["plain"])
        for name in ("query", "message"):  # the burst went out several messages to a frame
            assert readers[name].frames < len(topics) + len(got["plain"]) / 2, name

        # A since replay: the missed events of a topic at once, batched the same way.
        async with ws_connect(r.ws_url, token=viewer) as plain, \
                ws_connect(r.ws_url + "?batch=true", token=viewer) as batched:
            replays = {}
            for name, ws in (("plain", plain), ("batched", batched)):
                f = Frames(ws)
                await ws.send(action="subscribe", topic="client_status", since=0)
                replays[name] = await f.until("CLIENT_CONNECTED", clientId=f"burst-{BURST - 1}")
                replays[name + " frames"] = f.frames
        # (SUBSCRIBED is each connection's own reply, stamped when it was made.)
        assert replays["batched"][0]["data"] == replays["plain"][0]["data"]
        assert replays["batched"][1:] == replays["plain"][1:]
        assert replays["plain"][0]["type"] == "SUBSCRIBED"
        assert len(replays["plain"]) == BURST + 1
        assert replays["batched frames"] < replays["plain frames"]


# -- push.mode = "delta" -----------------------------------------------------------------------


async def _collect_for(ws: Ws, seconds: float) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    with trio.move_on_after(seconds):
        while True:
            out.append(await ws.recv())
    return out


def _apply_push(servers: dict[str, dict[str, Any]], msg: dict[str, Any]) -> None:
    """What a dashboard does with the ``servers`` topic."""
    if msg["type"] == "SERVER_LIST":
        servers.clear()
        servers.update({v["clientId"]: v for v in msg["data"]["servers"]})
    elif msg["type"] == "SERVER_LIST_DELTA":
        for cid in msg["data"]["removed"]:
            servers.pop(cid, None)
        servers.update({v["clientId"]: v for v in msg["data"]["changed"]})
    else:
        raise AssertionError(msg)


async def _listed(r: Running) -> dict[str, dict[str, Any]]:
    resp = await r.request("GET", "/api/v1/clients", role="viewer")
    assert resp.status_code == 200
    return {v["clientId"]: v for v in resp.json()["clients"]}


async def test_delta_pushes_rebuild_exactly_the_full_list(
        autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, daemons: StartDaemon,
        make_config: Callable[..., Config]) -> None:
    fake_time(autojump_clock, nursery)
    rng = random.Random(7)
    with trio.fail_after(900):
        r = await daemons(make_config(push={"mode": "delta"},
                                      presence={"min_interval_seconds": 0.001}),
                          wall_clock=fake_wall_clock())
        for i in range(5):
            assert (await r.heartbeat(f"robot-{i}", version="1")).status_code == 200
        async with ws_connect(r.ws_url, token=r.token("viewer", "dash")) as ws:
            await ws.subscribe("servers")
            servers: dict[str, dict[str, Any]] = {}
            first = await ws.recv()
            assert first["type"] == "SERVER_LIST"
            _apply_push(servers, first)
            assert servers == await _listed(r)

            # Nothing changes: nothing is pushed.
            assert await _collect_for(ws, 6.5) == []

            # One client beats: the delta holds it alone.
            assert (await r.heartbeat("robot-3", version="2")).status_code == 200
            (delta,) = await _collect_for(ws, 2.5)
            assert delta["type"] == "SERVER_LIST_DELTA" and delta["topic"] == "servers"
            assert [v["clientId"] for v in delta["data"]["changed"]] == ["robot-3"]
            assert delta["data"]["removed"] == []
            _apply_push(servers, delta)
            assert servers == await _listed(r)

            ids = [f"robot-{i}" for i in range(12)]
            for step in range(12):
                for _ in range(rng.randint(0, 6)):
                    cid = rng.choice(ids)
                    op = rng.random()
                    if op < 0.55:
                        resp = await r.heartbeat(cid, version=rng.choice(["1", "2", "3"]),
                                                 status=rng.choice(["online", "busy"]),
                                                 metrics={"load1": rng.random()})
                    elif op < 0.7:
                        resp = await r.heartbeat(cid, status="offline")
                    elif op < 0.85:
                        resp = await r.request("DELETE", f"/api/v1/clients/{cid}")
                    else:
                        resp = await r.request("POST", "/api/v1/clients", json={
                            "clientId": cid, "tags": [f"t{step}"]})
                    assert resp.status_code in (200, 201, 404, 429), resp.text
                for msg in await _collect_for(ws, 2.5):
                    assert msg["type"] == "SERVER_LIST_DELTA", msg["type"]
                    _apply_push(servers, msg)
                assert servers == await _listed(r), step

            # A new default timeout changes every view: a full list, then deltas again.
            registry = r.daemon.presence.view  # type: ignore[union-attr]
            registry.default_timeout_seconds = 90.0  # what a reload applies
            msgs = await _collect_for(ws, 2.5)
            assert [m["type"] for m in msgs] == ["SERVER_LIST"]
            _apply_push(servers, msgs[0])
            assert servers == await _listed(r)
            assert all(v["heartbeatTimeoutSeconds"] >= 90.0 for v in servers.values())
            assert (await r.heartbeat("robot-0", version="9")).status_code == 200
            msgs = await _collect_for(ws, 2.5)
            assert [m["type"] for m in msgs] == ["SERVER_LIST_DELTA"]
            _apply_push(servers, msgs[0])
            assert servers == await _listed(r)


def test_delta_json_names_removals_once_and_refuses_what_it_no_longer_knows() -> None:
    from rpad.core import registry as registry_mod

    reg = _registry(Registry, 60.0)
    for i in range(3):
        reg.heartbeat(Heartbeat(client_id=f"c{i}"), T0)
    since = reg.revision
    reg.remove("c0", T0 + 1)
    reg.remove("c1", T0 + 1)
    reg.register(Registration(client_id="c1"), T0 + 2)  # back again
    delta = json.loads(reg.delta_json(since) or "null")
    assert [v["clientId"] for v in delta["changed"]] == ["c1"]
    assert delta["removed"] == ["c0"]
    since = reg.revision
    assert json.loads(reg.delta_json(since) or "null") == {"changed": [], "removed": []}
    # Past MAX_REMOVALS_KEPT removals, a delta from before them is refused (full list).
    for i in range(registry_mod.MAX_REMOVALS_KEPT + 1):
        reg.heartbeat(Heartbeat(client_id=f"x{i}"), T0 + 3)
        reg.remove(f"x{i}", T0 + 3)
    assert reg.delta_json(since) is None
    assert reg.delta_json(reg.revision) is not None


# -- serialization shortcuts -------------------------------------------------------------------


def test_envelope_is_what_json_dumps_makes_of_each_field() -> None:
    from rpad.core.jsonenc import envelope

    def plain(type_: str, topic: str | None, seq: int | None, ts: str | None, data: str) -> str:
        text = (f'{{"type":{json.dumps(type_)},"topic":{json.dumps(topic)},'
                f'"seq":{json.dumps(seq)},"ts":{json.dumps(ts)},"data":{data}}}')
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate goes out escaped (see envelope)
            text = json.dumps(json.loads(text), separators=(",", ":"), ensure_ascii=True)
        return text

    strings = ["A", "TASK_UPDATE", "ü\u2028\x00\"\\\n\t", "\ud800", "", "x" * 300, "日本"]
    for type_ in strings:
        for topic in [*strings, None]:
            for seq in (None, 0, 1, 2**70):
                for ts in (None, "2026-01-01T00:00:00.000Z", "\ud83d"):
                    for data in ("{}", '{"a":"\\u00fc","b":[1,2.5,null]}', '"ü"'):
                        assert envelope(type_, topic, seq, ts, data) == \
                            plain(type_, topic, seq, ts, data)



# -- the heartbeat reader ----------------------------------------------------------------------

_ODD_TEXT = st.sampled_from(["", "a\x00b", "\ud800", "ü", "x" * 65, "x" * 129, " ", "online",
                             "2025-07-23T12:00:00Z", "2025-07-23T12:00:00", "yesterday",
                             "busy", "BUSY_1", "10.0.0.1", "a b", "robot-7"])
_NUMBERS = st.one_of(st.integers(min_value=-10, max_value=10**20), st.sampled_from(
    [0.0, -0.0, 0.0005, 0.001, 86400, 86400.5, 1e18, 1e19, float("nan"), float("inf"), 2**64]),
    st.floats(allow_nan=True, allow_infinity=True))
_VALUES = st.one_of(st.none(), st.booleans(), _NUMBERS, _ODD_TEXT, st.text(max_size=8),
                    st.just([]), st.just({}), st.just({"a": 1}))
_METRIC_KEYS = st.sampled_from([*METRIC_FIELDS, "cpu_usage_percent", "memory_usage_bytes",
                                "load1", "gpu"])
_METRICS = st.one_of(_VALUES, st.dictionaries(_METRIC_KEYS, st.one_of(_NUMBERS, _VALUES),
                                             max_size=6))
_GOOD = st.fixed_dictionaries(
    {"clientId": st.sampled_from(["robot-1", "a", "x" * 128, "n.1:2_3-4"])},
    optional={"status": st.sampled_from(["online", "busy", "offline", "idle"]),
              "version": st.sampled_from(["1.0", "2.4.1-rc1", "ü"]),
              "ipAddress": st.sampled_from(["10.0.0.1", "::1"]),
              "osType": st.just("linux"), "name": st.just("Robot 7"),
              "timestamp": st.sampled_from(["2025-07-23T12:00:00Z", "2025-07-23T12:00:00+02:00"]),
              "intervalSeconds": st.sampled_from([1, 30, 0.5, 86400]),
              "metrics": st.dictionaries(st.sampled_from(list(METRIC_FIELDS)),
                                         st.one_of(st.integers(0, 10**12),
                                                   st.floats(0, 1e12)), max_size=11)})
_ANY = st.dictionaries(st.sampled_from([
    "clientId", "client_id", "timestamp", "status", "version", "ipAddress", "ip_address",
    "osType", "os_type", "name", "intervalSeconds", "interval_seconds", "metrics", "metadata",
    "other"]), _VALUES, max_size=8)


def _full(data: Any) -> Any:
    try:
        return validate_heartbeat(data)
    except ValidationFailed as exc:
        return ("errors", exc.details)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(_GOOD, _ANY, st.builds(lambda g, extra: {**g, **extra}, _GOOD, _ANY),
                 st.builds(lambda g, m: {**g, "metrics": m}, _GOOD, _METRICS)))
def test_the_fast_heartbeat_reader_agrees_with_the_validator(data: dict[str, Any]) -> None:
    full = _full(data)
    fast = read_plain_heartbeat(data)
    if fast is not None:
        assert fast == full
    try:
        assert parse_heartbeat(data) == full
    except ValidationFailed as exc:
        assert ("errors", exc.details) == full


_EDGES: list[Any] = [None, True, False, 0, -1, 0.0, -0.0, 0.0005, 0.001, 1, 30, 86400, 86400.5,
                     10**18, 10**18 + 1, 1e18, 1e19, 2**70, float("nan"), float("inf"),
                     float("-inf"), "1", "", "ü", "\ud800", "a\x00", [], {}, {"a": 1}]


def test_the_fast_heartbeat_reader_agrees_on_every_edge_value() -> None:
    keys = ["status", "version", "ipAddress", "osType", "name", "timestamp", "intervalSeconds",
            "metrics", "metadata", "clientId", "client_id", "ip_address"]
    cases: list[dict[str, Any]] = []
    for value in _EDGES:
        cases += [{"clientId": "r", key: value} for key in keys]
        cases += [{"clientId": "r", "metrics": {m: value}} for m in METRIC_FIELDS]
        cases.append({"clientId": "r",
                      "metrics": {"cpuUsagePercent": 1, "cpu_usage_percent": value}})
    for data in cases:
        fast = read_plain_heartbeat(data)
        full = _full(data)
        if fast is not None:
            assert fast == full, data


def test_a_typical_agent_heartbeat_takes_the_fast_reader() -> None:
    seed = {"clientId": "robot-7", "timestamp": "2025-07-23T12:00:00Z", "status": "online",
            "version": "1.0.0", "ipAddress": "192.168.1.100", "intervalSeconds": 30,
            "metrics": {"cpuUsagePercent": 12.5, "memoryUsageBytes": 2147483648, "load1": 0.4}}
    fast = read_plain_heartbeat(seed)
    assert fast is not None and fast == validate_heartbeat(seed)
