"""The ``rpad`` command (SPEC §7): the installed entry point, ``python -m rpad``, ``token``,
``check-config``, and ``serve`` on the built-in defaults (at a terminal and not)."""

from __future__ import annotations

import errno
import json
import os
import pty
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jwt
import pytest
import trio

from rpad import __version__

pytestmark = pytest.mark.slow

RPAD = str(Path(sys.executable).parent / "rpad")  # the console script pyproject installs
START_TIMEOUT_SECONDS = 30


def run(args: list[str], cwd: Path, **kw: object) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("STATE_DIRECTORY", "CREDENTIALS_DIRECTORY", "NOTIFY_SOCKET")}
    result: subprocess.CompletedProcess[str] = subprocess.run(
        args, cwd=cwd, capture_output=True, text=True, timeout=60, check=False, env=env,
        **kw)  # type: ignore[call-overload]
    return result


def write_config(tmp_path: Path, extra: str = "") -> Path:
    cfg = tmp_path / "rpad.toml"
    cfg.write_text(f'state_dir = "{tmp_path / "state"}"\n{extra}')
    return cfg


def secret_of(tmp_path: Path) -> bytes:
    return (tmp_path / "state" / "jwt.secret").read_bytes().strip()


# -- entry points ------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [[RPAD], [sys.executable, "-m", "rpad"]])
def test_entry_points(command: list[str], tmp_path: Path) -> None:
    res = run([*command, "--version"], tmp_path)
    assert (res.returncode, res.stdout.strip()) == (0, f"rpad {__version__}")
    res = run([*command, "--help"], tmp_path)
    assert res.returncode == 0
    for sub in ("serve", "token", "check-config"):
        assert sub in res.stdout
    res = run(command, tmp_path)  # a command is required
    assert res.returncode == 2 and "required" in res.stderr


# -- rpad token --------------------------------------------------------------------------------


