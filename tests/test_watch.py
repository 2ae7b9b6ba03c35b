"""``rpad watch``: output formats, the reconnect schedule on the fake clock, and the real thing
against the real hub — resume with ``since`` after a disconnect, a fresh start after a restart
of rpad, and a clear exit on a refused token."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Callable
from typing import Any

import httpx
import trio

from rpad.client.backoff import Backoff
from rpad.client.watch import EXIT_FAILURE, Watcher, format_pretty, summary
from rpad.config import Config
from rpad.daemon import Daemon

from .conftest import Running
from .test_alerts import daemon_running, free_port

E2E_TIMEOUT_SECONDS = 30


class Restartable:
    """A daemon on fixed ports that a test can stop and start again (same state, same ports)."""

    def __init__(self, nursery: trio.Nursery, cfg: Config) -> None:
        self.nursery = nursery
        self.cfg = cfg
        self.running: Running | None = None
        self._done = trio.Event()

    async def start(self) -> Running:
        self._done = trio.Event()
        done = self._done
        daemon = Daemon(self.cfg)

        async def run(task_status: trio.TaskStatus[Any]) -> None:
            try:
                await daemon.run(task_status=task_status)
            finally:
                done.set()

        await self.nursery.start(run)
        self.running = Running(daemon, httpx.AsyncClient(timeout=30))
        return self.running

    async def stop(self) -> None:
        assert self.running is not None
        await self.running.http.aclose()
        self.running.daemon.stop()
        await self._done.wait()


def fixed_ports_config(make_config: Callable[..., Config], **sections: Any) -> Config:
    return make_config(http={"listen": f"127.0.0.1:{free_port()}"},
                       websocket={"listen": f"127.0.0.1:{free_port()}"}, **sections)


def lines(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(ln) for ln in out.getvalue().splitlines()]


async def wait_until(pred: Callable[[], bool]) -> None:
    while not pred():
        await trio.sleep(0.02)


# -- output --------------------------------------------------------------------------------------


def test_pretty_lines() -> None:
    msg = {"type": "CLIENT_DISCONNECTED", "topic": "client_status", "seq": 7,
           "ts": "2026-01-01T12:34:56.789Z",
           "data": {"clientId": "robot-1", "status": "offline", "reason": "timeout",
                    "reportedStatus": "busy", "version": "1.2", "ipAddress": "10.0.0.5"}}
    assert format_pretty(msg) == (
        "12:34:56.789  client_status#7      CLIENT_DISCONNECTED    "
        "robot-1 offline (timeout) reported=busy version=1.2 ip=10.0.0.5")
    beat = {"type": "HEARTBEAT_RECEIVED", "data": {
        "clientId": "h", "reportedStatus": "online",
        "latestMetrics": {"cpuUsagePercent": 12.4, "memoryUsageBytes": 1, "memoryTotalBytes": 4}}}
    assert summary(beat) == "h online cpu=12% mem=25%"
    servers = {"type": "SERVER_LIST", "data": {"servers": [{"status": "online"},
                                                           {"status": "offline"}]}}
    assert summary(servers) == "2 clients, 1 online"
    note = {"type": "NOTIFICATION", "topic": None, "seq": None,
            "data": {"level": "warning", "title": "Client offline", "message": "x went offline"}}
    assert summary(note) == "[warning] Client offline: x went offline"
    assert "direct" in format_pretty(note)
    assert summary({"type": "TASK_UPDATE", "data": {"taskId": 4, "progress": 50}}) == (
        '{"taskId":4,"progress":50}')


# -- the reconnect schedule on the fake clock ----------------------------------------------------


async def test_reconnect_backoff_is_exact_and_gives_up(autojump_clock: Any) -> None:
    port = free_port()  # nothing listens: every connection is refused
    err = io.StringIO()
    watcher = Watcher(f"ws://127.0.0.1:{port}/ws", "t", ["client_status"], out=io.StringIO(),
                      err=err, backoff=Backoff(jitter=0.2, random=lambda: 0.0), max_attempts=8)
    start = trio.current_time()
    assert await watcher.run() == EXIT_FAILURE
    times = [t - start for t in watcher.attempt_times]
    # 1 s doubling to 30 s between attempts; the 8th failure gives up.
    assert times == [0, 1, 3, 7, 15, 31, 61, 91]
    text = err.getvalue()
    assert "cannot connect to ws://127.0.0.1" in text and "reconnecting in 1.0 s" in text
    assert "giving up after 8 failed attempts" in text


async def test_jitter_shortens_delays(autojump_clock: Any) -> None:
    port = free_port()
    watcher = Watcher(f"ws://127.0.0.1:{port}/ws", "t", ["x"], out=io.StringIO(),
                      err=io.StringIO(), backoff=Backoff(jitter=0.2, random=lambda: 0.5),
                      max_attempts=4)
    start = trio.current_time()
    await watcher.run()
    assert [round(t - start, 9) for t in watcher.attempt_times] == [0, 0.9, 2.7, 6.3]


# -- against the real hub ------------------------------------------------------------------------


async def test_prints_events_and_resumes_with_since_after_a_disconnect(
        make_config: Callable[..., Config]) -> None:
    out, err = io.StringIO(), io.StringIO()
    with trio.fail_after(E2E_TIMEOUT_SECONDS):
        async with trio.open_nursery() as nursery:
            async with daemon_running(make_config(presence={"min_interval_seconds": 0})) as rpad:
                assert rpad.ws_url
                watcher = Watcher(rpad.ws_url, rpad.token("viewer", "watcher"),
                                  ["client_status", "heartbeat"], out=out, err=err,
                                  backoff=Backoff(initial=0.5, jitter=0.0))
                nursery.start_soon(watcher.run)
                await wait_until(lambda: err.getvalue().count("subscribed to") == 2)
                await rpad.heartbeat("w-1", version="1")
                await wait_until(lambda: len(out.getvalue().splitlines()) == 2)
                first = lines(out)
                assert [(m["topic"], m["type"]) for m in first] == [
                    ("client_status", "CLIENT_CONNECTED"), ("heartbeat", "HEARTBEAT_RECEIVED")]
                assert first[0]["data"]["clientId"] == "w-1" and first[0]["seq"] == 1

                # An admin disconnects the watcher (4010); events happen while it is away.
                resp = await rpad.request("POST", "/api/v1/websocket/users/disconnect",
                                          json={"userId": "watcher", "reason": "maintenance"})
                assert resp.status_code == 200
                await wait_until(lambda: "connection closed (4010" in err.getvalue())
                await rpad.heartbeat("w-1", status="offline")
                await rpad.heartbeat("w-2")
                await wait_until(lambda: watcher.connections == 2)
                await wait_until(lambda: len(out.getvalue().splitlines()) == 6)
                got = lines(out)
                by_topic: dict[str, list[int]] = {}
                for m in got:
                    by_topic.setdefault(m["topic"], []).append(m["seq"])
                # Every event exactly once, in order, across the reconnection.
                assert by_topic == {"client_status": [1, 2, 3], "heartbeat": [1, 2, 3]}
                assert [m["type"] for m in got if m["topic"] == "client_status"] == [
                    "CLIENT_CONNECTED", "CLIENT_DISCONNECTED", "CLIENT_CONNECTED"]
                assert "since" not in err.getvalue()  # nothing was lost: no gap reported
                assert "reconnecting in 0.5 s" in err.getvalue()
            nursery.cancel_scope.cancel()


async def test_restart_of_rpad_starts_afresh(make_config: Callable[..., Config]) -> None:
    out, err = io.StringIO(), io.StringIO()
    cfg = fixed_ports_config(make_config, presence={"min_interval_seconds": 0})
    with trio.fail_after(E2E_TIMEOUT_SECONDS):
        async with trio.open_nursery() as nursery:
            node = Restartable(nursery, cfg)
            rpad = await node.start()
            assert rpad.ws_url
            watcher = Watcher(rpad.ws_url, rpad.token("viewer", "w", ttl=None),
                              ["client_status"], out=out, err=err, pretty=True,
                              backoff=Backoff(initial=0.2, jitter=0.0))
            nursery.start_soon(watcher.run)
            await wait_until(lambda: "subscribed to client_status" in err.getvalue())
            await rpad.heartbeat("r-1")
            await wait_until(lambda: "r-1 online" in out.getvalue())
            epoch = watcher.epoch
            await node.stop()
            await wait_until(lambda: "connection closed (1001" in err.getvalue())
            rpad = await node.start()
            await wait_until(lambda: watcher.connections == 2)
            assert watcher.epoch != epoch
            assert "rpad restarted (new epoch): starting afresh" in err.getvalue()
            await wait_until(lambda: err.getvalue().count("subscribed to client_status") == 2)
            await rpad.heartbeat("r-2")
            await wait_until(lambda: "r-2 online" in out.getvalue())
            pretty = out.getvalue().splitlines()
            # seq 1 again on the new epoch, and printed (not taken for a duplicate).
            assert "client_status#1" in pretty[0] and "client_status#1" in pretty[1]
            await node.stop()
            nursery.cancel_scope.cancel()


async def test_refused_token_exits_1_with_the_reason(make_config: Callable[..., Config]) -> None:
    with trio.fail_after(E2E_TIMEOUT_SECONDS):
        async with daemon_running(make_config()) as rpad:
            assert rpad.ws_url
            result = await trio.run_process(
                [sys.executable, "-m", "rpad", "watch", "--url", rpad.ws_url,
                 "--token", "not-a-token", "--topic", "client_status"],
                capture_stdout=True, capture_stderr=True, check=False)
            assert result.returncode == 1
            assert result.stdout == b""
            assert b"rpad watch: the server refused the token: 4001 unauthorized" in \
                result.stderr
            # An agent token is valid but may not use the hub: 4003.
            result = await trio.run_process(
                [sys.executable, "-m", "rpad", "watch", "--url", rpad.ws_url,
                 "--token", rpad.token("agent", "a-1")],
                capture_stdout=True, capture_stderr=True, check=False)
            assert result.returncode == 1
            assert b"4003 forbidden" in result.stderr


async def test_watch_process_prints_json_lines(make_config: Callable[..., Config]) -> None:
    with trio.fail_after(E2E_TIMEOUT_SECONDS):
        async with daemon_running(make_config()) as rpad:
            assert rpad.ws_url
            token = rpad.token("viewer", "cli")
            proc = await trio.lowlevel.open_process(
                [sys.executable, "-m", "rpad", "watch", "--url", rpad.ws_url, "--token", token,
                 "--topic", "client_status", "notifications"],
                stdout=-1, stderr=-1)
            assert proc.stdout is not None and proc.stderr is not None
            buf = b""
            err = b""
            try:
                while err.count(b"subscribed to") < 2:
                    err += await proc.stderr.receive_some(4096)
                await rpad.heartbeat("cli-1")
                await rpad.heartbeat("cli-1", status="offline")
                while buf.count(b"\n") < 3:
                    buf += await proc.stdout.receive_some(4096)
            finally:
                proc.terminate()
                assert await proc.wait() == 0  # SIGTERM is a normal end
            msgs = [json.loads(ln) for ln in buf.decode().splitlines()]
            types = sorted(m["type"] for m in msgs)
            assert types == ["CLIENT_CONNECTED", "CLIENT_DISCONNECTED", "NOTIFICATION"]
