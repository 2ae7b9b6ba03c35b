"""Logs: the events worth knowing, one line each; text and JSON; syslog priorities under
journald; and never a token or a secret, however it was passed.

The end-to-end tests run the real `rpad serve` process and read its real stderr.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio

from rpad import logs
from rpad.auth import Authenticator, Keys

from .test_reload import PROCESS_TIMEOUT_SECONDS, ServeProcess
from .test_systemd import NotifyListener, notify_listener
from .wsclient import ws_connect

SECRET = b"log-test-secret-0123456789abcdef012345"


@pytest.fixture
async def listener(nursery: trio.Nursery) -> AsyncIterator[NotifyListener]:
    async with notify_listener(nursery) as lst:
        yield lst


def record(msg: str, level: int = logging.INFO, name: str = "rpad.test",
           exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise RuntimeError("boom with Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl")
        except RuntimeError:
            exc_info = sys.exc_info()
    return logging.LogRecord(name, level, __file__, 1, msg, None, exc_info)


# -- redaction -----------------------------------------------------------------------------------


def test_redact_removes_tokens_in_every_form() -> None:
    token = Authenticator(Keys([SECRET], [])).mint(role="admin", sub="root", ttl_seconds=60)
    _header, payload, signature = token.split(".")
    cases = [
        f"GET /ws?token={token} HTTP/1.1",
        f"GET /ws?topic=x&token={token}&since=3",
        "GET /ws?token=not-even-a-jwt-but-still-secret",
        f"Authorization: Bearer {token}",
        "authorization: bearer opaque-credential-value",
        f'{{"action": "auth", "token": "{token}"}}',
        '{"action":"auth","token":"garbage-token-value"}',
        f"bad token {token} from 10.0.0.1",
        f"/ws?access_token={token}",
    ]
    for text in cases:
        out = logs.redact(text)
        for part in (token, signature, payload, "not-even-a-jwt", "opaque-credential",
                     "garbage-token"):
            assert part not in out, (text, out)
        assert logs.REDACTED in out
    # Ordinary lines are left alone.
    for text in ("client robot-1 is online (heartbeat)",
                 "authentication failed from 127.0.0.1: the token has expired",
                 "HTTP API listening on http://127.0.0.1:8000",
                 "reload: presence.heartbeat_timeout_seconds 60.0 -> 30.0"):
        assert logs.redact(text) == text


def test_registered_secrets_are_redacted() -> None:
    logs.add_secrets([SECRET, b"short"])
    out = logs.redact(f"oops: {SECRET.decode()} and short")
    assert SECRET.decode() not in out
    assert out == f"oops: {logs.REDACTED} and short"  # too short to be treated as a secret


# -- formats -------------------------------------------------------------------------------------


def test_text_format() -> None:
    line = logs.TextFormatter().format(record("client robot-1 is online (heartbeat)"))
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO    rpad\.test: "
                        r"client robot-1 is online \(heartbeat\)", line), line


def test_json_format_with_a_traceback() -> None:
    line = logs.JsonFormatter().format(record("it failed", logging.ERROR, exc=True))
    entry = json.loads(line)
    assert entry["level"] == "error" and entry["logger"] == "rpad.test"
    assert entry["message"] == "it failed"
    assert "RuntimeError: boom with Bearer [redacted]" in entry["exception"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["ts"])


@pytest.mark.parametrize("level,prio", [(logging.DEBUG, 7), (logging.INFO, 6),
                                         (logging.WARNING, 4), (logging.ERROR, 3),
                                         (logging.CRITICAL, 2)])
def test_journald_priorities_on_every_line(level: int, prio: int) -> None:
    text = logs.TextFormatter(journald=True).format(record("first\nsecond", level, exc=True))
    lines = text.splitlines()
    assert len(lines) > 3
    assert all(ln.startswith(f"<{prio}>") for ln in lines), lines
    assert lines[0] == f"<{prio}>rpad.test: first"  # no timestamp: the journal has its own
    js = logs.JsonFormatter(journald=True).format(record("x", level))
    assert js.startswith(f"<{prio}>{{") and json.loads(js[len(f"<{prio}>"):])["message"] == "x"


def test_under_journald_only_when_stderr_is_the_journal_stream(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with open(tmp_path / "stream", "w") as f:
        monkeypatch.setattr(sys, "stderr", f)
        st = os.fstat(f.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert logs.under_journald()
        # Inherited from a parent whose stderr was the journal, but ours is redirected.
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino + 1}")
        assert not logs.under_journald()
        monkeypatch.setenv("JOURNAL_STREAM", "garbage")
        assert not logs.under_journald()
        monkeypatch.delenv("JOURNAL_STREAM")
        assert not logs.under_journald()


# -- the real process ----------------------------------------------------------------------------


def write_config(tmp_path: Path, fmt: str) -> Path:
    (tmp_path / "jwt.secret").write_bytes(SECRET)
    cfg = tmp_path / "rpad.toml"
    cfg.write_text(
        f'state_dir = "{tmp_path / "state"}"\n'
        '[http]\nlisten = "127.0.0.1:0"\ngraceful_timeout_seconds = 2\n'
        '[websocket]\nlisten = "127.0.0.1:0"\n'
        '[presence]\nmin_interval_seconds = 0\n'
        f'[auth]\nsecret_file = "{tmp_path / "jwt.secret"}"\n'
        f'[logging]\nlevel = "debug"\nformat = "{fmt}"\n')
    return cfg


async def exercise(rpad: ServeProcess) -> list[str]:
    """Everything that should log, with tokens in every place a token can travel. Returns the
    tokens used."""
    auth = Authenticator(Keys([SECRET], []))
    service = auth.mint(role="service", sub="gateway", ttl_seconds=3600)
    viewer = auth.mint(role="viewer", sub="ops", ttl_seconds=3600)
    expired = auth.mint(role="viewer", sub="late", ttl_seconds=1)
    expired = Authenticator(Keys([SECRET], []), clock=lambda: 1_000_000.0).mint(
        role="viewer", sub="late", ttl_seconds=60)
    wrong_key = Authenticator(Keys([b"another-secret-0123456789abcdef-0123456789"], [])).mint(
        role="admin", sub="mallory", ttl_seconds=3600)
    async with httpx.AsyncClient(base_url=rpad.http_url, timeout=10) as http:
        hb = "/api/v1/client/heartbeat"
        r = await http.post(hb, json={"clientId": "robot-1"},
                            headers={"Authorization": f"Bearer {service}"})
        assert r.status_code == 200
        r = await http.post(hb, json={"clientId": "robot-1", "status": "offline"},
                            headers={"Authorization": f"Bearer {service}"})
        assert r.status_code == 200
        for bad in (expired, wrong_key, "not-a-jwt-at-all"):
            r = await http.get("/api/v1/clients", headers={"Authorization": f"Bearer {bad}"})
            assert r.status_code == 401
            r = await http.post(hb, json={"clientId": "x"}, headers={"Authorization": f"Bearer {bad}"})
            assert r.status_code == 401
        # Tokens in query strings (where browsers put them for WebSockets) and in bodies.
        r = await http.get(f"/api/v1/clients?token={viewer}")
        assert r.status_code == 401
        r = await http.get(f"/no/such/path?token={viewer}")
        assert r.status_code == 404
        r = await http.post(hb, content=json.dumps({"token": service, "clientId": 5.5}),
                            headers={"Authorization": f"Bearer {service}"})
        assert r.status_code == 422
        r = await http.get("/metrics", headers={"Authorization": f"Bearer {viewer}"})
        assert r.status_code == 200
    assert rpad.ws_url
    await exercise_websocket(rpad.ws_url, viewer, wrong_key)
    await rpad.reload()
    return [service, viewer, expired, wrong_key, "not-a-jwt-at-all"]


async def exercise_websocket(ws_url: str, good: str, bad: str) -> None:
    """A WebSocket client with a good ?token=, one with a bad ?token=, one with the token in the
    first message."""
    async with ws_connect(ws_url, token=good) as ws:
        await ws.subscribe("client_status")
    async with ws_connect(ws_url, token=bad, established=False) as ws:
        assert await ws.close_code() == 4001
    async with ws_connect(ws_url, auth_message=good) as ws:
        await ws.subscribe("client_status")


def assert_no_secrets(text: str, tokens: list[str]) -> None:
    for token in tokens:
        assert token not in text
        for part in token.split(".")[1:]:  # payload and signature on their own
            assert part not in text
    assert SECRET.decode() not in text
    assert "eyJ" not in text  # no JWT (header or payload) at all


async def test_events_worth_knowing_and_no_token_in_text_logs(
    tmp_path: Path, listener: NotifyListener
) -> None:
    cfg = write_config(tmp_path, "text")
    with trio.fail_after(PROCESS_TIMEOUT_SECONDS):
        async with ServeProcess(cfg, tmp_path, listener) as rpad:
            tokens = await exercise(rpad)
            assert await rpad.stop() == 0
    text = rpad.stderr()
    assert_no_secrets(text, tokens)
    assert_no_secrets(rpad.stdout, tokens)
    lines = text.splitlines()

    def one(pattern: str) -> str:
        found = [ln for ln in lines if re.search(pattern, ln)]
        assert len(found) == 1, (pattern, found)
        return found[0]

    prefix = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARNING|ERROR) +[\w.-]+: "
    assert all(re.match(prefix, ln) or ln.startswith((" ", "Traceback")) for ln in lines)
    assert "INFO" in one(r"rpad \S+ starting \(epoch \w+, config .*rpad\.toml\)")
    # Where it listens is said once, on stdout (`rpad serve`'s banner), never in the log too
    # (Hypercorn's "Running on" line included).
    assert rpad.http_url not in text and "Running on" not in text
    assert rpad.stdout.count(rpad.http_url) == 1, rpad.stdout
    ws_failures = [ln for ln in lines
                   if re.search(r"WebSocket authentication failed from 127\.0\.0\.1", ln)]
    assert len(ws_failures) == 1 and "WARNING" in ws_failures[0]
    one(r"client robot-1 is online")
    one(r"client robot-1 is offline \(agent_shutdown\)")
    failures = [ln for ln in lines if re.search(r"authentication failed from 127\.0\.0\.1", ln)]
    assert len(failures) >= 7 and all("WARNING" in ln for ln in failures)
    assert any("expired" in ln for ln in failures)
    assert any("signature" in ln for ln in failures)
    one(r"configuration reloaded from")
    one(r"shutting down")
    assert "rpad stopped" in lines[-1]


async def test_json_logs_under_journald(tmp_path: Path, listener: NotifyListener) -> None:
    """format = "json" and stderr connected to "the journal" ($JOURNAL_STREAM names the very
    file rpad's stderr is): every line is <priority>{json}."""
    cfg = write_config(tmp_path, "json")
    stderr_path = tmp_path / "journal"
    stderr_path.touch()
    st = os.stat(stderr_path)
    env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
    with trio.fail_after(PROCESS_TIMEOUT_SECONDS):
        async with ServeProcess(cfg, tmp_path, listener, env=env,
                                stderr_path=stderr_path) as rpad:
            tokens = await exercise(rpad)
            await rpad.signal_and_wait(signal.SIGTERM, "STOPPING")
            assert await rpad.proc.wait() == 0  # type: ignore[union-attr]
    text = rpad.stderr()
    assert_no_secrets(text, tokens)
    entries = []
    for ln in text.splitlines():
        m = re.fullmatch(r"<([2-7])>(\{.*\})", ln)
        assert m, ln
        entry = json.loads(m.group(2))
        expected = {"debug": "7", "info": "6", "warning": "4", "error": "3", "critical": "2"}
        assert m.group(1) == expected[entry["level"]], ln
        entries.append(entry)
    messages = [e["message"] for e in entries]
    assert any(m.startswith("authentication failed from 127.0.0.1") for m in messages)
    assert any(m == "client robot-1 is online (heartbeat)" or m.startswith("client robot-1 is online")
               for m in messages)
    assert messages[-1] == "rpad stopped"
