"""The console end to end: real ``rpad agent`` processes against the real daemon, a console on
the real hub. Disabled by default, the allowlist, streamed output intact or cut at the limit,
the time limit and cancel killing the whole process group, the agent killed mid-command, every
hijack attempt refused, the per-user cap, and the audit log of all of it."""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

import trio

from rpad.config import Config

from .conftest import Running
from .console_helpers import (
    RUN_AS,
    StartAgent,
    agents,
    alive,
    commands_on,
    open_session,
    refusal,
    run,
    text,
    wait_view,
)
from .wsclient import StartDaemon, daemons, ws_connect

__all__ = ["agents", "daemons"]  # fixtures

MIB = 1024 * 1024
TIMEOUT_SECONDS = 60


async def audit(rpad: Running, **query: str) -> list[dict[str, Any]]:
    r = await rpad.request("GET", "/api/v1/audit", params={"limit": "1000", **query})
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


async def test_disabled_by_default(daemons: StartDaemon, agents: StartAgent,
                                   make_config: Callable[..., Config]) -> None:
    with trio.fail_after(TIMEOUT_SECONDS):
        rpad = await daemons(make_config())
        await agents(rpad, "plain", interval=1)
        await agents(rpad, "refuses", "--control-channel", interval=1)
        view = await wait_view(rpad, "refuses", lambda v: v["capabilities"] is not None)
        assert view["capabilities"]["commands"] is False
        plain = await wait_view(rpad, "plain", lambda v: v["status"] == "online")
        assert plain["capabilities"] is None  # no channel at all
        async with ws_connect(rpad.ws_url, token=rpad.token("admin", "alice")) as ws:
            err = await refusal(ws, action="terminal.open", clientId="plain", ref="a")
            assert (err["code"], err["ref"]) == ("agent_not_connected", "a")
            err = await refusal(ws, action="terminal.open", clientId="refuses", ref="b")
            assert err["code"] == "commands_disabled"
            assert "--allow-commands" in err["message"]


