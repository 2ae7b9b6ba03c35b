"""Schemathesis against a live ``rpad serve``: every operation of the OpenAPI document, with a
token of each role, in all of Schemathesis's phases (its examples, its coverage of the schemas'
edges, fuzzing, and stateful sequences that follow the document's links).

Pass means every check Schemathesis has (``--checks all``): no 5xx; every answer's status
documented for its operation, its content type and body as documented; schema-valid requests
accepted and schema-violating ones refused; authentication enforced; a client just created is
found by the operations its links lead to, one deleted is gone. On top of them, two checks of
ours (tests/schemathesis_hooks.py): the roles the document declares per operation hold, and
every operation the role may call answered it with a 2xx at least once.

The daemon runs with its defaults (body limit, rate limits, registration), except that failed
authentications per address are not capped: Schemathesis sends many requests with no token or
a broken one on purpose, and the cap would turn the rest of the run into 429s.

Bounded for CI: a fixed seed and a few examples per operation. Run it alone with
``.venv/bin/python -m pytest tests/test_schemathesis.py``; ``RPAD_ST_EXAMPLES`` and
``RPAD_ST_SEED`` set a longer or different run, ``RPAD_ST_REPORT=DIR`` keeps every request and
answer (a HAR file per role; Schemathesis's reproductions show only a failure's own steps).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed, HandshakeError

from rpad import config as config_mod
from rpad.auth import Authenticator, load_keys

from .test_alerts import free_port
from .test_daemon_process import Serve, environ
from .wsclient import ws_connect

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
HOOKS = HERE / "schemathesis_hooks.py"
CONFIG = HERE / "schemathesis.toml"
SECRET = "schemathesis-test-secret-" + "x" * 32
SEED = int(os.environ.get("RPAD_ST_SEED", "20260101"))
MAX_EXAMPLES = int(os.environ.get("RPAD_ST_EXAMPLES", "25"))
RUN_TIMEOUT_SECONDS = 600
REQUEST_TIMEOUT_SECONDS = 20

# The subject of each role's token. The agent's is the document's example client id, so that
# the examples (and whatever reuses them) beat for the agent's own client.
SUBJECTS = {"admin": "st-admin", "service": "st-gateway", "operator": "st-operator",
            "viewer": "st-viewer", "agent": "robot-7"}
# What the operator may run commands on (its exec claim): the document's example client.
OPERATOR_EXEC = ("robot-*",)
# A dashboard connected for the whole run as the document's example user id, so that the
# operations on a user's connections (ping, list, disconnect) find one.
DASHBOARD_USER = "dash"
RECONNECT_SECONDS = 0.01
# Operations no run here can get a 2xx from, and why (tested end to end elsewhere).
UNREACHABLE = {
    # Only a running task can be cancelled, and tasks here end at once: no agent has a control
    # channel (tests/test_tasks_e2e.py cancels a task of real agent processes).
    "POST /api/v1/tasks/{taskId}/cancel",
}


def write_config(tmp_path: Path) -> Path:
    secret = tmp_path / "jwt.secret"
    secret.write_text(SECRET + "\n")
    secret.chmod(0o600)
    cfg = tmp_path / "rpad.toml"
    cfg.write_text(f"""
state_dir = "{tmp_path / 'state'}"
[http]
listen = "127.0.0.1:0"
[websocket]
listen = "127.0.0.1:0"
[auth]
secret_file = "{secret}"
max_failures_per_minute = 1000000
[logging]
level = "warning"
# The document's example target, so that a test alert has one to go to: nothing listens on
# its port, so its deliveries wait for their next attempt.
[[alerts.webhooks]]
name = "ops"
url = "http://127.0.0.1:{free_port()}/hook"
""")
    return cfg


def mint(cfg: Path, role: str, sub: str) -> str:
    """A token signed with the daemon's own keys, as `rpad token --config` makes it."""
    return Authenticator(load_keys(config_mod.load(cfg))).mint(
        role=role, sub=sub, ttl_seconds=3600,
        exec_=OPERATOR_EXEC if role == "operator" else ())


async def keep_dashboard(ws_url: str, token: str) -> None:
    """A dashboard of :data:`DASHBOARD_USER`, reconnected whenever an operation disconnects it;
    it reads (and so checks against the WebSocket schema) everything the hub sends."""
    while True:
        try:
            async with ws_connect(ws_url, token=token) as ws:
                while True:
                    await ws.recv()
        except* (ConnectionClosed, HandshakeError, OSError):
            pass
        await trio.sleep(RECONNECT_SECONDS)


