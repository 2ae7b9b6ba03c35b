"""Fuzzed WebSocket frames and actions (Hypothesis) against a running ``rpad serve``.

Each example opens a real WebSocket connection to the hub and sends a random sequence of
frames: action objects with random fields (``auth``, ``subscribe``, ``unsubscribe``, ``ping``,
``refresh``, ``publish`` and unknown ones; topics, ``since``, tokens, types and data of every
shape), JSON that is not an object, text that is not JSON, binary frames; before and after
authentication. Then it pings. Every example must end with the ``PONG``, on a connection that
is still open, having received only known message types, every refusal an ``ERROR`` with a
documented code and a message (SPEC §5: "``ERROR {code, message}`` answers a bad action without
closing the connection"). At the end the daemon is up, the hub counts no internal error and
the log holds no traceback.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import trio
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from trio_websocket import ConnectionClosed

from .test_fuzz_http import Served, assert_clean_log, json_values, mostly, serve
from .wsclient import Ws, ws_connect

pytestmark = pytest.mark.slow

WS_FUZZ_SETTINGS = settings(max_examples=100, derandomize=True, deadline=None,
                            suppress_health_check=[HealthCheck.too_slow,
                                                   HealthCheck.function_scoped_fixture])
EXAMPLE_TIMEOUT_SECONDS = 10

KNOWN_TYPES = {"CONNECTION_ESTABLISHED", "SUBSCRIBED", "UNSUBSCRIBED", "PONG", "ERROR",
               "TOKEN_REFRESHED", "PUBLISHED", "SERVER_LIST", "STATS_UPDATE", "NOTIFICATION",
               "SYSTEM_MESSAGE", "CLIENT_CONNECTED", "CLIENT_DISCONNECTED",
               "CLIENT_STATUS_UPDATE", "CLIENT_REMOVED", "HEARTBEAT_RECEIVED", "TASK_UPDATE",
               "FUZZ", "TERMINAL_CONNECTED", "TERMINAL_ERROR", "TERMINAL_SESSIONS",
               "TERMINAL_CLOSED", "COMMAND_HISTORY", "COMMAND_START", "COMMAND_OUTPUT",
               "COMMAND_DONE"}
# TERMINAL_ERROR's codes (docs/PROTOCOL.md §7).
CONSOLE_CODES = {"forbidden", "session_not_found", "unknown_client", "too_many_sessions",
                 "agent_not_connected", "commands_disabled", "not_allowed", "invalid_command",
                 "busy", "not_running", "agent_disconnected", "storage_unavailable",
                 "console_disabled", "invalid_field"}
ERROR_CODES = {"invalid_json", "invalid_message", "unknown_action", "invalid_topic",
               "invalid_field", "forbidden", "too_many_subscriptions", "already_authenticated",
               "invalid_token", "unauthorized", "not_allowed", "rate_limited"}

_subs = itertools.count()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from serve(tmp_path_factory.mktemp("fuzz-ws"))


topics = mostly(st.sampled_from(["client_status", "heartbeat", "servers", "notifications",
                                 "system", "stats", "task.1", "task.77", "other.topic"]),
                st.text(max_size=150) | json_values)
actions = mostly(st.sampled_from(["subscribe", "unsubscribe", "ping", "refresh", "publish", "auth",
                                  "terminal.open", "terminal.command", "terminal.ack",
                                  "terminal.cancel", "terminal.history", "terminal.attach",
                                  "terminal.list", "terminal.close"]),
                 st.text(max_size=20) | json_values)


def action_objects(tokens: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({"action": actions, "topic": topics}, optional={
        "since": mostly(st.integers(min_value=0, max_value=50), json_values),
        "token": mostly(st.sampled_from(tokens), st.text(max_size=50) | json_values),
        "type": mostly(st.sampled_from(["FUZZ", "TASK_UPDATE"]), st.text(max_size=80) | json_values),
        "data": json_values,
        "clientId": mostly(st.sampled_from(["c1", "nobody"]), json_values),
        "sessionId": mostly(st.sampled_from(["forged", ""]), json_values),
        "command": mostly(st.just("true"), json_values),
        "commandId": json_values,
        "shownBytes": json_values,
        "ref": json_values,
    })


def good_actions(tokens: list[str]) -> st.SearchStrategy[str]:
    """Well-formed actions, so the fuzz also runs through subscriptions, replays, publications
    (with any data) and refreshes."""
    ok_topics = st.sampled_from(["client_status", "heartbeat", "servers", "notifications",
                                 "system", "task.1"])
    return st.one_of(
        st.builds(lambda t, n: {"action": "subscribe", "topic": t, "since": n}, ok_topics,
                  st.none() | st.integers(0, 20)),
        st.builds(lambda t: {"action": "unsubscribe", "topic": t}, ok_topics),
        st.builds(lambda d: {"action": "publish", "topic": "task.1", "type": "FUZZ", "data": d},
                  json_values),
        st.builds(lambda t: {"action": "refresh", "token": t}, st.sampled_from(tokens)),
    ).map(lambda o: json.dumps({k: v for k, v in o.items() if v is not None}))


def frames(tokens: list[str]) -> st.SearchStrategy[str | bytes]:
    return st.one_of(
        good_actions(tokens),
        good_actions(tokens),
        action_objects(tokens).map(lambda o: json.dumps(o)),
        action_objects(tokens).map(lambda o: json.dumps(o)),
        action_objects(tokens).map(lambda o: json.dumps(o, ensure_ascii=False)),
        json_values.map(json.dumps),  # JSON, often not an object
        st.text(max_size=200),  # mostly not JSON
        st.binary(max_size=200),
        st.just('{"action": "publish", "topic": "task.1", "type": "FUZZ", "data": "\\ud800"}'),
        st.just('{"action": "subscribe", "topic": "task.1", "since": 1e400}'),
        st.just('{"action": NaN}'),
        st.just("[" * 5000 + "]" * 5000),
    )


async def _read_until_pong(ws: Ws) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    while True:
        msg = await ws.recv()
        got.append(msg)
        if msg["type"] == "PONG":
            return got


def _check_messages(got: list[dict[str, Any]]) -> None:
    for msg in got:
        assert set(msg) == {"type", "topic", "seq", "ts", "data"}, msg
        assert msg["type"] in KNOWN_TYPES, msg
        event(f"got {msg['type']}")
        if msg["type"] == "TERMINAL_ERROR":
            assert msg["data"]["code"] in CONSOLE_CODES, msg
            assert isinstance(msg["data"]["message"], str) and msg["data"]["message"]
        if msg["type"] == "ERROR":
            assert msg["data"]["code"] in ERROR_CODES, msg
            assert isinstance(msg["data"]["message"], str) and msg["data"]["message"]
            event(f"error {msg['data']['code']}")


def _tokens(served: Served, sub: str) -> dict[str, str]:
    auth = served.auth
    return {
        "viewer": auth.mint(role="viewer", sub=sub, ttl_seconds=600, topics=["task.*"]),
        "service": auth.mint(role="service", sub=sub, ttl_seconds=600, topics=["task.*"],
                             publish=["task.*"]),
        "admin": auth.mint(role="admin", sub=sub, ttl_seconds=600),
        "other-user": auth.mint(role="viewer", sub=sub + "-other", ttl_seconds=600),
        "expired": served.tokens["expired"],
        "alg-none": served.tokens["alg-none"],
    }


@WS_FUZZ_SETTINGS
@given(data=st.data(), role=st.sampled_from(["viewer", "service", "admin"]))
def test_actions_after_auth(served: Served, data: st.DataObject, role: str) -> None:
    sub = f"ws-fuzz-{next(_subs)}"
    tokens = _tokens(served, sub)
    sent = data.draw(st.lists(frames(list(tokens.values())), min_size=1, max_size=6))

    async def run() -> list[dict[str, Any]]:
        with trio.fail_after(EXAMPLE_TIMEOUT_SECONDS):
            async with ws_connect(served.ws_url, token=tokens[role]) as ws:
                for frame in sent:
                    await ws.send_raw(frame)
                await ws.send(action="ping")
                try:
                    return await _read_until_pong(ws)
                except ConnectionClosed as exc:
                    raise AssertionError(f"the hub closed the connection: {exc.reason}") from None

    _check_messages(trio.run(run))


@WS_FUZZ_SETTINGS
@given(data=st.data())
def test_frames_before_auth_then_auth(served: Served, data: st.DataObject) -> None:
    sub = f"ws-fuzz-pre-{next(_subs)}"
    tokens = _tokens(served, sub)
    # Anything but an auth action with a string token (that one would be tried, and closes
    # with 4001 if bad).
    sent = data.draw(st.lists(frames(list(tokens.values())).filter(
        lambda f: not (isinstance(f, str) and '"auth"' in f and '"token"' in f)), max_size=5))

    async def run() -> list[dict[str, Any]]:
        with trio.fail_after(EXAMPLE_TIMEOUT_SECONDS):
            async with ws_connect(served.ws_url, established=False) as ws:
                got: list[dict[str, Any]] = []
                for frame in sent:
                    await ws.send_raw(frame)
                    reply = await ws.recv()
                    assert reply["type"] == "ERROR", reply
                    got.append(reply)
                await ws.send(action="auth", token=tokens["viewer"])
                established = await ws.recv()
                assert established["type"] == "CONNECTION_ESTABLISHED", established
                await ws.send(action="ping")
                got.extend(await _read_until_pong(ws))
                return got

    _check_messages(trio.run(run))


@WS_FUZZ_SETTINGS
@given(token=st.one_of(st.sampled_from(["expired", "alg-none", "garbage", "agent"]),
                       st.text(min_size=1, max_size=100)),
       how=st.sampled_from(["query", "message"]))
def test_bad_tokens_close_4001_or_4003(served: Served, token: str, how: str) -> None:
    if token in ("expired", "alg-none"):
        token = served.tokens[token]
    elif token == "agent":
        token = served.tokens["agent"]

    async def run() -> int:
        with trio.fail_after(EXAMPLE_TIMEOUT_SECONDS):
            if how == "query":
                async with ws_connect(served.ws_url + "?token=" + quote(token, safe=""),
                                      established=False) as ws:
                    return await ws.close_code()
            async with ws_connect(served.ws_url, established=False) as ws:
                await ws.send(action="auth", token=token)
                return await ws.close_code()

    code = trio.run(run)
    event(f"closed {code}")
    assert code in (4001, 4003), code


def test_the_daemon_survived_it_all(served: Served) -> None:
    assert served.process.poll() is None, "rpad died"
    with httpx.Client(base_url=served.http_url, timeout=10) as http:
        assert http.get("/api/v1/websocket/health").json()["status"] == "ok"
        stats = http.get("/api/v1/websocket/stats",
                         headers={"Authorization": f"Bearer {served.tokens['admin']}"}).json()
        assert stats["internalErrors"] == 0, stats
    assert_clean_log(served)
