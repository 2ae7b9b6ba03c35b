"""Packaging: the wheel built from this checkout carries the dashboard, and once installed in a
fresh virtualenv (dependencies from the package index, nothing from this checkout) it serves
the dashboard and takes a heartbeat.

The build runs on a copy of the sources in a temporary directory, so nothing (build/,
*.egg-info) is left in the working tree.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio

from .test_reload import ServeProcess
from .test_systemd import NotifyListener, notify_listener

REPO = Path(__file__).resolve().parent.parent
# Building, then installing the dependencies (from pip's cache after the first time).
BUILD_TIMEOUT_SECONDS = 300
SERVE_TIMEOUT_SECONDS = 60


@pytest.fixture
async def listener(nursery: trio.Nursery) -> AsyncIterator[NotifyListener]:
    async with notify_listener(nursery) as lst:
        yield lst


def run(args: list[str], cwd: Path, timeout: float = BUILD_TIMEOUT_SECONDS) -> str:
    res = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                         check=False)
    assert res.returncode == 0, f"{args}:\n{res.stdout}\n{res.stderr}"
    return res.stdout


def build_wheel(tmp: Path) -> Path:
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "rpad", src / "rpad",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = tmp / "dist"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dist),
         str(src)], cwd=tmp)
    wheels = list(dist.glob("rpad-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


async def test_wheel_installs_into_a_fresh_venv_and_serves(
    tmp_path: Path, listener: NotifyListener
) -> None:
    wheel = await trio.to_thread.run_sync(build_wheel, tmp_path)

    # The dashboard's files are in the wheel, every one of them.
    shipped = sorted(p.name for p in (REPO / "rpad" / "static").iterdir()
                     if p.is_file() and not p.name.startswith("."))
    assert "index.html" in shipped
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        in_wheel = sorted(n.removeprefix("rpad/static/") for n in names
                          if n.startswith("rpad/static/"))
        assert in_wheel == shipped
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        assert "rpad = rpad.cli:main" in zf.read(entry_points).decode()
        metadata = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        assert re.search(r"^Requires-Dist: prometheus-client", metadata, re.MULTILINE)

    venv = tmp_path / "venv"
    await trio.to_thread.run_sync(lambda: run([sys.executable, "-m", "venv", str(venv)],
                                              cwd=tmp_path))
    pip = venv / "bin" / "pip"
    await trio.to_thread.run_sync(lambda: run(
        [str(pip), "install", "--quiet", "--disable-pip-version-check", str(wheel)],
        cwd=tmp_path))
    rpad_bin = venv / "bin" / "rpad"
    # It runs from the venv, not from this checkout.
    where = await trio.to_thread.run_sync(lambda: run(
        [str(venv / "bin" / "python"), "-c", "import rpad; print(rpad.__file__)"], cwd=tmp_path))
    assert where.strip().startswith(str(venv)), where

    cfg = tmp_path / "rpad.toml"
    cfg.write_text(f'state_dir = "{tmp_path / "state"}"\n'
                   '[http]\nlisten = "127.0.0.1:0"\n[websocket]\nlisten = "127.0.0.1:0"\n')
    check = await trio.to_thread.run_sync(lambda: run(
        [str(rpad_bin), "check-config", "--config", str(cfg)], cwd=tmp_path))
    assert check.strip().endswith(": ok")
    with trio.fail_after(SERVE_TIMEOUT_SECONDS):
        async with ServeProcess(cfg, tmp_path, listener, command=[str(rpad_bin)]) as rpad:
            token = (await trio.to_thread.run_sync(lambda: run(
                [str(rpad_bin), "token", "--role", "service", "--sub", "gateway", "--config",
                 str(cfg)], cwd=tmp_path))).strip()
            async with httpx.AsyncClient(base_url=rpad.http_url, timeout=10) as http:
                page = await http.get("/")
                assert page.status_code == 200
                assert page.headers["content-type"].startswith("text/html")
                assets = re.findall(r'(?:href|src)="(/static/[^"]+)"', page.text)
                assert assets
                for asset in assets:
                    r = await http.get(asset)
                    assert r.status_code == 200, asset
                    assert r.content == (REPO / "rpad" / asset.removeprefix("/")).read_bytes()
                r = await http.post("/api/v1/client/heartbeat",
                                    json={"client_id": 1, "status": "online", "version": "1.0.0",
                                          "ip_address": "192.168.1.100"},
                                    headers={"Authorization": f"Bearer {token}"})
                assert r.status_code == 200, r.text
                assert r.json()["clientId"] == "1" and r.json()["status"] == "online"
            assert await rpad.stop() == 0
