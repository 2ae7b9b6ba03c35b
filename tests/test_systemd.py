"""sd_notify and the watchdog, against a real datagram socket, and the systemd units against
systemd-analyze.

The daemon tests bind a real ``AF_UNIX`` datagram socket (abstract, as systemd's own is, and a
filesystem path) and read what the real daemon sends. Watchdog and status cadences run on
Trio's fake clock with exact times.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from itertools import pairwise
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing

from rpad import config as config_mod
from rpad.config import Config
from rpad.daemon import STATUS_INTERVAL_SECONDS, Daemon
from rpad.systemd import Notifier, run_watchdog, watchdog_interval_seconds

from .conftest import fake_wall_clock, need_tool, start_daemon
from .wsclient import ws_connect

REPO = Path(__file__).resolve().parent.parent
UNITS = ("rpad.service", "rpad-agent.service", "rpad@.service")
# The bar for `systemd-analyze security` (0 = locked down, 10 = fully exposed).
MAX_EXPOSURE = 2.5

Message = dict[str, str]


class NotifyListener:
    """The service manager's end: a datagram socket whose reader task records every sd_notify
    message with the Trio time at which it arrived."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.received: list[tuple[float, Message]] = []
        self._changed = trio.Event()

    async def bind(self) -> None:
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        await self.sock.bind(target)

    async def run(self) -> None:
        while True:
            data = await self.sock.recv(4096)
            msg = dict(line.split("=", 1) for line in data.decode().split("\n") if line)
            self.received.append((trio.current_time(), msg))
            self._changed.set()
            self._changed = trio.Event()

    async def wait_for(self, key: str, start: int = 0) -> tuple[int, Message]:
        """The first message from index ``start`` on that has ``key``: (index, message)."""
        while True:
            for i in range(start, len(self.received)):
                if key in self.received[i][1]:
                    return i, self.received[i][1]
            await self._changed.wait()

    def close(self) -> None:
        self.sock.close()


# With the autojump clock, a wait on a worker thread (SQLite) or a socket jumps the clock to the
# next deadline, which during start-up would be the test's own fail_after. The daemon tests
# therefore let the clock jump only after this much real idleness, and keep a deadline ticking.
AUTOJUMP_THRESHOLD_SECONDS = 0.01
TICK_SECONDS = 1.0


async def fake_time_ticker() -> None:
    while True:
        await trio.sleep(TICK_SECONDS)


def abstract_address() -> str:
    return f"@rpad-test-{os.getpid()}-{secrets.token_hex(6)}"


@asynccontextmanager
async def notify_listener(nursery: trio.Nursery) -> AsyncIterator[NotifyListener]:
    """A bound listener on a fresh abstract address, its reader running in ``nursery``."""
    lst = NotifyListener(abstract_address())
    await lst.bind()
    scope = trio.CancelScope()
    done = trio.Event()

    async def reader() -> None:
        try:
            with scope:
                await lst.run()
        finally:
            done.set()

    nursery.start_soon(reader)
    try:
        yield lst
    finally:
        scope.cancel()
        await done.wait()
        lst.close()


@pytest.fixture
async def listener(nursery: trio.Nursery) -> AsyncIterator[NotifyListener]:
    async with notify_listener(nursery) as lst:
        yield lst


# -- the notifier on its own ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["abstract", "path"])
async def test_notifier_sends_each_message_as_one_datagram(kind: str) -> None:
    with trio.fail_after(5), tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        address = abstract_address() if kind == "abstract" else os.path.join(tmp, "notify")
        lst = NotifyListener(address)
        await lst.bind()
        n = Notifier(environ={"NOTIFY_SOCKET": address})
        assert n.enabled
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lst.run)
            n.ready("3 of 4 clients online")
            n.status("2 of 4 clients online")
            n.status("2 of 4 clients online")  # unchanged: not sent again
            n.watchdog()
            before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            n.reloading()
            after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            n.stopping()
            await lst.wait_for("STOPPING")
            nursery.cancel_scope.cancel()
        msgs = [m for _, m in lst.received]
        assert msgs[:3] == [{"READY": "1", "STATUS": "3 of 4 clients online"},
                            {"STATUS": "2 of 4 clients online"}, {"WATCHDOG": "1"}]
        assert msgs[3]["RELOADING"] == "1" and set(msgs[3]) == {"RELOADING", "MONOTONIC_USEC"}
        assert before <= int(msgs[3]["MONOTONIC_USEC"]) <= after
        assert msgs[4:] == [{"STOPPING": "1"}]
        n.close()
        n.close()  # idempotent
        lst.close()


async def test_notifier_outside_systemd_does_nothing() -> None:
    n = Notifier(environ={})
    assert not n.enabled
    assert n.watchdog_seconds is None
    assert n.notify("READY=1") is False


