"""The agent's control channel against a WebSocket server on loopback that speaks rpad's side of
the protocol: the hello and its capabilities, a command's output under credit, refusals, cancel,
and the channel's loss killing the running command before the agent reconnects.

(The same channel against the real daemon is in tests/test_console_e2e.py.)"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, serve_websocket

from rpad.client import policy as policy_mod
from rpad.client.control import (
    ControlChannel,
    chunk_bytes_for,
    control_url_from,
)
from rpad.client.runner import Runner
from rpad.client.backoff import Backoff

TOKEN = "agent-token-for-tests"


class FakeRpad:
    """rpad's side of one control channel at a time; the test reads and sends frames."""

    def __init__(self, *, refuse: bool = False, max_message_bytes: int = 65536) -> None:
        self.refuse = refuse
        self.max_message_bytes = max_message_bytes
        self.ws: WebSocketConnection | None = None
        self.hello: dict[str, Any] | None = None
        self.connected = trio.Event()
        self.handshakes = 0
        self.inbox_send, self.inbox = trio.open_memory_channel[dict[str, Any]](1000)

    async def handler(self, request: WebSocketRequest) -> None:
        self.handshakes += 1
        auth = dict(request.headers).get(b"authorization", b"").decode()
        self.user_agent = dict(request.headers).get(b"user-agent", b"").decode()
        if self.refuse or auth != f"Bearer {TOKEN}":
            await request.reject(401, body=b'{"error":"unauthorized"}')
            return
        ws = await request.accept()
        await ws.send_message(json.dumps({"type": "CONNECTION_ESTABLISHED", "data": {}}))
        hello = json.loads(await ws.get_message())
        assert hello["action"] == "agent.hello"
        self.hello = hello
        await ws.send_message(json.dumps({"type": "AGENT_REGISTERED", "data": {
            "clientId": "h1", "protocol": 1, "maxMessageBytes": self.max_message_bytes}}))
        self.ws = ws
        self.connected.set()
        with contextlib.suppress(ConnectionClosed):
            while True:
                await self.inbox_send.send(json.loads(await ws.get_message()))

    async def send(self, type_: str, **data: Any) -> None:
        assert self.ws is not None
        await self.ws.send_message(json.dumps({"type": type_, "topic": None, "seq": None,
                                               "data": data}))

    async def next(self, action: str | None = None) -> dict[str, Any]:
        while True:
            msg = await self.inbox.receive()
            if action is None or msg["action"] == action:
                return msg

    async def collect(self, command_id: str, *, grant: bool = True) -> tuple[str, dict[str, Any]]:
        """Output until done, granting credit back as it arrives (like a console that keeps
        up)."""
        out = []
        while True:
            msg = await self.next()
            assert msg["commandId"] == command_id
            if msg["action"] == "command.output":
                out.append(msg["chunk"])
                if grant:
                    await self.send("COMMAND_CREDIT", commandId=command_id, bytes=msg["bytes"])
            elif msg["action"] == "command.done":
                return "".join(out), msg


async def start(nursery: trio.Nursery, fake: FakeRpad, **policy: Any) -> ControlChannel:
    server = await nursery.start(serve_websocket, fake.handler, "127.0.0.1", 0, None)
    url = f"ws://127.0.0.1:{server.port}/api/v1/agent/ws"
    pol = policy_mod.build(allow_root_flag=True, **policy)
    channel = ControlChannel(Runner(pol), token=TOKEN, agent_version="test 1",
                             control_url=url,
                             backoff=Backoff(initial=0.05, maximum=0.2, jitter=0.0))
    nursery.start_soon(channel.run)
    return channel


@pytest.fixture
async def fake() -> AsyncIterator[FakeRpad]:
    yield FakeRpad()


async def test_hello_advertises_capabilities(nursery: trio.Nursery, fake: FakeRpad) -> None:
    with trio.fail_after(20):
        await start(nursery, fake, allow_flag=True, patterns=["uptime", "df -h"])
        await fake.connected.wait()
    assert fake.hello is not None
    assert fake.hello["protocol"] == 1 and fake.hello["agentVersion"] == "test 1"
    # How the channel identifies itself to proxies and limits (besides its path and token).
    assert fake.user_agent.startswith("rpad-agent/") and "control channel" in fake.user_agent
    caps = fake.hello["capabilities"]
    assert caps["commands"] is True and caps["allowlist"] == ["uptime", "df -h"]
    assert caps["shell"] is False and caps["pty"] is False


async def test_a_command_streams_under_credit(nursery: trio.Nursery, fake: FakeRpad) -> None:
    with trio.fail_after(30):
        await start(nursery, fake, allow_flag=True)
        await fake.connected.wait()
        await fake.send("COMMAND_RUN", commandId="c1", command="seq 1 20000",
                        timeoutSeconds=20, creditBytes=4096)
        assert (await fake.next())["action"] == "command.started"
        out, done = await fake.collect("c1")
    assert out == "".join(f"{i}\n" for i in range(1, 20001))
    assert done["status"] == "success" and done["exitCode"] == 0
    assert done["outputBytes"] == len(out) and done["truncated"] is False


