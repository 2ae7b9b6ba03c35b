"""Helpers for the console's end-to-end tests: real ``rpad agent`` processes and a console
client on the real hub."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from rpad.client.runner import ENV_OWNER, sweep_marked

from .conftest import Running
from .wsclient import Ws

# Commands never run as root in these tests: as root, the agents run them as nobody.
RUN_AS = ["--run-as", "nobody"] if os.geteuid() == 0 else []
AGENT_TIMEOUT_SECONDS = 30
ACK_EVERY_BYTES = 64 * 1024

StartAgent = Callable[..., Awaitable[trio.Process]]


def alive(pid: int) -> bool:
    """A live process (a zombie is dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


async def wait_view(rpad: Running, client_id: str,
                    ok: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The client's view once ``ok`` holds (polled)."""
    with trio.fail_after(AGENT_TIMEOUT_SECONDS):
        while True:
            r = await rpad.request("GET", f"/api/v1/clients/{client_id}")
            if r.status_code == 200 and ok(r.json()):
                view: dict[str, Any] = r.json()
                return view
            await trio.sleep(0.05)


def commands_on(view: dict[str, Any]) -> bool:
    return bool(view.get("status") == "online" and view.get("capabilities")
                and view["capabilities"].get("commands"))


@pytest.fixture
async def agents(tmp_path: Path) -> AsyncIterator[StartAgent]:
    """``await agents(rpad, "h1", "--allow-commands", ...)``: a real agent process (stopped
    with SIGTERM after the test, SIGKILL if it lingers). Its stderr goes to a file in tmp_path."""
    procs: list[trio.Process] = []
    logs: list[Any] = []
    started: list[str] = []

    async def start(rpad: Running, client_id: str, *args: str, interval: float = 5.0,
                    token: str | None = None) -> trio.Process:
        token_file = tmp_path / f"{client_id}.token"
        token_file.write_text((token or rpad.token("agent", client_id, ttl=None)) + "\n")
        token_file.chmod(0o600)
        log = (tmp_path / f"{client_id}.log").open("ab")
        logs.append(log)
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "rpad.client", "agent", "--url", rpad.http_url, "--client-id",
             client_id, "--token-file", str(token_file), "--interval", str(interval), *args],
            stdout=subprocess.DEVNULL, stderr=log)
        procs.append(proc)
        started.append(client_id)
        return proc

    yield start
    # The daemon is gone by now (the test's nursery is cancelled first), so the agents' last
    # heartbeat would be retried for a while: SIGKILL after a moment.
    for proc in procs:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
    with trio.move_on_after(0.5):
        for proc in procs:
            await proc.wait()
    for proc in procs:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    for log in logs:
        log.close()
    # Shown with a failure: what each agent said.
    for client_id in dict.fromkeys(started):
        said = (tmp_path / f"{client_id}.log").read_text(errors="replace").splitlines()
        print(f"--- agent {client_id} (last lines) ---", *said[-15:], sep="\n")
    # Whatever a test left running on its agents goes too.
    for client_id in started:
        sweep_marked(client_id, ENV_OWNER)


async def open_session(ws: Ws, client_id: str) -> dict[str, Any]:
    """TERMINAL_CONNECTED's data (fails on TERMINAL_ERROR)."""
    await ws.send(action="terminal.open", clientId=client_id, ref="t1")
    msg = await ws.recv()
    assert msg["type"] == "TERMINAL_CONNECTED", msg
    assert msg["data"]["ref"] == "t1"
    data: dict[str, Any] = msg["data"]
    return data


async def refusal(ws: Ws, **action: Any) -> dict[str, Any]:
    """Send an action that must be refused; TERMINAL_ERROR's data."""
    await ws.send(**action)
    msg = await ws.recv()
    assert msg["type"] == "TERMINAL_ERROR", msg
    data: dict[str, Any] = msg["data"]
    return data


async def run(ws: Ws, session_id: str, command: str, *, ack: bool = True,
              started: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
              **fields: Any) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """Run a command in a session and read it to the end, acknowledging the output like the
    dashboard does: (COMMAND_START, COMMAND_OUTPUTs, COMMAND_DONE) data."""
    await ws.send(action="terminal.command", sessionId=session_id, command=command, **fields)
    start: dict[str, Any] = {}
    chunks: list[dict[str, Any]] = []
    shown = acked = 0
    while True:
        msg = await ws.recv()
        d = msg["data"]
        if msg["type"] == "COMMAND_START":
            start = d
            if started is not None:
                await started(d)
        elif msg["type"] == "COMMAND_OUTPUT":
            assert d["sessionId"] == session_id and d["commandId"] == start["commandId"]
            chunks.append(d)
            shown += d["bytes"]
            # Like the dashboard: the total shown, now and then (not once per chunk).
            if ack and shown - acked >= ACK_EVERY_BYTES:
                await ws.send(action="terminal.ack", sessionId=session_id,
                              commandId=d["commandId"], shownBytes=shown)
                acked = shown
        elif msg["type"] == "COMMAND_DONE":
            assert d["commandId"] == start["commandId"]
            return start, chunks, d
        else:
            raise AssertionError(f"unexpected {msg}")


def text(chunks: list[dict[str, Any]], stream: str = "stdout") -> str:
    return "".join(c["chunk"] for c in chunks if c["stream"] == stream)