async def test_notifier_survives_a_vanished_socket(caplog: pytest.LogCaptureFixture) -> None:
    n = Notifier(abstract_address())  # nobody listens there
    assert n.notify("WATCHDOG=1") is False
    assert n.notify("WATCHDOG=1") is False
    warnings = [r for r in caplog.records if "sd_notify" in r.getMessage()]
    assert len(warnings) == 1  # logged once, not on every ping
    n.close()


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    pid = str(os.getpid())
    assert watchdog_interval_seconds({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval_seconds({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": pid}) == 15.0
    # Meant for another process (a parent's watchdog leaking into our environment).
    assert watchdog_interval_seconds({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval_seconds({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval_seconds({"WATCHDOG_USEC": "soon"}) is None
    assert watchdog_interval_seconds({}) is None


async def test_watchdog_cadence_on_the_fake_clock(
    autojump_clock: trio.testing.MockClock, listener: NotifyListener
) -> None:
    n = Notifier(listener.address)
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            start = trio.current_time()
            nursery.start_soon(run_watchdog, n, 7.5)
            await trio.sleep(30.1)
            scope.cancel()
    await trio.sleep(1)
    times = [t - start for t, m in listener.received]
    assert [m for _, m in listener.received] == [{"WATCHDOG": "1"}] * 5
    assert times == [0.0, 7.5, 15.0, 22.5, 30.0]
    n.close()


# -- the daemon ----------------------------------------------------------------------------------


async def test_ready_only_after_listeners_bound_and_store_loaded(
    nursery: trio.Nursery, make_config: Callable[..., Config], listener: NotifyListener
) -> None:
    """READY=1 is the first state message; when it arrives the HTTP API (and the hub, when
    there is one) already accepts connections, and clients from the store are known."""
    with trio.fail_after(30):
        cfg = make_config()
        async with trio.open_nursery() as first_run:  # a client in the store from a previous run
            first = await start_daemon(first_run, cfg)
            assert (await first.heartbeat("from-before")).status_code == 200
            await first.http.aclose()
            first.daemon.stop()

        daemon = Daemon(cfg, notifier=Notifier(listener.address))
        seen: dict[str, object] = {}

        async def on_ready() -> None:
            _, msg = await listener.wait_for("READY")
            # Read the daemon's state at the moment READY=1 arrived, before anything else runs.
            seen.update(status=msg.get("STATUS"), http_url=daemon.http_url, ws_url=daemon.ws_url,
                        clients=len(daemon.presence.view) if daemon.presence else None)

        async with trio.open_nursery() as watch:
            watch.start_soon(on_ready)
            nursery.start_soon(daemon.run)
        index, _ = await listener.wait_for("READY")
        # Nothing but watchdog pings before READY=1.
        assert all(set(m) <= {"WATCHDOG"} for _, m in listener.received[:index])
        assert seen["clients"] == 1
        assert seen["status"] == "1 of 1 clients online, 0 WebSocket connections"
        http_url = seen["http_url"]
        assert isinstance(http_url, str) and http_url.startswith("http://127.0.0.1:")
        async with httpx.AsyncClient() as client:
            r = await client.get(f"{http_url}/api/v1/health")
            assert r.status_code == 200
        ws_url = seen["ws_url"]  # the hub's listener is bound too
        m = re.match(r"ws://(127\.0\.0\.1):(\d+)/ws$", str(ws_url))
        assert m, ws_url
        stream = await trio.open_tcp_stream(m.group(1), int(m.group(2)))
        await stream.aclose()
        daemon.stop()
        _, msg = await listener.wait_for("STOPPING", index + 1)
        assert msg == {"STOPPING": "1"}


async def test_watchdog_status_reload_and_stop_from_the_daemon(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery,
    listener: NotifyListener, tmp_path: Path,
) -> None:
    """With WATCHDOG_USEC=20 s the daemon pings every 10 s of the event loop's clock, exactly;
    STATUS= follows the clients; a reload is RELOADING=1 + MONOTONIC_USEC then READY=1 (also
    when the new file is refused); the shutdown starts with STOPPING=1."""
    with trio.fail_after(300):
        cfg_file = tmp_path / "rpad.toml"
        base = (f'state_dir = "{tmp_path / "state"}"\n'
                '[http]\nlisten = "127.0.0.1:0"\ngraceful_timeout_seconds = 1\n'
                '[websocket]\nlisten = "127.0.0.1:0"\n'
                # Nobody times out during the test: STATUS= changes only when the test acts.
                '[presence]\nheartbeat_timeout_seconds = 3600\n')
        cfg_file.write_text(base)
        autojump_clock.autojump_threshold = AUTOJUMP_THRESHOLD_SECONDS
        nursery.start_soon(fake_time_ticker)
        notifier = Notifier(environ={"NOTIFY_SOCKET": listener.address,
                                     "WATCHDOG_USEC": "20000000", "WATCHDOG_PID": str(os.getpid())})
        assert notifier.watchdog_seconds == 10.0
        d = await start_daemon(nursery, config_mod.load(cfg_file), notifier=notifier,
                               config_path=str(cfg_file), wall_clock=fake_wall_clock())
        i_ready, ready = await listener.wait_for("READY")
        assert ready["STATUS"] == "0 of 0 clients online, 0 WebSocket connections"

        # A client comes online, a dashboard connects and goes: each time the next status check
        # (within one interval) says so.
        r = await d.heartbeat("robot-1")
        assert r.status_code == 200
        changed_at = trio.current_time()
        i_status, status = await listener.wait_for("STATUS", i_ready + 1)
        assert status["STATUS"] == "1 of 1 clients online, 0 WebSocket connections"
        assert listener.received[i_status][0] - changed_at <= STATUS_INTERVAL_SECONDS
        assert d.ws_url is not None
        async with ws_connect(d.ws_url, token=d.token("viewer", "ops")):
            i_status, status = await listener.wait_for("STATUS", i_status + 1)
            assert status["STATUS"] == "1 of 1 clients online, 1 WebSocket connection"
        i_status, status = await listener.wait_for("STATUS", i_status + 1)
        assert status["STATUS"] == "1 of 1 clients online, 0 WebSocket connections"

        await trio.sleep(60)
        pings = [t for t, m in listener.received if "WATCHDOG" in m]
        assert len(pings) >= 7
        assert [round(b - a, 9) for a, b in pairwise(pings)] == [10.0] * (len(pings) - 1)
        # Nothing else was sent meanwhile: STATUS= only when it changed.
        others = [m for _, m in listener.received[i_status + 1:] if "WATCHDOG" not in m]
        assert others == []

        # Reload: RELOADING=1 with MONOTONIC_USEC (CLOCK_MONOTONIC, real time), then READY=1.
        cfg_file.write_text(base.replace("= 3600", "= 7200"))
        n = len(listener.received)
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert await d.daemon.reload()
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        i, reloading = await listener.wait_for("RELOADING", n)
        assert before <= int(reloading["MONOTONIC_USEC"]) <= after
        i, again = await listener.wait_for("READY", i + 1)
        assert again["READY"] == "1"

        # A refused reload still ends with READY=1 (systemd must not think we hang).
        cfg_file.write_text(base.replace("= 3600", "= -1"))
        assert not await d.daemon.reload()
        i, _ = await listener.wait_for("RELOADING", i + 1)
        i, again = await listener.wait_for("READY", i + 1)
        assert again["READY"] == "1"

        await d.http.aclose()
        d.daemon.stop()
        _, msg = await listener.wait_for("STOPPING", i + 1)
        assert msg == {"STOPPING": "1"}


# -- the units -----------------------------------------------------------------------------------


@pytest.fixture
def units_for_this_machine(tmp_path: Path) -> Path:
    """Copies of the units whose ExecStart points at this environment's `rpad` (verify checks
    that the binary exists and is executable); everything else unchanged."""
    rpad_bin = Path(sys.executable).parent / "rpad"
    if not rpad_bin.exists():
        rpad_bin = Path(shutil.which("rpad") or "/nonexistent/rpad")
    for name in UNITS:
        text = (REPO / "systemd" / name).read_text()
        assert "/usr/local/bin/rpad " in text, f"{name}: ExecStart should run /usr/local/bin/rpad"
        (tmp_path / name).write_text(text.replace("/usr/local/bin/rpad ", f"{rpad_bin} "))
    return tmp_path


@pytest.mark.parametrize("unit", UNITS)
def test_unit_passes_systemd_analyze_verify(unit: str, units_for_this_machine: Path) -> None:
    tool = need_tool("systemd-analyze")
    res = subprocess.run([tool, "verify", str(units_for_this_machine / unit)],
                         capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    # verify reports unknown keys and bad values as warnings on stderr, without failing.
    assert res.stderr.strip() == "", res.stderr


@pytest.mark.parametrize("unit", UNITS)
def test_unit_exposure_rating(unit: str, units_for_this_machine: Path) -> None:
    tool = need_tool("systemd-analyze")
    res = subprocess.run([tool, "security", "--offline=true", "--no-pager",
                          str(units_for_this_machine / unit)],
                         capture_output=True, text=True, timeout=60, check=False)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", res.stdout)
    assert m, res.stdout + res.stderr
    exposure = float(m.group(1))
    print(f"{unit}: systemd-analyze security exposure {exposure}")
    assert exposure <= MAX_EXPOSURE, res.stdout


def test_service_unit_contract() -> None:
    """The settings the issue asks for, present and spelled as systemd wants them."""
    text = (REPO / "systemd" / "rpad.service").read_text()
    settings = dict(re.findall(r"^(\w+)=(.*)$", text, re.MULTILINE))
    assert settings["Type"] == "notify"
    assert settings["ExecStart"] == "/usr/local/bin/rpad serve --config /etc/rpad/rpad.toml"
    assert "-HUP" in settings["ExecReload"] and "$MAINPID" in settings["ExecReload"]
    assert settings["Restart"] == "on-failure"
    assert settings["DynamicUser"] == "yes"
    assert settings["StateDirectory"] == "rpad"
    assert settings["ConfigurationDirectory"] == "rpad"
    assert settings["LoadCredential"] == "jwt.secret:/etc/rpad/jwt.secret"
    assert int(settings["LimitNOFILE"]) >= 65536
    assert re.fullmatch(r"\d+s?", settings["WatchdogSec"])
    # The credential name is the one rpad looks for in $CREDENTIALS_DIRECTORY.
    from rpad.auth import CREDENTIAL_NAME

    assert settings["LoadCredential"].split(":")[0] == CREDENTIAL_NAME


def test_agent_unit_runs_the_agent_cli_as_documented() -> None:
    """The agent unit's command line, with its variables filled in as systemd would, is one the
    real `rpad agent` parser accepts, and the token comes from the credential, never argv."""
    from rpad.cli import build_parser

    text = (REPO / "systemd" / "rpad-agent.service").read_text()
    settings = dict(re.findall(r"^(\w+)=(.*)$", text, re.MULTILINE))
    assert settings["LoadCredential"] == "agent.token:/etc/rpad/agent.token"
    assert settings["EnvironmentFile"] == "/etc/rpad/agent.env"
    assert "--token " not in settings["ExecStart"]
    env = {"RPAD_URL": "http://rpad.example:8000", "RPAD_CLIENT_ID": "host-1",
           "RPAD_INTERVAL": settings["Environment"].split("=", 1)[1]}
    argv = settings["ExecStart"].split()
    assert argv[0] == "/usr/local/bin/rpad"
    argv = [re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], a).replace("%d", "/run/credentials/x")
            for a in argv[1:]]
    args = build_parser().parse_args(argv)
    assert (args.url, args.client_id, args.interval) == ("http://rpad.example:8000", "host-1", 30.0)
    assert args.token_file == "/run/credentials/x/agent.token"
    assert args.token is None


def test_agent_commands_drop_in(tmp_path: Path) -> None:
    """systemd/rpad-agent-commands.conf on top of the agent's unit: valid for systemd, a command
    line the agent accepts (commands from its --config file, never argv), and only the
    capabilities the runner needs."""
    tool = need_tool("systemd-analyze")
    base = (REPO / "systemd" / "rpad-agent.service").read_text()
    drop_in = (REPO / "systemd" / "rpad-agent-commands.conf").read_text()
    rpad_bin = Path(sys.executable).parent / "rpad"
    # A drop-in's settings apply after the unit's: appended to one file, the same for verify.
    merged = (base + "\n" + drop_in).replace(
        "/usr/local/bin/rpad ", f"{rpad_bin} ")
    unit = tmp_path / "rpad-agent.service"
    unit.write_text(merged)
    res = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True,
                         timeout=60, check=False)
    assert res.returncode == 0 and res.stderr.strip() == "", res.stdout + res.stderr
    res = subprocess.run([tool, "security", "--offline=true", "--no-pager", str(unit)],
                         capture_output=True, text=True, timeout=60, check=False)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", res.stdout)
    assert m, res.stdout + res.stderr
    print(f"rpad-agent.service with commands: systemd-analyze security exposure {m.group(1)}")
    settings = dict(re.findall(r"^(\w+)=(.+)$", drop_in, re.MULTILINE))
    assert set(settings["CapabilityBoundingSet"].split()) == {
        "CAP_SETUID", "CAP_SETGID", "CAP_KILL", "CAP_SYS_PTRACE"}
    from rpad.cli import build_parser

    env = {"RPAD_URL": "http://rpad.example:8000", "RPAD_CLIENT_ID": "host-1",
           "RPAD_INTERVAL": "30"}
    argv = [re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], a)
            .replace("%d", "/run/credentials/x") for a in settings["ExecStart"].split()[1:]]
    args = build_parser().parse_args(argv)
    assert args.config == "/etc/rpad/agent.toml" and not args.allow_commands