def test_token_is_signed_with_the_state_secret(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    res = run([RPAD, "token", "--role", "admin", "--sub", "alice", "--config", str(cfg)],
              tmp_path)
    assert res.returncode == 0, res.stderr
    token = res.stdout.strip()
    secret = secret_of(tmp_path)  # generated on first use, owner-only
    assert stat.S_IMODE((tmp_path / "state" / "jwt.secret").stat().st_mode) == 0o600
    claims = jwt.decode(token, secret, algorithms=["HS256"])
    assert (claims["sub"], claims["role"]) == ("alice", "admin")
    assert claims["exp"] - claims["iat"] == 30 * 86400  # the default lifetime
    assert abs(claims["iat"] - time.time()) < 60


def test_token_options(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, '[auth]\nissuer = "https://rpad.example"\naudience = "fleet"\n')
    res = run([RPAD, "token", "--role", "viewer", "--sub", "dash", "--ttl", "never",
               "--topics", "task.*", "jobs.*", "--publish", "task.*", "--config", str(cfg)],
              tmp_path)
    assert res.returncode == 0, res.stderr
    claims = jwt.decode(res.stdout.strip(), secret_of(tmp_path), algorithms=["HS256"],
                        audience="fleet")
    assert "exp" not in claims
    assert (claims["topics"], claims["publish"], claims["iss"], claims["aud"]) == (
        ["task.*", "jobs.*"], ["task.*"], "https://rpad.example", "fleet")
    res = run([RPAD, "token", "--role", "service", "--sub", "gw", "--ttl", "15m",
               "--config", str(cfg)], tmp_path)
    claims = jwt.decode(res.stdout.strip(), secret_of(tmp_path), algorithms=["HS256"],
                        audience="fleet")
    assert claims["exp"] - claims["iat"] == 900


def test_agent_token_carries_the_stored_generation(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    args = [RPAD, "token", "--role", "agent", "--sub", "robot-1", "--config", str(cfg)]
    res = run(args, tmp_path)
    assert jwt.decode(res.stdout.strip(), secret_of(tmp_path), algorithms=["HS256"])["gen"] == 0
    # The daemon revoked this agent's tokens twice: the database says generation 2.
    db = sqlite3.connect(tmp_path / "state" / "rpad.db")
    db.execute("CREATE TABLE token_generations (client_id TEXT PRIMARY KEY, gen INTEGER)")
    db.execute("INSERT INTO token_generations VALUES ('robot-1', 2)")
    db.commit()
    db.close()
    res = run(args, tmp_path)
    assert jwt.decode(res.stdout.strip(), secret_of(tmp_path), algorithms=["HS256"])["gen"] == 2


@pytest.mark.parametrize(("args", "status", "message"), [
    (["--role", "admin", "--sub", "a", "--ttl", "soon"], 1,
     "rpad token: 'soon' is not a duration such as 90s, 15m, 1h, 30d or never"),
    (["--role", "root", "--sub", "a"], 2, "invalid choice: 'root'"),
    (["--role", "admin"], 2, "the following arguments are required: --sub"),
])
def test_token_refusals(tmp_path: Path, args: list[str], status: int, message: str) -> None:
    res = run([RPAD, "token", *args, "--config", str(write_config(tmp_path))], tmp_path)
    assert res.returncode == status
    assert message in res.stderr
    assert res.stdout == ""


# -- rpad check-config -------------------------------------------------------------------------


def test_check_config_accepts_a_valid_file_and_the_defaults(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "[presence]\nheartbeat_timeout_seconds = 90\n")
    res = run([RPAD, "check-config", "--config", str(cfg)], tmp_path)
    assert (res.returncode, res.stdout.strip()) == (0, f"{cfg}: ok")
    res = run([RPAD, "check-config"], tmp_path)
    assert (res.returncode, res.stdout.strip()) == (0, "built-in defaults: ok")
    assert not (tmp_path / "rpad-data").exists()  # checking creates nothing


@pytest.mark.parametrize(("extra", "problem"), [
    ("[presence]\nhearbeat_timeout_seconds = 5\n",
     "presence.hearbeat_timeout_seconds: unknown key"),
    ("[http]\nmax_body_bytes = 'big'\n",
     "http.max_body_bytes: expected an integer, got str 'big'"),
    ("[presence]\nheartbeat_timeout_seconds = -1\n",
     "presence.heartbeat_timeout_seconds: must be greater than 0, got -1.0"),
    ("[presence]\nheartbeat_timeout_seconds = 5\ncheck_interval_seconds = 6\n",
     ("presence.check_interval_seconds: must not be longer than "
      "presence.heartbeat_timeout_seconds (6.0 > 5.0)")),
    ("[auth]\nsecret_file = '/nonexistent/jwt.secret'\n",
     "auth.secret_file: cannot read /nonexistent/jwt.secret: No such file or directory"),
])
def test_check_config_refuses_naming_the_key(tmp_path: Path, extra: str, problem: str) -> None:
    cfg = write_config(tmp_path, extra)
    res = run([RPAD, "check-config", "--config", str(cfg)], tmp_path)
    assert res.returncode == 1
    assert res.stderr.splitlines() == [f"rpad: invalid configuration ({cfg}):", f"  {problem}"]


def test_check_config_refuses_a_short_secret(tmp_path: Path) -> None:
    short = tmp_path / "short.secret"
    short.write_text("tooshort")
    cfg = write_config(tmp_path, f"[auth]\nsecret_file = '{short}'\n")
    res = run([RPAD, "check-config", "--config", str(cfg)], tmp_path)
    assert res.returncode == 1
    assert res.stderr.strip() == (f"rpad: invalid configuration: auth.secret_file: {short}: "
                                  "a secret must be at least 16 bytes")


def test_check_config_refuses_unreadable_toml(tmp_path: Path) -> None:
    cfg = tmp_path / "rpad.toml"
    cfg.write_text("[http\n")
    res = run([RPAD, "check-config", "--config", str(cfg)], tmp_path)
    assert res.returncode == 1
    assert f"{cfg}: not valid TOML" in res.stderr


# -- rpad serve on the built-in defaults -------------------------------------------------------


def default_ports_free() -> bool:
    for port in (8000, 8001):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return False
                raise
    return True


async def read_until(stream: trio.abc.ReceiveStream, marker: bytes) -> bytes:
    out = b""
    with trio.fail_after(START_TIMEOUT_SECONDS):
        while marker not in out:
            try:
                chunk = await stream.receive_some()
            except OSError:  # a pty whose other side closed
                chunk = b""
            assert chunk, f"rpad exited before printing {marker!r}: {out!r}"
            out += chunk
    return out


@pytest.mark.parametrize("at_a_terminal", [True, False])
async def test_serve_on_the_built_in_defaults(tmp_path: Path, at_a_terminal: bool) -> None:
    if not default_ports_free():
        pytest.skip("127.0.0.1:8000 or :8001 is in use on this machine")
    env = {k: v for k, v in os.environ.items()
           if k not in ("STATE_DIRECTORY", "CREDENTIALS_DIRECTORY", "NOTIFY_SOCKET")}
    if at_a_terminal:
        primary, secondary = pty.openpty()
        process = await trio.lowlevel.open_process(
            [RPAD, "serve"], cwd=tmp_path, stdin=secondary, stdout=secondary,
            stderr=subprocess.DEVNULL, env=env)
        os.close(secondary)
        stream: trio.abc.ReceiveStream = trio.lowlevel.FdStream(primary)
    else:
        process = await trio.lowlevel.open_process(
            [RPAD, "serve"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env=env)
        assert process.stdout is not None
        stream = process.stdout
    try:
        marker = b"open: " if at_a_terminal else b"rpad token"
        out = (await read_until(stream, marker))
        out += await read_until(stream, b"\n") if not out.endswith(b"\n") else b""
        lines = [line.strip() for line in out.decode().splitlines()]
        assert lines[0] == f"rpad {__version__} listening: HTTP API http://127.0.0.1:8000"
        assert "WebSocket hub ws://127.0.0.1:8001" in lines[1]
        assert lines[2] == "dashboard http://127.0.0.1:8000/"
        state = tmp_path / "rpad-data"
        assert stat.S_IMODE((state / "jwt.secret").stat().st_mode) == 0o600
        assert stat.S_IMODE((state / "rpad.db").stat().st_mode) == 0o600
        async with httpx.AsyncClient(base_url="http://127.0.0.1:8000") as client:
            r = await client.get("/api/v1/health")
            assert r.status_code == 200 and r.json()["status"] == "ok"
            if at_a_terminal:
                token = lines[3].removeprefix("admin token (30 days): ")
                assert lines[4] == f"open: http://127.0.0.1:8000/?token={token}"
                claims = jwt.decode(token, (state / "jwt.secret").read_bytes().strip(),
                                    algorithms=["HS256"])
                assert (claims["role"], claims["exp"] - claims["iat"]) == ("admin", 30 * 86400)
                r = await client.get("/api/v1/clients",
                                     headers={"Authorization": f"Bearer {token}"})
                assert r.status_code == 200, r.text
            else:
                assert lines[3] == "get a token with: rpad token --role admin --sub you"
                assert "token" not in json.dumps(lines[:3])
    finally:
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            status = await process.wait()
        await stream.aclose()
    assert status == 0
