"""Console sessions over time, on Trio's fake clock against the real daemon and the agent's real
control channel (in-process): a session whose user went away is closed after the grace, an idle
one after the idle timeout, exactly; revoking the agent's tokens closes its channel; an agent
that sends output beyond its credit is cut off."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing

from rpad.client import policy as policy_mod
from rpad.client.backoff import Backoff
from rpad.client.control import ControlChannel
from rpad.client.runner import Runner
from rpad.config import Config
from rpad.service.console import SWEEP_INTERVAL_SECONDS

from .conftest import Running, fake_wall_clock
from .console_helpers import open_session
from .wsclient import StartDaemon, daemons, fake_time, ws_connect

__all__ = ["daemons"]


async def channel_for(nursery: trio.Nursery, rpad: Running, client_id: str) -> ControlChannel:
    """The agent's control channel of ``client_id``, in this process, once rpad has it."""
    assert (await rpad.heartbeat(client_id)).status_code == 200
    pol = policy_mod.build(allow_flag=True, allow_root_flag=os.geteuid() == 0)
    assert rpad.ws_url is not None
    channel = ControlChannel(Runner(pol), token=rpad.token("agent", client_id, ttl=None),
                             agent_version="test", http_url=rpad.http_url,
                             backoff=Backoff(jitter=0.0))
    nursery.start_soon(channel.run)
    await channel.registered.wait()
    return channel


async def audit_of(rpad: Running, session_id: str) -> dict[str, Any]:
    r = await rpad.request("GET", "/api/v1/audit", params={"sessionId": session_id,
                                                           "kind": "session"})
    row: dict[str, Any] = r.json()["items"][0]
    return row


@pytest.mark.parametrize("grace", [30.0, 90.0])
async def test_a_session_whose_user_went_away_closes_after_the_grace(
        grace: float, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery,
        daemons: StartDaemon, make_config: Callable[..., Config]) -> None:
    fake_time(autojump_clock, nursery)
    with trio.fail_after(600):
        rpad = await daemons(make_config(console={"detach_grace_seconds": grace}),
                             wall_clock=fake_wall_clock())
        await channel_for(nursery, rpad, "h1")
        async with ws_connect(rpad.ws_url, token=rpad.token("admin", "alice")) as ws:
            sid = (await open_session(ws, "h1"))["sessionId"]
        left = trio.current_time()
        # Open until the grace has passed, closed by a sweep soon after (sweeps run every
        # SWEEP_INTERVAL_SECONDS; the fake clock may jump past a deadline while a request
        # is in a worker thread, never before it).
        await trio.sleep_until(left + grace - 1)
        assert (await audit_of(rpad, sid))["status"] == "open"
        await trio.sleep_until(left + grace + 3 * SWEEP_INTERVAL_SECONDS)
        row = await audit_of(rpad, sid)
        assert (row["status"], row["detail"]) == ("closed", "detached")


async def test_an_idle_session_closes_after_the_idle_timeout(
        autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, daemons: StartDaemon,
        make_config: Callable[..., Config]) -> None:
    fake_time(autojump_clock, nursery)
    with trio.fail_after(3600):
        rpad = await daemons(make_config(console={"idle_timeout_seconds": 300}),
                             wall_clock=fake_wall_clock())
        await channel_for(nursery, rpad, "h1")
        async with ws_connect(rpad.ws_url, token=rpad.token("admin", "alice")) as ws:
            sid = (await open_session(ws, "h1"))["sessionId"]
            opened = trio.current_time()
            closed = await ws.expect("TERMINAL_CLOSED")
            assert closed["data"] == {"sessionId": sid, "reason": "idle"}
            assert 300 <= trio.current_time() - opened <= 300 + 3 * SWEEP_INTERVAL_SECONDS
            await ws.send(action="terminal.command", sessionId=sid, command="true")
            assert (await ws.expect("TERMINAL_ERROR"))["data"]["code"] == "session_not_found"


async def test_revoking_the_agents_tokens_closes_its_channel(
        nursery: trio.Nursery, daemons: StartDaemon,
        make_config: Callable[..., Config]) -> None:
    with trio.fail_after(60):
        rpad = await daemons(make_config())
        channel = await channel_for(nursery, rpad, "h1")
        async with ws_connect(rpad.ws_url, token=rpad.token("admin", "alice")) as ws:
            sid = (await open_session(ws, "h1"))["sessionId"]
            r = await rpad.request("DELETE", "/api/v1/clients/h1/tokens")
            assert r.status_code == 200, r.text
            await ws.send(action="terminal.command", sessionId=sid, command="true")
            err = (await ws.expect("TERMINAL_ERROR"))["data"]
            assert err["code"] == "agent_not_connected"
        while channel.refusals == 0:  # closed with 4001, then refused at the handshake
            await trio.sleep(0.01)
        r = await rpad.request("GET", "/api/v1/clients/h1")
        assert r.json()["capabilities"] is None


async def test_output_beyond_the_credit_cuts_the_agent_off(
        daemons: StartDaemon, make_config: Callable[..., Config]) -> None:
    """A compromised host cannot flood rpad or the browser: rpad counts what it granted."""
    with trio.fail_after(60):
        rpad = await daemons(make_config(console={"window_bytes": 4096}))  # the smallest
        assert (await rpad.heartbeat("evil")).status_code == 200
        async with ws_connect(rpad.ws_url, path="/api/v1/agent/ws",
                              header_token=rpad.token("agent", "evil", ttl=None)) as agent, \
                ws_connect(rpad.ws_url, token=rpad.token("admin", "alice")) as ws:
            await agent.send(action="agent.hello", protocol=1, capabilities={"commands": True})
            await agent.expect("AGENT_REGISTERED")
            sid = (await open_session(ws, "evil"))["sessionId"]
            await ws.send(action="terminal.command", sessionId=sid, command="cat big")
            run = (await agent.expect("COMMAND_RUN"))["data"]
            assert run["creditBytes"] == 4096
            await agent.send(action="command.started", commandId=run["commandId"])
            await agent.send(action="command.output", commandId=run["commandId"],
                             stream="stdout", chunk="x" * 4096, bytes=4096)
            await agent.send(action="command.output", commandId=run["commandId"],
                             stream="stdout", chunk="y", bytes=1)
            assert await agent.close_code() == 4002
            got = []
            while True:
                msg = await ws.recv()
                if msg["type"] == "COMMAND_OUTPUT":
                    got.append(msg["data"]["chunk"])
                elif msg["type"] == "TERMINAL_ERROR":
                    assert msg["data"]["code"] == "agent_disconnected"
                    break
            assert got == ["x" * 4096]  # what was within its credit, not one byte more
