"""The programs for monitored hosts stand alone: ``rpad/client`` imports nothing of the server,
and ``rpad build-agent`` makes one file that runs the agent on a bare Python (no site-packages
at all) against the real daemon."""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import trio

from rpad.config import Config

from .test_agent import wait_for_client
from .test_alerts import daemon_running

CLIENT = Path(__file__).resolve().parent.parent / "rpad" / "client"
SERVER_PACKAGES = ("quart", "quart_trio", "hypercorn", "prometheus_client", "cryptography", "jwt",
                   "cattrs", "werkzeug")
TIMEOUT_SECONDS = 60


def test_client_modules_import_only_the_client_and_the_version() -> None:
    """Every relative import in rpad/client stays inside it, but for rpad's ``__version__``."""
    for path in sorted(CLIENT.glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                if node.level == 1:
                    continue  # rpad.client.*
                assert node.level == 2 and node.module is None, (path.name, ast.unparse(node))
                assert [a.name for a in node.names] == ["__version__"], (path.name,
                                                                          ast.unparse(node))
            elif isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith("rpad"), (path.name, ast.unparse(node))
                assert node.module.split(".")[0] not in SERVER_PACKAGES, (path.name, node.module)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    assert alias.name.split(".")[0] not in (*SERVER_PACKAGES, "rpad"), (
                        path.name, alias.name)


def test_importing_the_client_loads_nothing_of_the_server() -> None:
    code = ("import sys, rpad.client.__main__\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            f"{SERVER_PACKAGES!r} or (m.startswith('rpad.') and not m.startswith('rpad.client'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


async def test_the_zipapp_runs_the_agent_on_a_bare_python(
        make_config: Callable[..., Config], tmp_path: Path) -> None:
    pyz = tmp_path / "rpad-agent.pyz"
    built = await trio.run_process([sys.executable, "-m", "rpad", "build-agent", "-o", str(pyz)],
                                   capture_stdout=True, capture_stderr=True, check=False)
    assert built.returncode == 0, built.stderr
    assert pyz.stat().st_size < 5_000_000
    # -I -S: no user or system site-packages, no PYTHON* variables: only the standard library
    # and the file itself.
    bare = [sys.executable, "-I", "-S", str(pyz)]
    version = await trio.run_process([*bare, "--version"], capture_stdout=True)
    assert version.stdout.decode().startswith("rpad-agent ")
    with trio.fail_after(TIMEOUT_SECONDS):
        async with daemon_running(make_config()) as rpad:
            token_file = tmp_path / "agent.token"
            token_file.write_text(rpad.token("agent", "pyz-1") + "\n")
            proc = await trio.lowlevel.open_process(
                [*bare, "agent", "--url", rpad.http_url, "--client-id", "pyz-1",
                 "--token-file", str(token_file), "--interval", "5"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                env={"PATH": os.environ.get("PATH", "")})
            try:
                view = await wait_for_client(rpad, "pyz-1", lambda v: v["status"] == "online")
                assert "cpuUsagePercent" in view["latestMetrics"]
                proc.send_signal(signal.SIGTERM)
                assert await proc.wait() == 0
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            view = await wait_for_client(rpad, "pyz-1", lambda v: v["status"] == "offline")
            assert view["status"] == "offline"