async def test_output_never_exceeds_the_credit(nursery: trio.Nursery, fake: FakeRpad) -> None:
    with trio.fail_after(30):
        await start(nursery, fake, allow_flag=True)
        await fake.connected.wait()
        await fake.send("COMMAND_RUN", commandId="c1", command="yes | head -c 500000",
                        creditBytes=3000)
        assert (await fake.next())["action"] == "command.started"
        got = 0
        with trio.move_on_after(0.5):
            while True:
                got += (await fake.next("command.output"))["bytes"]
        assert got == 3000
        await fake.send("COMMAND_CREDIT", commandId="c1", bytes=10_000_000)
        out, done = await fake.collect("c1")
    assert got + len(out) == 500_000 and done["status"] == "success"


async def test_chunks_fit_the_hubs_frame_limit(nursery: trio.Nursery) -> None:
    fake = FakeRpad(max_message_bytes=4096)
    with trio.fail_after(30):
        await start(nursery, fake, allow_flag=True)
        await fake.connected.wait()
        # Control characters are escaped as \u0001 by JSON: six bytes for one.
        await fake.send("COMMAND_RUN", commandId="c1", command="head -c 20000 /dev/zero",
                        creditBytes=65536)
        await fake.next("command.started")
        sizes = []
        while True:
            assert fake.ws is not None
            msg = await fake.next()
            if msg["action"] == "command.done":
                break
            sizes.append(len(json.dumps(msg, separators=(",", ":"))))
            await fake.send("COMMAND_CREDIT", commandId="c1", bytes=msg["bytes"])
    assert max(sizes) <= 4096 and chunk_bytes_for(4096) == 597


async def test_refusals(nursery: trio.Nursery, fake: FakeRpad) -> None:
    with trio.fail_after(30):
        await start(nursery, fake, patterns=["uptime"])  # commands not allowed
        await fake.connected.wait()
        assert fake.hello is not None and fake.hello["capabilities"]["commands"] is False
        await fake.send("COMMAND_RUN", commandId="c1", command="uptime", creditBytes=100)
        refused = await fake.next()
    assert refused == {"action": "command.refused", "commandId": "c1",
                       "code": "commands_disabled", "message": refused["message"]}
    assert "--allow-commands" in refused["message"]


async def test_allowlist_and_duplicate_refusals(nursery: trio.Nursery, fake: FakeRpad) -> None:
    with trio.fail_after(30):
        await start(nursery, fake, allow_flag=True, patterns=["sleep *"])
        await fake.connected.wait()
        await fake.send("COMMAND_RUN", commandId="c1", command="id", creditBytes=100)
        assert (await fake.next())["code"] == "not_allowed"
        await fake.send("COMMAND_RUN", commandId="c2", command="sleep 5", creditBytes=100)
        assert (await fake.next())["action"] == "command.started"
        await fake.send("COMMAND_RUN", commandId="c2", command="sleep 5", creditBytes=100)
        assert (await fake.next())["code"] == "duplicate"
        # Malformed messages are dropped, and the channel stays up.
        await fake.send("COMMAND_RUN", commandId="../x", command="sleep 1")
        await fake.send("COMMAND_CANCEL", commandId="c2", reason="cancel")
        done = await fake.next("command.done")
    assert done["commandId"] == "c2" and done["status"] == "cancelled"


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


async def test_losing_the_channel_kills_the_command_and_reconnects(
        nursery: trio.Nursery, fake: FakeRpad) -> None:
    with trio.fail_after(30):
        channel = await start(nursery, fake, allow_flag=True)
        await fake.connected.wait()
        await fake.send("COMMAND_RUN", commandId="c1", command="sleep 300 & echo $!; wait",
                        creditBytes=1000)
        await fake.next("command.started")
        pid = int((await fake.next("command.output"))["chunk"])
        assert _alive(pid)
        fake.connected = trio.Event()
        assert fake.ws is not None
        await fake.ws.aclose()
        await fake.connected.wait()  # it came back
        assert not _alive(pid)  # killed before it reconnected
        assert not channel.runner.running
        while channel.connections < 2:
            await trio.sleep(0.01)


async def test_refused_token_is_not_hammered(nursery: trio.Nursery) -> None:
    fake = FakeRpad(refuse=True)
    with trio.fail_after(20):
        channel = await start(nursery, fake, allow_flag=True)
        while channel.refusals == 0:
            await trio.sleep(0.01)
        await trio.sleep(0.5)
    assert fake.handshakes == 1  # the next try is REFUSED_RETRY_SECONDS away


def test_control_url_from_the_dashboards_hub_url() -> None:
    assert control_url_from("ws://127.0.0.1:8001/ws") == "ws://127.0.0.1:8001/api/v1/agent/ws"
    assert control_url_from("wss://presence.example.org/ws?x=1") == \
        "wss://presence.example.org/api/v1/agent/ws"
    with pytest.raises(ValueError):
        control_url_from("http://example.org/ws")
