"""``rpad serve`` as a real process: graceful stop on SIGTERM/SIGINT (stop accepting, finish
in-flight requests, final commit, exit 0), refusals at start that name the problem, an
unexpected exception that takes the whole daemon down, and durability across ``kill -9``."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from rpad import config as config_mod
from rpad.auth import Authenticator, load_keys
from rpad.core.times import iso, parse_iso

from .conftest import read_serve_banner

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT_SECONDS = 30
SECRET = "process-test-secret-" + "x" * 32


def environ() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM",
                        "STATE_DIRECTORY", "CREDENTIALS_DIRECTORY")}
    env["PYTHONPATH"] = str(REPO)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def write_config(tmp_path: Path, presence: str = "", extra: str = "") -> Path:
    secret = tmp_path / "jwt.secret"
    if not secret.exists():
        secret.write_text(SECRET + "\n")
        secret.chmod(0o600)
    cfg = tmp_path / "rpad.toml"
    cfg.write_text(f"""
state_dir = "{tmp_path / 'state'}"
[http]
listen = "127.0.0.1:0"
graceful_timeout_seconds = 10.0
# These tests load rpad from one address with more new connections at once than the
# per-address cap on unauthenticated connections allows (tests/test_listeners.py tests it).
max_connections_per_address = 1000
[websocket]
listen = "127.0.0.1:0"
[presence]
min_interval_seconds = 0
{presence}
[auth]
secret_file = "{secret}"
max_failures_per_minute = 100000
[logging]
level = "info"
{extra}
""")
    return cfg


def token_for(cfg: Path, role: str = "service", sub: str = "gateway") -> str:
    keys = load_keys(config_mod.load(cfg))
    return Authenticator(keys).mint(role=role, sub=sub, ttl_seconds=3600)


class Serve:
    """``python -m rpad serve`` (or another command line) as a child process."""

    def __init__(self, tmp_path: Path, args: list[str], name: str = "rpad") -> None:
        self.args = args
        self.stderr_path = tmp_path / f"{name}.stderr"
        self.proc: trio.Process | None = None
        self.http_url = ""
        self.ws_url: str | None = None

    async def start(self, wait_listening: bool = True) -> None:
        err = await trio.to_thread.run_sync(open, self.stderr_path, "wb")
        try:
            self.proc = await trio.lowlevel.open_process(
                self.args, stdout=subprocess.PIPE, stderr=err, env=environ())
        finally:
            err.close()
        if not wait_listening:
            return
        assert self.proc.stdout is not None
        with trio.fail_after(START_TIMEOUT_SECONDS):
            self.http_url, self.ws_url, _ = await read_serve_banner(self.proc.stdout,
                                                                    self.stderr)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    async def wait(self, timeout: float = 30) -> int:
        assert self.proc is not None
        with trio.fail_after(timeout):
            return await self.proc.wait()

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()


@pytest.fixture
async def procs() -> AsyncIterator[list[Serve]]:
    started: list[Serve] = []
    yield started
    for p in started:
        p.kill()
        if p.proc is not None:
            with trio.move_on_after(10):
                await p.proc.wait()
            if p.proc.stdout is not None:
                await p.proc.stdout.aclose()


async def serve(procs: list[Serve], tmp_path: Path, cfg: Path, name: str = "rpad") -> Serve:
    p = Serve(tmp_path, [sys.executable, "-m", "rpad", "serve", "--config", str(cfg)], name)
    procs.append(p)
    await p.start()
    return p


def rows(db_path: Path, query: str) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return db.execute(query).fetchall()
    finally:
        db.close()


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].rstrip("/"))


async def accepts(port: int) -> bool:
    try:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
    except OSError:
        return False
    await stream.aclose()
    return True


# -- graceful stop -----------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_signal_stops_gracefully_finishing_in_flight_requests(
        procs: list[Serve], tmp_path: Path, signum: int) -> None:
    cfg = write_config(tmp_path)
    token = token_for(cfg)
    with trio.fail_after(60):
        rpad = await serve(procs, tmp_path, cfg)
        acked: dict[str, str] = {}
        async with httpx.AsyncClient(base_url=rpad.http_url,
                                     headers={"Authorization": f"Bearer {token}"}) as client:
            for i in range(20):
                r = await client.post("/api/v1/client/heartbeat", json={"clientId": f"c{i}"})
                assert r.status_code == 200
                acked[f"c{i}"] = r.json()["serverTime"]

        # A request in flight: headers and half of the body sent...
        port = port_of(rpad.http_url)
        body = json.dumps({"clientId": "in-flight", "status": "busy"}).encode()
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(
            b"POST /api/v1/client/heartbeat HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Authorization: Bearer " + token.encode() + b"\r\n"
            b"Content-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body[:10])
        await trio.sleep(0.2)  # (real time for the request to reach the app; not asserted)
        assert rpad.proc is not None
        rpad.proc.send_signal(signum)
        # ...rpad stops accepting new connections at once...
        while await accepts(port):
            await trio.sleep(0.05)
        # ...but the request in flight is finished and answered.
        await stream.send_all(body[10:])
        response = b""
        while b"\r\n\r\n" not in response or not response.rstrip().endswith(b"}"):
            chunk = await stream.receive_some()
            if not chunk:
                break
            response += chunk
        await stream.aclose()
        head, _, payload = response.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), response
        in_flight = json.loads(payload)
        assert in_flight["clientId"] == "in-flight"
        acked["in-flight"] = in_flight["serverTime"]

        assert await rpad.wait() == 0
    stderr = rpad.stderr()
    assert "Traceback" not in stderr
    assert f"received {signal.Signals(signum).name}" in stderr
    assert "rpad stopped" in stderr
    # Everything acknowledged is in the database, as acknowledged.
    stored = rows(tmp_path / "state" / "rpad.db",
                  "SELECT client_id, last_heartbeat_at, reported_status FROM clients")
    assert {cid: iso(at) for cid, at, _ in stored} == acked
    assert {cid: status for cid, _, status in stored}["in-flight"] == "busy"


# -- refusals at start -------------------------------------------------------------------------


async def test_a_config_error_exits_non_zero_naming_the_key(procs: list[Serve],
                                                            tmp_path: Path) -> None:
    cfg = write_config(tmp_path, presence="hearbeat_timeout_seconds = 30\n"
                                          "check_interval_seconds = -1\n")
    p = Serve(tmp_path, [sys.executable, "-m", "rpad", "serve", "--config", str(cfg)])
    procs.append(p)
    await p.start(wait_listening=False)
    assert await p.wait() == 1
    assert p.stderr().splitlines() == [
        f"rpad: invalid configuration ({cfg}):",
        "  presence.hearbeat_timeout_seconds: unknown key",
    ]
    assert not (tmp_path / "state").exists()  # nothing was started
    # Each impossible value is named too.
    cfg = write_config(tmp_path, presence="check_interval_seconds = -1\n")
    p = Serve(tmp_path, [sys.executable, "-m", "rpad", "serve", "--config", str(cfg)], "second")
    procs.append(p)
    await p.start(wait_listening=False)
    assert await p.wait() == 1
    assert "  presence.check_interval_seconds: must be greater than 0, got -1.0" in p.stderr()


async def test_a_database_of_a_newer_rpad_is_refused_in_one_line(procs: list[Serve],
                                                                 tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    (tmp_path / "state").mkdir()
    db_path = tmp_path / "state" / "rpad.db"
    db = sqlite3.connect(db_path)
    db.execute("PRAGMA user_version = 99")
    db.close()
    p = Serve(tmp_path, [sys.executable, "-m", "rpad", "serve", "--config", str(cfg)])
    procs.append(p)
    await p.start(wait_listening=False)
    assert await p.wait() == 1
    stderr = p.stderr()
    assert "Traceback" not in stderr
    assert (f"rpad cannot start: {db_path} has schema version 99, newer than this rpad's"
            in stderr)


async def test_an_address_in_use_is_refused_in_one_line(procs: list[Serve],
                                                        tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cfg = write_config(tmp_path)
        text = cfg.read_text()
        assert text.count('listen = "127.0.0.1:0"') == 2  # [http] first, then [websocket]
        cfg.write_text(text.replace('listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{port}"', 1))
        p = Serve(tmp_path, [sys.executable, "-m", "rpad", "serve", "--config", str(cfg)])
        procs.append(p)
        await p.start(wait_listening=False)
        assert await p.wait() == 1
    stderr = p.stderr()
    assert "Traceback" not in stderr
    assert "rpad cannot start: cannot listen: Address already in use" in stderr


# -- an unexpected exception takes everything down ----------------------------------------------


INJECT_FAULT = """
import sys
import rpad.service.presence
from rpad import cli