def operations(doc: dict[str, object]) -> dict[str, list[str]]:
    """``METHOD /path`` of every operation → the roles it declares (none: no token)."""
    ops: dict[str, list[str]] = {}
    for path, methods in doc["paths"].items():  # type: ignore[attr-defined]
        for method, op in methods.items():
            ops[f"{method.upper()} {path}"] = op.get("x-rpad-roles", [])
    return ops


@pytest.mark.parametrize("role", list(SUBJECTS))
async def test_schemathesis(tmp_path: Path, role: str) -> None:
    cfg = write_config(tmp_path)
    rpad = Serve(tmp_path, [sys.executable, "-m", "rpad", "serve", "--config", str(cfg)])
    await rpad.start()
    assert rpad.proc is not None and rpad.proc.stdout is not None
    try:
        async with httpx.AsyncClient(base_url=rpad.http_url) as http:
            doc = (await http.get("/api/v1/openapi.json")).json()
            # The document's example client is registered, as a fleet's clients are, so that
            # roles that cannot register one (viewer) still read one. (Not a heartbeat: the
            # agent's own first one must not meet the 1 s minimum interval.)
            admin = {"Authorization": f"Bearer {mint(cfg, 'admin', 'st-setup')}"}
            example = {"clientId": "robot-7", "name": "Robot 7", "tags": ["line-1"]}
            assert (await http.post("/api/v1/clients", json=example, headers=admin)
                    ).status_code == 201
        # Loaded from a file: Schemathesis leaves out the operation that serves the document it
        # was loaded from, and GET /api/v1/openapi.json is one of the routes to test.
        (tmp_path / "openapi.json").write_text(json.dumps(doc))
        token = mint(cfg, role, SUBJECTS[role])
        record = tmp_path / "record.json"
        env = {**environ(), "SCHEMATHESIS_HOOKS": str(HOOKS), "RPAD_ST_TOKEN": token,
               "RPAD_ST_ROLE": role, "RPAD_ST_SUB": SUBJECTS[role],
               "RPAD_ST_RECORD": str(record)}
        command = [
            sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG),
            "run", "openapi.json",
            "--url", rpad.http_url,
            "--header", f"Authorization: Bearer {token}",
            "--checks", "all",
            # In its place: rpad_resource_availability (tests/schemathesis_hooks.py).
            "--exclude-checks", "ensure_resource_availability",
            "--seed", str(SEED),
            "--max-examples", str(MAX_EXAMPLES),
            "--workers", "1",
            "--generation-database", "none",
            "--request-timeout", str(REQUEST_TIMEOUT_SECONDS),
            "--no-color",
        ]
        if os.environ.get("RPAD_ST_REPORT"):  # every request and answer, for a failure's story
            command += ["--report", "har", "--report-dir",
                        str(Path(os.environ["RPAD_ST_REPORT"]) / role)]
        dash = mint(cfg, "viewer", DASHBOARD_USER)
        async with trio.open_nursery() as nursery:
            assert rpad.ws_url is not None
            nursery.start_soon(keep_dashboard, rpad.ws_url, dash)
            with trio.fail_after(RUN_TIMEOUT_SECONDS):
                run = await trio.run_process(command, cwd=tmp_path, env=env, check=False,
                                             capture_stdout=True, stderr=subprocess.STDOUT)
            nursery.cancel_scope.cancel()
        output = run.stdout.decode(errors="replace")
        print(output)  # (shown by pytest -s, or -rP)
        assert run.returncode == 0, (f"Schemathesis ({role} token) failed:\n{output}\n"
                                     f"rpad's log:\n{rpad.stderr()[-5000:]}")

        ops = operations(doc)
        seen = json.loads(record.read_text())
        assert set(seen["called"]) == set(ops), output
        reachable = {label for label, roles in ops.items()
                     if (not roles or role in roles) and label not in UNREACHABLE}
        assert reachable - set(seen["succeeded"]) == set(), (
            f"operations the {role} may call that never answered it with a 2xx:\n{output}")
        if role == "admin":  # (the role that registers clients, the links' starting point)
            links = re.search(r"API Links:\s+(\d+) covered", output)
            assert links and int(links.group(1)) > 0, f"no link followed:\n{output}"
        assert rpad.proc.returncode is None, f"rpad exited:\n{rpad.stderr()}"
    finally:
        rpad.kill()
        with trio.move_on_after(10):
            await rpad.proc.wait()
        await rpad.proc.stdout.aclose()
    log = rpad.stderr()
    for needle in ("Traceback", "unexpected error", "internal error"):
        assert needle not in log, log[log.find(needle) - 2000: log.find(needle) + 2000]
