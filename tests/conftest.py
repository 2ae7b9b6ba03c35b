"""Shared fixtures: the real daemon on port 0 in the test's nursery, real SQLite in a temporary
state directory, and a real HTTP client.

``start_daemon(nursery, cfg)`` returns a :class:`Running` with the bound URLs, a token minter
and an httpx client. Tests on a fake clock pass ``wall_clock=fake_wall_clock()`` so that the
registry's wall clock moves with Trio's clock.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from rpad import config as config_mod
from rpad.config import Config
from rpad.daemon import Daemon

# A fixed wall-clock origin for fake-clock tests: 2026-01-01T00:00:00Z.
FAKE_WALL_ORIGIN = 1767225600.0
NETWORK_TIMEOUT_SECONDS = 30

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def need_tool(name: str) -> str:
    """Path of an external tool; skip without it locally, fail without it in CI.

    Call it from sync code only (a sync test or fixture; :func:`tool_fixture` makes one):
    pytest-trio drops the reason of a skip raised inside an async test or fixture, which then
    reports only "python.py:187: Skipped", so it refuses to be called there for a missing
    tool."""
    path = shutil.which(name)
    if path is None:
        if IN_CI:
            pytest.fail(f"{name} is required in CI but is not installed")
        if _in_trio():
            raise RuntimeError(f"{name} is not installed, and need_tool() was called inside an "
                               "async test, where the skip's reason would be lost: take the "
                               "tool from a tool_fixture() instead")
        pytest.skip(f"{name} is not installed")
    return path


def tool_fixture(name: str, *, autouse: bool = False) -> Any:
    """A (sync) fixture giving the path of the tool ``name``; a test that takes it is skipped,
    with the reason, when the tool is missing (failed in CI). In a test module:
    ``nginx = tool_fixture("nginx")``, then ``async def test_x(nginx: str)``."""

    @pytest.fixture(name=name.replace("-", "_").replace(".", "_"), autouse=autouse)
    def fixture() -> str:
        return need_tool(name)

    return fixture


def _in_trio() -> bool:
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        return False
    return True


async def read_serve_banner(stdout: trio.abc.ReceiveStream,
                            why_not: Callable[[], str] = lambda: "") -> tuple[str, str | None, str]:
    """Read the lines `rpad serve` prints once it listens, up to the dashboard line; return
    (HTTP API URL, WebSocket hub URL or None, the text read). ``why_not()`` explains an early
    exit."""
    text = ""
    while "dashboard" not in text or not text.endswith("\n"):
        chunk = await stdout.receive_some(4096)
        if not chunk:
            raise AssertionError(f"rpad exited before listening: {text!r}\n{why_not()}")
        text += chunk.decode()
    http = re.search(r"HTTP API (http://\S+)", text)
    assert http, text
    ws = re.search(r"WebSocket hub (wss?://\S+)", text)
    return http.group(1), ws.group(1) if ws else None, text


def fake_wall_clock() -> Callable[[], float]:
    return lambda: FAKE_WALL_ORIGIN + trio.current_time()


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def config_dict(state_dir: Path, **sections: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "state_dir": str(state_dir),
        "http": {"listen": "127.0.0.1:0", "graceful_timeout_seconds": 2.0},
        "websocket": {"listen": "127.0.0.1:0"},
        "logging": {"level": "debug"},
    }
    return _merge(base, sections)


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., Config]:
    """``make_config(presence={"heartbeat_timeout_seconds": 10}, ...)`` → a Config on port 0
    with its state in the test's temporary directory."""

    def make(**sections: Any) -> Config:
        return config_mod.from_dict(config_dict(tmp_path / "state", **sections))

    return make


class Running:
    """A daemon started by a test."""

    def __init__(self, daemon: Daemon, client: httpx.AsyncClient) -> None:
        self.daemon = daemon
        self.http = client
        self.http_url = daemon.http_url
        self.ws_url = daemon.ws_url

    def token(self, role: str = "admin", sub: str = "tester", *, ttl: float | None = 3600,
              **claims: Any) -> str:
        assert self.daemon.auth is not None
        return self.daemon.auth.mint(role=role, sub=sub, ttl_seconds=ttl, **claims)

    def headers(self, role: str = "admin", sub: str = "tester") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(role, sub)}"}

    async def request(self, method: str, path: str, *, token: str | None = None,
                      role: str | None = "admin", sub: str = "tester",
                      **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}) or {})
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        elif role is not None:
            headers["Authorization"] = f"Bearer {self.token(role, sub)}"
        return await self.http.request(method, self.http_url + path, headers=headers, **kwargs)

    async def heartbeat(self, client_id: str, *, role: str = "service", **fields: Any) -> httpx.Response:
        body = {"clientId": client_id, **fields}
        return await self.request("POST", "/api/v1/client/heartbeat", json=body, role=role,
                                  sub=client_id if role == "agent" else "gateway")

    async def stop(self) -> None:
        self.daemon.stop()


async def start_daemon(nursery: trio.Nursery, cfg: Config, **kwargs: Any) -> Running:
    daemon = Daemon(cfg, **kwargs)
    await nursery.start(daemon.run)
    client = httpx.AsyncClient(timeout=NETWORK_TIMEOUT_SECONDS)
    return Running(daemon, client)


@pytest.fixture
async def rpad(nursery: trio.Nursery, make_config: Callable[..., Config]) -> AsyncIterator[Running]:
    """The daemon on built-in defaults (ports 0, temporary state)."""
    running = await start_daemon(nursery, make_config())
    yield running
    await running.http.aclose()
    running.daemon.stop()