# Fault injection: the sweeper's step raises once it has marked someone offline (after the
# transition was committed), as a bug in any of the daemon's tasks would.
original = rpad.service.presence.Presence.sweep

async def sweep(self, **kwargs):
    events = await original(self, **kwargs)
    if events:
        raise RuntimeError("injected fault in the sweeper")
    return events

rpad.service.presence.Presence.sweep = sweep
sys.exit(cli.main(["serve", "--config", sys.argv[1]]))
"""


async def test_an_unexpected_exception_brings_the_whole_daemon_down(
        procs: list[Serve], tmp_path: Path) -> None:
    cfg = write_config(tmp_path, presence="heartbeat_timeout_seconds = 0.3\n"
                                          "check_interval_seconds = 0.1\n")
    p = Serve(tmp_path, [sys.executable, "-c", INJECT_FAULT, str(cfg)])
    procs.append(p)
    with trio.fail_after(60):
        await p.start()
        port = port_of(p.http_url)
        async with httpx.AsyncClient(base_url=p.http_url) as client:
            r = await client.post("/api/v1/client/heartbeat", json={"clientId": "silent"},
                                  headers={"Authorization": f"Bearer {token_for(cfg)}"})
            assert r.status_code == 200
        # The client times out, the sweeper marks it offline and then fails: exit status 1.
        assert await p.wait() == 1
    stderr = p.stderr()
    assert "rpad failed" in stderr
    assert "Traceback" in stderr and "RuntimeError: injected fault in the sweeper" in stderr
    assert "rpad stopped" in stderr  # the store was closed on the way out
    assert not await accepts(port)  # nothing left half-running
    assert rows(tmp_path / "state" / "rpad.db",
                "SELECT client_id, status FROM clients") == [("silent", "offline")]
    assert rows(tmp_path / "state" / "rpad.db",
                "SELECT status, reason FROM client_events ORDER BY id") == [
        ("online", "heartbeat"), ("offline", "timeout")]


# -- durability across kill -9 -----------------------------------------------------------------


CLIENTS = 400
CONCURRENCY = 40
GRACE_SECONDS = 3.0
TIMEOUT_AFTER_RESTART_SECONDS = 0.5
CHECK_AFTER_RESTART_SECONDS = 0.1


async def test_every_acknowledged_heartbeat_survives_kill_9(procs: list[Serve],
                                                           tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    token = token_for(cfg)
    acked: dict[str, str] = {}
    with trio.fail_after(120):
        rpad = await serve(procs, tmp_path, cfg, "first")
        assert rpad.proc is not None
        limits = httpx.Limits(max_connections=CONCURRENCY)
        async with httpx.AsyncClient(base_url=rpad.http_url, limits=limits, timeout=30,
                                     headers={"Authorization": f"Bearer {token}"}) as client:
            async def sender(ids: list[str]) -> None:
                for round_ in range(2):
                    for cid in ids:
                        body = {"clientId": cid, "version": f"v{round_}",
                                "status": "busy" if round_ else "online"}
                        r = await client.post("/api/v1/client/heartbeat", json=body)
                        assert r.status_code == 200, r.text
                        acked[cid] = r.json()["serverTime"]

            ids = [f"robot-{i:03d}" for i in range(CLIENTS)]
            async with trio.open_nursery() as nursery:
                for k in range(CONCURRENCY):
                    nursery.start_soon(sender, ids[k::CONCURRENCY])
            # The last 2xx has arrived: kill -9 at once, no chance to flush anything.
            rpad.proc.kill()
        assert await rpad.wait() == -signal.SIGKILL
        assert len(acked) == CLIENTS
        killed_at = time.time()

        # Restart with a timeout shorter than the downtime: without the grace, every client
        # would be marked offline at the first sweep.
        cfg = write_config(tmp_path, presence=(
            f"heartbeat_timeout_seconds = {TIMEOUT_AFTER_RESTART_SECONDS}\n"
            f"check_interval_seconds = {CHECK_AFTER_RESTART_SECONDS}\n"
            f"startup_grace_seconds = {GRACE_SECONDS}\n"))
        rpad = await serve(procs, tmp_path, cfg, "second")
        started_at = time.time()
        async with httpx.AsyncClient(base_url=rpad.http_url,
                                     headers={"Authorization": f"Bearer {token}"}) as client:
            async def views() -> dict[str, dict[str, Any]]:
                r = await client.get("/api/v1/clients")
                assert r.status_code == 200
                return {v["clientId"]: v for v in r.json()["clients"]}

            stored = await views()
            assert {cid: v["lastHeartbeatAt"] for cid, v in stored.items()} == acked
            assert {v["reportedStatus"] for v in stored.values()} == {"busy"}
            assert {v["version"] for v in stored.values()} == {"v1"}
            # Inside the grace, with the sweeper running every 0.1 s and every client silent
            # for longer than its timeout (for most of the watch): nobody is reported offline.
            last_beat = max(parse_iso(t) for t in acked.values())
            watch_until = started_at + GRACE_SECONDS - 1.0
            assert watch_until > (last_beat + TIMEOUT_AFTER_RESTART_SECONDS
                                  + 5 * CHECK_AFTER_RESTART_SECONDS)
            while time.time() < watch_until:
                current = await views()
                assert {v["status"] for v in current.values()} == {"online"}
                await trio.sleep(0.2)
            # Once the grace is over they do go offline (so the check above was not vacuous).
            while True:
                current = await views()
                if {v["status"] for v in current.values()} == {"offline"}:
                    break
                await trio.sleep(0.2)
            assert {v["lastHeartbeatAt"] for v in current.values()} == set(acked.values())
        assert rpad.proc is not None
        rpad.proc.send_signal(signal.SIGTERM)
        assert await rpad.wait() == 0
    assert killed_at < started_at
