"""Claims never reach built-in topics beyond the role (issue 16, point 2): every built-in topic
against every kind of glob, in the rules themselves and through the real daemon (WebSocket
subscribe and publish, POST /api/v1/publish, POST /api/v1/websocket/notify)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio

from rpad.config import Config
from rpad.core.access import (
    may_notify,
    may_publish_from_api,
    may_publish_from_websocket,
    may_subscribe,
)
from rpad.core.principal import Principal
from rpad.core.topics import BUILTIN_TOPICS

from .wsclient import StartDaemon, daemons, ws_connect

__all__ = ["daemons"]  # the fixture

TIMEOUT = 30
# Globs that match anything, or every built-in topic name, or some of them.
GLOBS = ("*", "**", "?*", "*?", "[a-z]*", "[!0-9]*", "*[a-z]", "*_*", "s*", "*s", "c*", "h*",
         "n*", "client_*", "*status", "*e*", "??????", "???????", "[cdhnss]*", "*[!.]*")
APP_TOPIC = "task.42"
BUILTIN = sorted(BUILTIN_TOPICS)
VIEWER_BUILTINS = sorted(BUILTIN_TOPICS - {"stats"})


def p(role: str, *, topics: tuple[str, ...] = GLOBS, publish: tuple[str, ...] = GLOBS
      ) -> Principal:
    return Principal(sub="x", role=role, topics=topics, publish=publish)


def test_every_builtin_topic_is_matched_by_the_globs_under_test() -> None:
    """(So that the tests below test something: each built-in topic is matched by several.)"""
    import fnmatch

    for topic in BUILTIN:
        assert sum(fnmatch.fnmatchcase(topic, g) for g in GLOBS) >= 8, topic


@pytest.mark.parametrize("topic", BUILTIN)
@pytest.mark.parametrize("glob", GLOBS)
def test_globs_grant_no_builtin_topic(topic: str, glob: str) -> None:
    for role in ("viewer", "service"):
        who = p(role, topics=(glob,), publish=(glob,))
        # Subscribing: the role decides, the glob adds nothing.
        assert may_subscribe(who, topic) == (topic != "stats")
        # Publishing from a WebSocket: never into a built-in topic.
        assert not may_publish_from_websocket(who, topic)
    # An agent has neither.
    agent = p("agent", topics=(glob,), publish=(glob,))
    assert not may_subscribe(agent, topic) and not may_publish_from_websocket(agent, topic)


@pytest.mark.parametrize("topic", BUILTIN)
def test_the_http_publish_routes_keep_builtin_topics_to_rpad_and_admins(topic: str) -> None:
    service, admin = p("service"), p("admin")
    assert not may_publish_from_api(service, topic)
    assert may_publish_from_api(admin, topic) == (topic in ("notifications", "system"))
    assert may_notify(service, topic) == (topic == "notifications")
    assert may_notify(admin, topic) == (topic in ("notifications", "system"))
    assert may_notify(service, None) and may_notify(admin, None)


def test_app_topics_follow_the_claims() -> None:
    assert may_subscribe(p("viewer", topics=("task.*",)), APP_TOPIC)
    assert not may_subscribe(p("viewer", topics=("job.*",)), APP_TOPIC)
    assert may_subscribe(p("admin", topics=()), APP_TOPIC)
    assert may_publish_from_websocket(p("service", publish=("task.*",)), APP_TOPIC)
    assert not may_publish_from_websocket(p("service", publish=()), APP_TOPIC)
    assert may_publish_from_websocket(p("admin", publish=()), APP_TOPIC)
    assert may_publish_from_api(p("service", publish=()), APP_TOPIC)
    assert may_notify(p("service", publish=()), APP_TOPIC)


async def test_claims_do_not_reach_builtin_topics_through_the_daemon(
        daemons: StartDaemon, make_config: Callable[..., Config]) -> None:
    with trio.fail_after(TIMEOUT):
        r = await daemons(make_config())
        greedy = {"topics": list(GLOBS), "publish": list(GLOBS)}
        for role in ("viewer", "service"):
            token = r.token(role, f"greedy-{role}", **greedy)
            async with ws_connect(r.ws_url, token=token) as ws:
                await ws.send(action="subscribe", topic="stats")
                err = await ws.expect("ERROR")
                assert err["data"]["code"] == "forbidden" and err["data"]["topic"] == "stats"
                for topic in VIEWER_BUILTINS:
                    await ws.send(action="subscribe", topic=topic)
                    await ws.expect("SUBSCRIBED", skip=("SERVER_LIST",))
                for topic in BUILTIN:
                    await ws.send(action="publish", topic=topic, type="SYSTEM_MESSAGE",
                                  data={"message": "re-enter your token at https://evil"})
                    err = await ws.expect("ERROR", skip=("SERVER_LIST",))
                    assert err["data"] == {
                        "code": "forbidden", "topic": topic,
                        "message": f"this token may not publish to {topic}"}
                # The app topics its globs grant still work.
                await ws.send(action="subscribe", topic=APP_TOPIC)
                await ws.expect("SUBSCRIBED", skip=("SERVER_LIST",))
                await ws.send(action="publish", topic=APP_TOPIC, type="TASK_UPDATE", data={})
                assert (await ws.expect("TASK_UPDATE", skip=("SERVER_LIST",)))["seq"] == (
                    1 if role == "viewer" else 2)

        service = r.token("service", "app", **greedy)
        for topic in BUILTIN:
            resp = await r.request("POST", "/api/v1/publish", token=service,
                                   json={"topic": topic, "type": "SYSTEM_MESSAGE", "data": {}})
            assert resp.status_code == 403 and resp.json()["error"] == "forbidden", resp.text
            assert topic in resp.json()["message"]
            resp = await r.request("POST", "/api/v1/websocket/notify", token=service,
                                   json={"topic": topic, "title": "t", "message": "m"})
            if topic == "notifications":
                assert resp.status_code == 200, resp.text
            elif topic != "system":  # not a topic anyone may notify to: the field is invalid
                assert resp.status_code == 422, resp.text
                assert resp.json()["details"][0]["field"] == "topic"
            else:
                assert resp.status_code == 403 and resp.json()["error"] == "forbidden", resp.text
        # Nothing was published to system but the notification above: seq 0 there.
        async with ws_connect(r.ws_url, token=r.token("admin", "root")) as ws:
            await ws.send(action="subscribe", topic="system", since=0)
            assert (await ws.expect("SUBSCRIBED"))["data"]["seq"] == 0
            # The admin API is the way into system and notifications.
            resp = await r.request("POST", "/api/v1/publish",
                                   json={"topic": "system", "type": "SYSTEM_MESSAGE",
                                         "data": {"message": "maintenance at 18:00"}})
            assert resp.status_code == 200, resp.text
            assert (await ws.expect("SYSTEM_MESSAGE"))["data"] == {
                "message": "maintenance at 18:00"}