async def test_streamed_output_is_complete_in_order_or_cut_at_the_limit(
        daemons: StartDaemon, agents: StartAgent, make_config: Callable[..., Config]) -> None:
    with trio.fail_after(TIMEOUT_SECONDS):
        rpad = await daemons(make_config())
        await agents(rpad, "h1", "--allow-commands", *RUN_AS, interval=1)
        await wait_view(rpad, "h1", commands_on)
        async with ws_connect(rpad.ws_url, token=rpad.token("admin", "alice")) as ws:
            s = await open_session(ws, "h1")
            assert s["capabilities"]["commands"] is True and s["capabilities"]["shell"] is True
            sid = s["sessionId"]
            start, chunks, done = await run(ws, sid, "yes 0123456789abcde | head -c 1048576")
            assert start["command"] == "yes 0123456789abcde | head -c 1048576"
            assert text(chunks) == "0123456789abcde\n" * (MIB // 16)
            assert done["status"] == "success" and done["exitCode"] == 0
            assert done["truncated"] is False and done["outputBytes"] == MIB
            assert max(c["bytes"] for c in chunks) <= 8192
            # Cut at the limit asked for (the server's and the agent's apply too).
            _, chunks, done = await run(ws, sid, "yes 0123456789abcde | head -c 1048576",
                                        maxOutputBytes=100_000)
            assert done["truncated"] is True and done["outputBytes"] == 100_000
            assert text(chunks) == ("0123456789abcde\n" * 6250)[:100_000]
            # stderr is its own stream; the exit status comes through.
            _, chunks, done = await run(ws, sid, "echo out; echo err >&2; exit 7")
            assert (text(chunks), text(chunks, "stderr")) == ("out\n", "err\n")
            assert (done["status"], done["exitCode"]) == ("error", 7)
        rows = await audit(rpad, clientId="h1", kind="command")
        assert [r["exitCode"] for r in rows] == [7, 141, 0]  # newest first; 141: SIGPIPE
        assert rows[2]["outputBytes"] == MIB and rows[1]["truncated"] is True
        assert all(r["userId"] == "alice" and r["address"] == "127.0.0.1" for r in rows)
        assert all(r["startedAt"] and r["endedAt"] and r["sessionId"] == sid for r in rows)


async def test_allowlist_refusal(daemons: StartDaemon, agents: StartAgent,
                                 make_config: Callable[..., Config]) -> None:
    with trio.fail_after(TIMEOUT_SECONDS):
        rpad = await daemons(make_config())
        await agents(rpad, "h1", "--allow-commands", "--allow-command", "echo **",
                     "--allow-command", "uptime", *RUN_AS, interval=1)
        view = await wait_view(rpad, "h1", commands_on)
        assert view["capabilities"]["allowlist"] == ["echo **", "uptime"]
        assert view["capabilities"]["shell"] is False
        async with ws_connect(rpad.ws_url, token=rpad.token("admin", "alice")) as ws:
            sid = (await open_session(ws, "h1"))["sessionId"]
            err = await refusal(ws, action="terminal.command", sessionId=sid, command="id")
            assert err["code"] == "not_allowed" and err["sessionId"] == sid
            # No shell: the ; is part of echo's argument.
            _, chunks, done = await run(ws, sid, "echo a; id")
            assert text(chunks) == "a; id\n" and done["status"] == "success"
        rows = await audit(rpad, clientId="h1", kind="command")
        assert [(r["command"], r["status"], r["detail"]) for r in rows] == [
            ("echo a; id", "success", None), ("id", "refused", "not_allowed")]


async def test_timeout_kills_the_whole_process_group(
        daemons: StartDaemon, agents: StartAgent, make_config: Callable[..., Config]) -> None:
    with trio.fail_after(TIMEOUT_SECONDS):
        rpad = await daemons(make_config())
        await agents(rpad, "h1", "--allow-commands", *RUN_AS, interval=1)
        await wait_view(rpad, "h1", commands_on)
        async with ws_connect(rpad.ws_url, token=rpad.token("admin", "alice")) as ws:
            sid = (await open_session(ws, "h1"))["sessionId"]
            _, chunks, done = await run(
                ws, sid, "sleep 300 & echo $!; sh -c 'sleep 301 & echo $!; sleep 302'",
                timeoutSeconds=1)
            pids = [int(p) for p in text(chunks).split()]
            assert len(pids) == 2
            assert done["status"] == "timeout" and done["signal"] == signal.SIGKILL
            assert 1000 <= done["durationMs"] < 15_000
            assert not any(alive(p) for p in pids)


async def test_cancel(daemons: StartDaemon, agents: StartAgent,
                      make_config: Callable[..., Config]) -> None:
    with trio.fail_after(TIMEOUT_SECONDS):
        rpad = await daemons(make_config())
        await agents(rpad, "h1", "--allow-commands", *RUN_AS, interval=1)
        await wait_view(rpad, "h1", commands_on)
        async with ws_connect(rpad.ws_url, token=rpad.token("admin", "alice")) as ws:
            sid = (await open_session(ws, "h1"))["sessionId"]
            await ws.send(action="terminal.command", sessionId=sid,
                          command="sleep 300 & echo $!; wait")
            await ws.expect("COMMAND_START")
            out = await ws.expect("COMMAND_OUTPUT")
            child = int(out["data"]["chunk"])
            await ws.send(action="terminal.ack", sessionId=sid,
                          commandId=out["data"]["commandId"], shownBytes=out["data"]["bytes"])
            await ws.send(action="terminal.cancel", sessionId=sid)
            done = (await ws.expect("COMMAND_DONE"))["data"]
            assert done["status"] == "cancelled"
            assert not alive(child)
            # Nothing to cancel any more.
            err = await refusal(ws, action="terminal.cancel", sessionId=sid)
            assert err["code"] == "not_running"


async def test_every_hijack_attempt_is_refused_and_audited(
        daemons: StartDaemon, agents: StartAgent, make_config: Callable[..., Config]) -> None:
    """Nezha's GHSA-q6xx-5vr8-p898, and its relatives: a session id is not a capability."""
    with trio.fail_after(TIMEOUT_SECONDS):
        rpad = await daemons(make_config())
        await agents(rpad, "h1", "--allow-commands", *RUN_AS, interval=1)
        await agents(rpad, "h2", "--allow-commands", *RUN_AS, interval=1)
        await wait_view(rpad, "h1", commands_on)
        await wait_view(rpad, "h2", commands_on)
        alice_token = rpad.token("operator", "alice", exec_=["h*"])
        async with ws_connect(rpad.ws_url, token=alice_token) as alice:
            sid = (await open_session(alice, "h1"))["sessionId"]
            await alice.send(action="terminal.command", sessionId=sid,
                             command="echo started; sleep 300")
            start = (await alice.expect("COMMAND_START"))["data"]
            await alice.expect("COMMAND_OUTPUT")

            # Another user, even one allowed to run commands on h1, cannot use the session.
            mallory_token = rpad.token("operator", "mallory", exec_=["*"])
            async with ws_connect(rpad.ws_url, token=mallory_token) as mallory:
                for action in ("terminal.command", "terminal.attach", "terminal.cancel",
                               "terminal.history", "terminal.close", "terminal.ack"):
                    err = await refusal(mallory, action=action, sessionId=sid, command="id",
                                        shownBytes=1000)
                    assert err["code"] == "session_not_found", (action, err)
                # A forged session id is refused the same way (ids cannot be probed).
                err = await refusal(mallory, action="terminal.command", sessionId="forged-id",
                                    command="id")
                assert err["code"] == "session_not_found"
                err = await refusal(mallory, action="terminal.command",
                                    sessionId={"$ne": None}, command="id")
                assert err["code"] == "session_not_found"
            # A viewer, and a service, cannot whatever they send.
            for role in ("viewer", "service"):
                token = rpad.token(role, "alice")
                async with ws_connect(rpad.ws_url, token=token) as other:
                    err = await refusal(other, action="terminal.open", clientId="h1")
                    assert err["code"] == "forbidden"
                    err = await refusal(other, action="terminal.command", sessionId=sid,
                                        command="id")
                    assert err["code"] == "forbidden"
            # An operator whose exec globs do not cover the client: not even with the same
            # user id (its own narrower token).
            async with ws_connect(rpad.ws_url,
                                  token=rpad.token("operator", "alice", exec_=["h2"])) as narrow:
                err = await refusal(narrow, action="terminal.open", clientId="h1")
                assert err["code"] == "forbidden"
                err = await refusal(narrow, action="terminal.cancel", sessionId=sid)
                assert err["code"] == "forbidden"
                await open_session(narrow, "h2")  # what it covers works
            # Agent tokens: refused on the dashboards' path, and on the agents' path an agent
            # (h2's token) cannot speak for a command it was not given.
            async with ws_connect(rpad.ws_url, token=rpad.token("agent", "h1"),
                                  established=False) as agent_ws:
                assert await agent_ws.close_code() == 4003
            async with ws_connect(rpad.ws_url, path="/api/v1/agent/ws",
                                  header_token=rpad.token("agent", "h2", ttl=None)) as fake:
                await fake.send(action="agent.hello", protocol=1,
                                capabilities={"commands": True})
                await fake.expect("AGENT_REGISTERED")
                await fake.send(action="command.output", commandId=start["commandId"],
                                stream="stdout", chunk="you have been hacked\n", bytes=21)
                await fake.send(action="command.done", commandId=start["commandId"],
                                status="success", exitCode=0)
                assert await fake.close_code() == 4002  # protocol violation
            # A dashboard token cannot open an agent's channel either.
            async with ws_connect(rpad.ws_url, path="/api/v1/agent/ws",
                                  header_token=rpad.token("admin", "root"),
                                  established=False) as not_agent:
                assert await not_agent.close_code() == 4003
            # Alice's command ran on untouched: no forged output reached her.
            await alice.send(action="terminal.cancel", sessionId=sid)
            while True:
                msg = await alice.recv()
                assert "hacked" not in str(msg)
                if msg["type"] == "COMMAND_DONE":
                    assert msg["data"]["status"] == "cancelled"
                    break
            # An admin may attach to someone's session, and then sees its messages.
            async with ws_connect(rpad.ws_url, token=rpad.token("admin", "root")) as admin:
                await admin.send(action="terminal.attach", sessionId=sid)
                attached = (await admin.expect("TERMINAL_CONNECTED"))["data"]
                assert attached["sessionId"] == sid and attached["attached"] is True
                await alice.send(action="terminal.command", sessionId=sid, command="echo hi")
                assert (await admin.expect("COMMAND_START"))["data"]["command"] == "echo hi"
        denied = await audit(rpad, kind="denied")
        by_user = sorted((r["userId"], r["status"]) for r in denied)
        assert by_user.count(("mallory", "session_not_found")) == 8
        assert ("alice", "forbidden") in by_user  # the viewer, service and narrow tokens
        assert sum(1 for r in denied if r["userId"] == "alice") == 6
        assert all(r["address"] == "127.0.0.1" for r in denied)


async def test_the_per_user_session_cap(daemons: StartDaemon, agents: StartAgent,
                                        make_config: Callable[..., Config]) -> None:
    with trio.fail_after(TIMEOUT_SECONDS):
        rpad = await daemons(make_config(console={"max_sessions_per_user": 2}))
        await agents(rpad, "h1", "--allow-commands", *RUN_AS, interval=1)
        await wait_view(rpad, "h1", commands_on)
        async with ws_connect(rpad.ws_url, token=rpad.token("admin", "alice")) as a1, \
                ws_connect(rpad.ws_url, token=rpad.token("admin", "alice")) as a2, \
                ws_connect(rpad.ws_url, token=rpad.token("admin", "bob")) as b:
            first = (await open_session(a1, "h1"))["sessionId"]
            await open_session(a2, "h1")  # the cap counts the user's sessions, on any tab
            err = await refusal(a1, action="terminal.open", clientId="h1")
            assert err["code"] == "too_many_sessions"
            await open_session(b, "h1")  # another user has a cap of their own
            await a1.send(action="terminal.close", sessionId=first)
            closed = await a1.expect("TERMINAL_CLOSED", skip=("TERMINAL_CONNECTED",))
            assert closed["data"] == {"sessionId": first, "reason": "closed"}
            await open_session(a1, "h1")
            await a2.send(action="terminal.list")
            listed = await a2.expect("TERMINAL_SESSIONS", skip=("TERMINAL_CLOSED",))
            assert len(listed["data"]["sessions"]) == 2
        sessions = await audit(rpad, kind="session")
        assert len(sessions) == 4
        assert [r["status"] for r in sessions if r["sessionId"] == first] == ["closed"]
        assert [r["status"] for r in await audit(rpad, kind="denied")] == ["too_many_sessions"]


async def test_the_agent_killed_mid_command(daemons: StartDaemon, agents: StartAgent,
                                            make_config: Callable[..., Config]) -> None:
    with trio.fail_after(TIMEOUT_SECONDS):
        rpad = await daemons(make_config())
        proc = await agents(rpad, "h1", "--allow-commands", *RUN_AS, interval=1)
        await wait_view(rpad, "h1", commands_on)
        async with ws_connect(rpad.ws_url, token=rpad.token("admin", "alice")) as ws:
            sid = (await open_session(ws, "h1"))["sessionId"]
            await ws.send(action="terminal.command", sessionId=sid,
                          command="sleep 300 & echo $!; wait")
            await ws.expect("COMMAND_START")
            child = int((await ws.expect("COMMAND_OUTPUT"))["data"]["chunk"])
            proc.kill()  # SIGKILL: the agent cannot clean up
            err = (await ws.expect("TERMINAL_ERROR"))["data"]
            assert (err["sessionId"], err["code"]) == (sid, "agent_disconnected")
            view = await wait_view(rpad, "h1", lambda v: v["capabilities"] is None)
            assert view["capabilities"] is None
            err = await refusal(ws, action="terminal.command", sessionId=sid, command="true")
            assert err["code"] == "agent_not_connected"
            # Its next run kills what the killed one left behind, before taking commands.
            assert alive(child)
            await agents(rpad, "h1", "--allow-commands", *RUN_AS, interval=1)
            await wait_view(rpad, "h1", commands_on)
            assert not alive(child)
            _, chunks, done = await run(ws, sid, "echo back")
            assert text(chunks) == "back\n"
        rows = await audit(rpad, kind="command")
        assert [(r["command"], r["status"], r["detail"]) for r in rows] == [
            ("echo back", "success", None), ("true", "not_run", "agent_not_connected"),
            ("sleep 300 & echo $!; wait", "lost", "agent_disconnected")]
