"""SIGHUP reload: the real `rpad serve` process gets real signals; its config file changes under
it; what it applies, refuses and keeps is observed from outside (HTTP, sd_notify, stderr).

In-process tests cover the details on Trio's fake clock (the sweeper's new interval, exactly).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, Self

import httpx
import pytest
import trio
import trio.testing

from rpad import config as config_mod
from rpad.auth import Authenticator, Keys
from rpad.config import Config
from rpad.systemd import Notifier

from .conftest import FAKE_WALL_ORIGIN, fake_wall_clock, read_serve_banner, start_daemon
from .test_alerts import HttpReceiver
from .test_systemd import (
    AUTOJUMP_THRESHOLD_SECONDS,
    NotifyListener,
    fake_time_ticker,
    notify_listener,
)
from .wsclient import ws_connect

REPO = Path(__file__).resolve().parent.parent
PROCESS_TIMEOUT_SECONDS = 60
SECRET_A = b"secret-a-0123456789abcdef0123456789"
SECRET_B = b"secret-b-fedcba9876543210fedcba9876"


@pytest.fixture
async def listener(nursery: trio.Nursery) -> AsyncIterator[NotifyListener]:
    async with notify_listener(nursery) as lst:
        yield lst


class ServeProcess:
    """`python -m rpad serve --config PATH` as a child process, with ``$NOTIFY_SOCKET`` pointing
    at a :class:`NotifyListener`, stderr in a file and the listen URLs read from stdout."""

    def __init__(self, config_path: Path, workdir: Path, listener: NotifyListener,
                 env: dict[str, str] | None = None, stderr_path: Path | None = None,
                 command: list[str] | None = None) -> None:
        # Default: this checkout's rpad, run by this interpreter.
        self.command = command or [sys.executable, "-m", "rpad"]
        self.from_checkout = command is None
        self.config_path = config_path
        self.workdir = workdir
        self.listener = listener
        self.extra_env = env or {}
        self.stderr_path = stderr_path or workdir / "stderr.log"
        self.proc: trio.Process | None = None
        self.http_url = ""
        self.ws_url: str | None = None
        self.stdout = ""  # what it printed on start

    def environ(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM",
                            "STATE_DIRECTORY", "CREDENTIALS_DIRECTORY")}
        env["NOTIFY_SOCKET"] = self.listener.address
        if self.from_checkout:
            env["PYTHONPATH"] = str(REPO)
        else:
            env.pop("PYTHONPATH", None)
        env.update(self.extra_env)
        return env

    async def start(self) -> None:
        """Start it and wait for READY=1 and the URLs it prints."""
        err = await trio.to_thread.run_sync(open, self.stderr_path, "wb")
        try:
            self.proc = await trio.lowlevel.open_process(
                [*self.command, "serve", "--config", str(self.config_path)],
                stdout=subprocess.PIPE, stderr=err, env=self.environ(), cwd=self.workdir)
        finally:
            err.close()
        await self.listener.wait_for("READY")
        assert self.proc.stdout is not None
        self.http_url, self.ws_url, self.stdout = await read_serve_banner(self.proc.stdout, self.stderr)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    async def signal_and_wait(self, signum: int, first: str, then: str | None = None) -> None:
        """Send a signal; wait for the sd_notify message ``first`` (and then ``then``) after
        it."""
        assert self.proc is not None
        start = len(self.listener.received)
        self.proc.send_signal(signum)
        i, _ = await self.listener.wait_for(first, start)
        if then is not None:
            await self.listener.wait_for(then, i + 1)

    async def reload(self) -> None:
        await self.signal_and_wait(signal.SIGHUP, "RELOADING", "READY")

    async def stop(self) -> int:
        """SIGTERM; returns the exit code."""
        assert self.proc is not None
        if self.proc.returncode is None:
            await self.signal_and_wait(signal.SIGTERM, "STOPPING")
        code = await self.proc.wait()
        await self.close()
        return code

    async def close(self) -> None:
        """Kill it if it still runs (a failed test), and release the pipe."""
        if self.proc is None:
            return
        if self.proc.returncode is None:
            self.proc.kill()
            with trio.CancelScope(shield=True):
                await self.proc.wait()
        if self.proc.stdout is not None:
            await self.proc.stdout.aclose()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def tokens_for(secret: bytes) -> Authenticator:
    return Authenticator(Keys([secret], []))


def write_config(path: Path, state_dir: Path, text: str) -> None:
    path.write_text(f'state_dir = "{state_dir}"\n' + text)


def base_config(tmp_path: Path, *, secret: str, extra: list[str] | None = None,
                timeout: float = 60, listen: str = "127.0.0.1:0", public: bool = False,
                level: str = "info", more: str = "") -> str:
    extra_list = ", ".join(f'"{tmp_path / e}"' for e in (extra or []))
    return (
        f'[http]\nlisten = "{listen}"\ngraceful_timeout_seconds = 2\n'
        '[websocket]\nlisten = "127.0.0.1:0"\n'
        f'[presence]\nheartbeat_timeout_seconds = {timeout}\ncheck_interval_seconds = 5\n'
        'min_interval_seconds = 0\n'
        f'[auth]\nsecret_file = "{tmp_path / secret}"\nextra_secret_files = [{extra_list}]\n'
        f'[metrics]\npublic = {"true" if public else "false"}\n'
        f'[logging]\nlevel = "{level}"\n' + more
    )


@pytest.fixture(autouse=True)
def _restore_logging() -> Any:
    """A reload applies [logging] to the root logger; give the next test what it had."""
    import logging

    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    root.setLevel(level)
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    for h in handlers:
        if h not in root.handlers:
            root.addHandler(h)


async def test_sighup_reload_end_to_end(tmp_path: Path, listener: NotifyListener,
                                        nursery: trio.Nursery) -> None:
    (tmp_path / "a.secret").write_bytes(SECRET_A)
    (tmp_path / "b.secret").write_bytes(SECRET_B)
    state = tmp_path / "state"
    cfg = tmp_path / "rpad.toml"
    write_config(cfg, state, base_config(tmp_path, secret="a.secret"))
    a, b = tokens_for(SECRET_A), tokens_for(SECRET_B)
    token_a = a.mint(role="service", sub="gw", ttl_seconds=3600)
    token_b = b.mint(role="service", sub="gw", ttl_seconds=3600)
    hook = HttpReceiver()
    await nursery.start(hook.serve)

    with trio.fail_after(PROCESS_TIMEOUT_SECONDS):
        async with ServeProcess(cfg, tmp_path, listener) as rpad:
            async with httpx.AsyncClient(base_url=rpad.http_url, timeout=10) as http, \
                    AsyncExitStack() as stack:

                async def beat(token: str, client: str = "robot-1", **fields: Any) -> httpx.Response:
                    return await http.post("/api/v1/client/heartbeat",
                                           json={"clientId": client, **fields},
                                           headers={"Authorization": f"Bearer {token}"})

                r = await beat(token_a)
                assert r.status_code == 200 and r.json()["timeoutSeconds"] == 60
                # A dashboard connected with a token signed by A stays connected through the
                # whole rotation.
                assert rpad.ws_url is not None
                dashboard = await stack.enter_async_context(
                    ws_connect(rpad.ws_url, token=a.mint(role="viewer", sub="ops", ttl_seconds=3600)))
                await dashboard.subscribe("client_status")
                assert (await http.get("/metrics")).status_code == 401

                # 1. Rotation, first step: B signs, A still verifies. New timeout, metrics open,
                #    a webhook added, debug logs, and a new listen address (needs a restart).
                write_config(cfg, state, base_config(
                    tmp_path, secret="b.secret", extra=["a.secret"], timeout=30, public=True,
                    listen="127.0.0.1:1", level="debug",
                    more=f'[[alerts.webhooks]]\nurl = "{hook.url}"\n'))
                await rpad.reload()
                r = await beat(token_b)
                assert r.status_code == 200, r.text
                assert r.json()["timeoutSeconds"] == 30
                assert (await beat(token_a)).status_code == 200
                metrics = await http.get("/metrics")  # no token: metrics.public = true now
                assert metrics.status_code == 200
                assert 'rpad_config_reloads_total{result="applied"} 1.0' in metrics.text
                # The new alert target gets the next alerts.
                assert (await beat(token_b, "robot-2")).status_code == 200
                assert (await beat(token_b, "robot-2", status="offline")).status_code == 200
                await hook.wait_for(1)
                assert (await beat(token_b, "robot-2")).status_code == 200
                got = await hook.wait_for(2)
                assert [(g.json()["event"], g.json()["clientId"]) for g in got] == [
                    ("client.offline", "robot-2"), ("client.online", "robot-2")]

                # 2. Rotation, second step: A is gone.
                write_config(cfg, state, base_config(tmp_path, secret="b.secret", timeout=30,
                                                     public=True))
                await rpad.reload()
                r = await beat(token_a)
                assert r.status_code == 401 and r.json()["error"] == "unauthorized"
                assert (await beat(token_b)).status_code == 200
                assert (await beat(token_b, "robot-3")).status_code == 200
                while True:  # the A-signed dashboard is still there and gets the news
                    msg = await dashboard.recv()
                    if msg["type"] == "CLIENT_CONNECTED" and msg["data"]["clientId"] == "robot-3":
                        break

                # 3. An invalid file is refused with the reason; the old config stays in force.
                write_config(cfg, state, base_config(tmp_path, secret="b.secret", timeout=-5))
                await rpad.reload()
                write_config(cfg, state, base_config(tmp_path, secret="b.secret",
                                                     more="[metrics.extra]\n"))
                await rpad.reload()
                cfg.write_text("[http\nlisten = ")
                await rpad.reload()
                (tmp_path / "b.secret").unlink()  # the running keys are in memory; still fine
                write_config(cfg, state, base_config(tmp_path, secret="b.secret"))
                await rpad.reload()
                r = await beat(token_b)
                assert r.status_code == 200 and r.json()["timeoutSeconds"] == 30
                metrics = await http.get("/metrics")
                assert 'rpad_config_reloads_total{result="refused"} 4.0' in metrics.text

            assert await rpad.stop() == 0

    log = rpad.stderr()
    assert re.search(r"http\.listen changed \('127\.0\.0\.1:0' -> '127\.0\.0\.1:1'\) but needs "
                     r"a restart", log), log
    reloaded = [line for line in log.splitlines() if "configuration reloaded from" in line]
    assert len(reloaded) == 2
    assert "auth.secret_file" in reloaded[0]
    assert "presence.heartbeat_timeout_seconds 60.0 -> 30.0" in reloaded[0]
    assert "metrics.public False -> True" in reloaded[0]
    assert "alerts.webhooks" in reloaded[0]
    refused = [line for line in log.splitlines() if "reload refused" in line]
    assert len(refused) == 4
    assert "presence.heartbeat_timeout_seconds: must be greater than 0" in refused[0]
    assert "metrics.extra: unknown key" in refused[1]
    assert "not valid TOML" in refused[2]
    assert "auth.secret_file" in refused[3] and "b.secret" in refused[3]
    assert "rpad stopped" in log.splitlines()[-1]


# -- in-process details --------------------------------------------------------------------------


async def test_reload_applies_limits_batching_and_log_level(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    cfg_file = tmp_path / "rpad.toml"
    write_config(cfg_file, tmp_path / "state", '[http]\nlisten = "127.0.0.1:0"\n'
                 '[websocket]\nlisten = "127.0.0.1:0"\n[logging]\nlevel = "info"\n')
    with trio.fail_after(30):
        d = await start_daemon(nursery, config_mod.load(cfg_file), config_path=str(cfg_file))
        big = {"clientId": "big", "metadata": {"note": "x" * 3000}}
        assert (await d.heartbeat("big", metadata=big["metadata"])).status_code == 200
        write_config(cfg_file, tmp_path / "state",
                     '[http]\nlisten = "127.0.0.1:0"\nmax_body_bytes = 2048\n'
                     '[websocket]\nlisten = "127.0.0.1:0"\n'
                     '[auth]\nmax_failures_per_minute = 2\n'
                     '[storage]\ncommit_interval_ms = 0\nmax_batch = 50\n'
                     '[presence]\nhistory_per_client = 7\n'
                     '[logging]\nlevel = "warning"\nformat = "json"\n')
        import logging

        assert await d.daemon.reload()
        r = await d.heartbeat("big", metadata=big["metadata"])
        assert r.status_code == 413 and r.json()["error"] == "body_too_large"
        store = d.daemon.store
        assert store is not None
        assert (store.commit_interval_seconds, store.max_batch, store.history_per_client) == (0.0, 50, 7)
        assert logging.getLogger().level == logging.WARNING
        # Two failed authentications, then 429 for this address.
        for _ in range(2):
            r = await d.request("GET", "/api/v1/clients", token="not-a-token")
            assert r.status_code == 401
        r = await d.request("GET", "/api/v1/clients", token="not-a-token")
        assert r.status_code == 429
        await d.http.aclose()
        d.daemon.stop()


async def test_reload_keeps_restart_only_settings(
    nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg_file = tmp_path / "rpad.toml"
    write_config(cfg_file, tmp_path / "state",
                 '[http]\nlisten = "127.0.0.1:0"\n[websocket]\nlisten = "127.0.0.1:0"\n')
    with trio.fail_after(30):
        d = await start_daemon(nursery, config_mod.load(cfg_file), config_path=str(cfg_file))
        write_config(cfg_file, tmp_path / "moved",
                     '[http]\nlisten = "127.0.0.1:9"\n[websocket]\nlisten = "127.0.0.1:9"\n'
                     '[storage]\npath = "/tmp/elsewhere.db"\n'
                     '[presence]\nheartbeat_timeout_seconds = 120\n')
        assert await d.daemon.reload()
        cfg = d.daemon.config
        assert cfg.http.listen == "127.0.0.1:0" and cfg.websocket.listen == "127.0.0.1:0"
        assert cfg.state_dir == str(tmp_path / "state") and cfg.storage.path == ""
        assert cfg.presence.heartbeat_timeout_seconds == 120
        # The secret was generated in the running state_dir, not in the new one.
        assert not (tmp_path / "moved").exists()
        assert (await d.heartbeat("r1")).json()["timeoutSeconds"] == 120
        await d.http.aclose()
        d.daemon.stop()
    needs_restart = sorted(r.getMessage().split()[1] for r in caplog.records
                           if "needs a restart" in r.getMessage())
    assert needs_restart == ["http.listen", "state_dir", "storage.path", "websocket.listen"]


async def test_reload_applies_a_new_timeout_to_the_sweepers_alarm_on_the_fake_clock(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    """heartbeat_timeout 60 s → 10 s by reload: a silent client is marked offline at its new
    deadline (its last heartbeat + 10 s), not at the old one (the reload wakes the sweeper);
    the check interval, 30 s, plays no part."""
    autojump_clock.autojump_threshold = AUTOJUMP_THRESHOLD_SECONDS  # see test_systemd
    nursery.start_soon(fake_time_ticker)
    cfg_file = tmp_path / "rpad.toml"
    listen = '[http]\nlisten = "127.0.0.1:0"\n[websocket]\nlisten = "127.0.0.1:0"\n'
    write_config(cfg_file, tmp_path / "state", listen +
                 "[presence]\nheartbeat_timeout_seconds = 60\ncheck_interval_seconds = 30\n"
                 "min_interval_seconds = 0\n")
    with trio.fail_after(600):
        d = await start_daemon(nursery, config_mod.load(cfg_file), config_path=str(cfg_file),
                               wall_clock=fake_wall_clock())
        r = await d.heartbeat("robot")
        assert r.status_code == 200
        beat = _epoch(r.json()["serverTime"]) - FAKE_WALL_ORIGIN  # when rpad received it
        write_config(cfg_file, tmp_path / "state", listen +
                     "[presence]\nheartbeat_timeout_seconds = 10\ncheck_interval_seconds = 10\n"
                     "min_interval_seconds = 0\n")
        assert await d.daemon.reload()
        await trio.sleep(40)
        robot = (await d.request("GET", "/api/v1/clients/robot", role="viewer")).json()
        assert robot["status"] == "offline"
        offline_at = _epoch(robot["offlineSince"]) - FAKE_WALL_ORIGIN
        assert offline_at == pytest.approx(beat + 10, abs=2e-3)
        await d.http.aclose()
        d.daemon.stop()


def _epoch(iso_text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso_text).timestamp()


async def test_reload_with_the_notifier_disabled_still_works(
    nursery: trio.Nursery, make_config: Callable[..., Config]
) -> None:
    """Outside systemd (no NOTIFY_SOCKET) reload() on built-in-default-like config works."""
    with trio.fail_after(30):
        d = await start_daemon(nursery, make_config(), notifier=Notifier(environ={}))
        # config_path None: re-reads the built-in defaults; listen addresses are kept.
        assert await d.daemon.reload()
        assert d.daemon.config.http.listen == "127.0.0.1:0"
        assert (await d.heartbeat("x")).status_code == 200
        await d.http.aclose()
        d.daemon.stop()
