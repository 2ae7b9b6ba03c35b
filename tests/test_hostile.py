"""Hostile clients against the real daemon: cross-site WebSocket hijacking, JWT attacks, brute
force, SQL metacharacters and odd Unicode, path traversal, connection and message floods, and
secrets leaking into logs or error bodies. Each test states the attack and what rpad must do.
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import jwt
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from trio_websocket import ConnectionClosed, ConnectionRejected, HandshakeError

from rpad import config as config_mod
from rpad.config import Config

from .conftest import Running, config_dict
from .test_fuzz_http import serve
from .wsclient import StartDaemon, Ws, daemons, ws_connect

__all__ = ["daemons"]  # the fixture

TIMEOUT = 60


# -- cross-site WebSocket hijacking ------------------------------------------------------------

async def test_cross_site_websocket_hijacking_is_closed_1008_before_any_data(
        daemons: StartDaemon, make_config: Callable[..., Config]) -> None:
    """A page on another site opens the hub with a stolen or ambient token: with
    ``websocket.allowed_origins`` set, the handshake is closed with 1008 before anything (not
    even CONNECTION_ESTABLISHED) is sent, whatever the token."""
    with trio.fail_after(TIMEOUT):
        r = await daemons(make_config(websocket={"allowed_origins": ["https://ops.example.com"]}))
        token = r.token("admin", "operator")
        for origin in ("https://evil.example", "null", "https://ops.example.com.evil.net",
                       "http://ops.example.com", "https://ops.example.com:8443",
                       "https://OPS.example.com@evil.example"):
            async with ws_connect(r.ws_url, token=token, origin=origin, established=False) as ws:
                got, code = await ws.messages_until_closed()
                assert (got, code) == ([], 1008), origin
        async with ws_connect(r.ws_url, token=token, origin="https://ops.example.com") as ws:
            assert ws.established["userId"] == "operator"
        async with ws_connect(r.ws_url, token=token) as ws:  # not a browser: no Origin
            assert ws.established["userId"] == "operator"


# -- JWT attacks -------------------------------------------------------------------------------

async def _counting_listener(nursery: trio.Nursery, hits: list[str]) -> int:
    """A local HTTP listener that records every connection (nothing should ever come)."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")

    async def handle(stream: trio.SocketStream) -> None:
        hits.append("connection")
        await stream.aclose()

    nursery.start_soon(trio.serve_listeners, handle, listeners)
    port: int = listeners[0].socket.getsockname()[1]
    return port


async def test_jwt_attacks_are_refused_on_http_and_websocket(
        nursery: trio.Nursery, daemons: StartDaemon, make_config: Callable[..., Config],
        tmp_path: Path) -> None:
    issuer_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    attacker_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = issuer_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "issuer.pem").write_bytes(public_pem)
    hits: list[str] = []
    port = await _counting_listener(nursery, hits)
    evil_url = f"http://127.0.0.1:{port}/jwks.json"
    now = int(time.time())
    good = {"sub": "alice", "role": "admin", "iss": "https://login.example", "aud": "rpad",
            "iat": now, "exp": now + 600}

    def rs256(claims: dict[str, Any], key: Any = issuer_key, **headers: Any) -> str:
        return jwt.encode(claims, key, algorithm="RS256", headers=headers or None)

    attacker_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(attacker_key.public_key()))
    attacks = {
        "alg none": jwt.encode(good, "", algorithm="none"),
        "alg none, signature kept": (jwt.encode(good, "", algorithm="none")
                                     + rs256(good).rsplit(".", 1)[1]),
        "alg NONE": _forge_header(rs256(good), {"alg": "NONE", "typ": "JWT"}),
        "HS256 signed with the public key": _hmac_with_key_bytes(good, public_pem),
        "attacker's key, kid pointing at a file": rs256(good, attacker_key,
                                                         kid="../../../../etc/passwd"),
        "attacker's key, kid pointing at a URL": rs256(good, attacker_key, kid=evil_url),
        "attacker's key, jku": rs256(good, attacker_key, jku=evil_url),
        "attacker's key, x5u": rs256(good, attacker_key, x5u=evil_url),
        "attacker's key embedded as jwk": rs256(good, attacker_key, jwk=attacker_jwk),
        "kid with SQL": rs256(good, attacker_key, kid="' OR '1'='1"),
        "another audience": rs256({**good, "aud": "grafana"}),
        "another issuer": rs256({**good, "iss": "https://evil.example"}),
        "no audience": rs256({k: v for k, v in good.items() if k != "aud"}),
        "expired": rs256({**good, "iat": now - 7200, "exp": now - 3600}),
        "payload swapped under a valid signature": _swap_payload(
            rs256({**good, "role": "viewer"}), {**good, "role": "admin"}),
        "signature stripped": rs256(good).rsplit(".", 1)[0] + ".",
    }
    with trio.fail_after(TIMEOUT):
        r = await daemons(make_config(auth={
            "public_key_file": str(tmp_path / "issuer.pem"), "issuer": "https://login.example",
            "audience": "rpad", "max_failures_per_minute": 1000}))
        ok = await r.request("GET", "/api/v1/clients", token=rs256(good))
        assert ok.status_code == 200, ok.text  # the real issuer's token works
        async with ws_connect(r.ws_url, token=rs256(good)) as ws:
            assert ws.established["role"] == "admin"
        for name, token in attacks.items():
            resp = await r.request("GET", "/api/v1/clients", token=token)
            assert resp.status_code == 401, (name, resp.text)
            assert resp.json()["error"] in ("unauthorized", "token_expired"), name
            async with ws_connect(r.ws_url, token=token, established=False) as ws:
                got, code = await ws.messages_until_closed()
                assert code == 4001 and got == [], (name, got, code)
            async with ws_connect(r.ws_url, established=False) as ws:
                await ws.send(action="auth", token=token)
                assert await ws.close_code() == 4001, name
        # Nothing was ever fetched because a token said so.
        await trio.sleep(0.1)
        assert hits == []


def _b64(data: bytes) -> str:
    import base64
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _forge_header(token: str, header: dict[str, Any]) -> str:
    _, payload, sig = token.split(".")
    return f"{_b64(json.dumps(header).encode())}.{payload}.{sig}"


def _swap_payload(token: str, claims: dict[str, Any]) -> str:
    header, _, sig = token.split(".")
    return f"{header}.{_b64(json.dumps(claims).encode())}.{sig}"


def _hmac_with_key_bytes(claims: dict[str, Any], key: bytes) -> str:
    """The classic confusion attack: HS256 with the server's public key as the HMAC secret
    (built by hand: pyjwt itself refuses to use a PEM key as an HMAC secret)."""
    import hashlib
    import hmac
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = _b64(json.dumps(claims).encode())
    sig = hmac.new(key, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64(sig)}"


# -- brute force -------------------------------------------------------------------------------

async def test_repeated_auth_failures_from_one_address_get_429(
        daemons: StartDaemon, make_config: Callable[..., Config]) -> None:
    """Guessing tokens from one address: after ``auth.max_failures_per_minute`` failures, every
    request from that address is 429 with Retry-After (a right guess too), and its WebSocket
    handshakes are refused; another address is not affected."""
    with trio.fail_after(TIMEOUT):
        r = await daemons(make_config(auth={"max_failures_per_minute": 5}))
        for i in range(5):
            resp = await r.request("GET", "/api/v1/clients", token=f"guess-{i}")
            assert resp.status_code == 401
        for token in ("guess-6", r.token("admin", "root")):
            resp = await r.request("GET", "/api/v1/clients", token=token)
            assert resp.status_code == 429, resp.text
            assert resp.json()["error"] == "too_many_auth_failures"
            assert 1 <= int(resp.headers["Retry-After"]) <= 60
        resp = await r.request("POST", "/api/v1/client/heartbeat", token="guess-7",
                               json={"clientId": "a"})
        assert resp.status_code == 429
        async with ws_connect(r.ws_url, token=r.token("admin", "root"), established=False) as ws:
            assert await ws.close_code() == 4001
        transport = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
        async with httpx.AsyncClient(transport=transport) as other:
            resp = await other.get(r.http_url + "/api/v1/clients",
                                   headers=r.headers("viewer", "someone-else"))
            assert resp.status_code == 200, resp.text


# -- SQL metacharacters and odd Unicode ----------------------------------------------------------

ODD = [
    "Robert'); DROP TABLE clients;--",
    "' OR '1'='1' /* \" ; -- ",
    "%s %d %n {0} ${x} `id` $(id)",
    "\\'; \\\"; \\\\; \\x00",
    "🤖" * 64,  # 4-byte characters at the length limit of a name
    "e\u0301\u0301\u0301 zalgo: Z\u0351\u0364\u036b\u0350a\u0344\u035fl\u0346go",
    "\u202eevil\u202c rtl override, \u200bzero\u200dwidth, \ufeffbom, \u2028line sep",
    "日本語のテキスト、中文、한국어, עברית, العربية",
    "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466 family",
    "tab\tnew\nline\rcarriage",
]


async def test_sql_metacharacters_and_odd_unicode_are_stored_and_returned_intact(
        daemons: StartDaemon, tmp_path: Path) -> None:
    cfg = config_mod.from_dict(config_dict(tmp_path / "state",
                                           presence={"min_interval_seconds": 0}))
    with trio.fail_after(TIMEOUT):
        r = await daemons(cfg)
        expected: dict[str, dict[str, Any]] = {}
        async with ws_connect(r.ws_url, token=r.token("viewer", "dash", topics=["task.*"])) as ws:
            await ws.subscribe("client_status")
            await ws.subscribe("task.odd")
            for i, text in enumerate(ODD):
                cid = f"odd-{i}"
                short = text[:64]
                tags = [t for t in (text[:64], "x--1;") if "\t" not in t and "\n" not in t
                        and "\r" not in t]
                resp = await r.request("POST", "/api/v1/clients", json={
                    "clientId": cid, "name": text[:128], "tags": tags,
                    "metadata": {text[:40]: text, "nested": [text, {"k": text}]}})
                assert resp.status_code == 201, (text, resp.text)
                resp = await r.heartbeat(cid, version=short, osType=text[:64],
                                         metadata={text[:40]: text})
                assert resp.status_code == 200, (text, resp.text)
                expected[cid] = {"name": text[:128], "tags": tags, "version": short,
                                 "osType": text[:64], "metadata": {text[:40]: text}}
                up = await ws.expect("CLIENT_CONNECTED", skip=("CLIENT_STATUS_UPDATE",))
                assert up["data"]["version"] == short and up["data"]["name"] == text[:128]
                resp = await r.request("POST", "/api/v1/publish", role="service", json={
                    "topic": "task.odd", "type": "TASK_UPDATE", "data": {"text": text}})
                assert resp.status_code in (200, 202), resp.text
                got = await ws.expect("TASK_UPDATE", skip=("CLIENT_STATUS_UPDATE",))
                assert got["data"] == {"text": text}
        await _check_intact(r, expected)
        await r.http.aclose()
        r.daemon.stop()
        while r.daemon.hub is not None and r.daemon.hub.accepting:
            await trio.sleep(0.01)
        again = await daemons(cfg)  # read back from SQLite
        await _check_intact(again, expected)
        # A NUL is refused by name rather than stored truncated.
        resp = await again.request("POST", "/api/v1/clients",
                                   json={"clientId": "nul", "name": "a\u0000b"})
        assert resp.status_code == 422 and resp.json()["details"][0]["field"] == "name"


async def _check_intact(r: Running, expected: dict[str, dict[str, Any]]) -> None:
    listed = (await r.request("GET", "/api/v1/clients?limit=10000")).json()
    assert listed["total"] == len(expected)
    for cid, want in expected.items():
        view = (await r.request("GET", f"/api/v1/clients/{cid}")).json()
        for key, value in want.items():
            assert view[key] == value, (cid, key, view[key], value)
    for text in ODD[:3]:  # search with metacharacters is a substring match, nothing more
        resp = await r.request("GET", "/api/v1/clients", params={"q": text[:20]})
        assert resp.status_code == 200


# -- path traversal --------------------------------------------------------------------------

async def test_static_path_traversal_is_refused(
        daemons: StartDaemon, make_config: Callable[..., Config]) -> None:
    with trio.fail_after(TIMEOUT):
        r = await daemons(make_config())
        ok = await r.request("GET", "/static/dashboard.js", role=None)
        assert ok.status_code == 200
        secret = r.daemon.config.secret_path.read_text().strip()
        for path in ("/static/../../../../etc/passwd", "/static/..%2f..%2f..%2fetc%2fpasswd",
                     "/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd", "/static/%252e%252e/etc/passwd",
                     "/static//etc/passwd", "/static/..\\..\\etc\\passwd",
                     "/static/dashboard.js%00.png", "/static/./dashboard.js/../../rpad/http.py",
                     "/static/" + quote(str(r.daemon.config.secret_path), safe=""),
                     "/static/%2Fetc%2Fpasswd", "/static/....//....//etc/passwd",
                     "/static/__init__.py", "/static/../http.py", "/static/.hidden",
                     "/..%2f..%2fetc/passwd", "/%2e%2e/%2e%2e/etc/passwd"):
            resp = await r.http.get(r.http_url + path)
            assert resp.status_code in (404, 400), (path, resp.status_code)
            assert "root:" not in resp.text and "import" not in resp.text, path
            assert secret not in resp.text
            if resp.headers.get("content-type", "").startswith("application/json"):
                assert resp.json()["error"] in ("not_found", "bad_request")


# -- floods ---------------------------------------------------------------------------------

async def _event_arrives(r: Running, victim: Ws, client_id: str) -> float:
    """Seconds from a heartbeat to its HEARTBEAT_RECEIVED at a dashboard."""
    t0 = trio.current_time()
    resp = await r.heartbeat(client_id)
    assert resp.status_code == 200, resp.text
    while True:
        msg = await victim.recv()
        if msg["type"] == "HEARTBEAT_RECEIVED" and msg["data"]["clientId"] == client_id:
            return trio.current_time() - t0


async def test_a_connection_flood_is_limited_and_does_not_starve_others(
        daemons: StartDaemon, make_config: Callable[..., Config]) -> None:
    """One user opens 200 WebSocket connections at once, and another address 200 that send
    the handshake and never authenticate. From one address only 32 at a time may be
    handshaking or authenticating (websocket.max_connections_per_address): the other silent
    ones are refused at once with 429, and the 32 are closed 4001 at the auth timeout. The user
    keeps five connections; the rest are closed 4029 (or refused with 429 if ever 32 of them
    were authenticating at once). All along another dashboard gets its events and agents'
    heartbeats are answered."""
    with trio.fail_after(TIMEOUT):
        r = await daemons(make_config(websocket={"auth_timeout_seconds": 5},
                                      presence={"min_interval_seconds": 0}))
        greedy = r.token("viewer", "greedy")
        codes: list[int] = []
        refused: list[int] = []
        held = trio.Event()
        established = 0

        async def one() -> None:
            nonlocal established
            try:
                async with ws_connect(r.ws_url, token=greedy, established=False) as ws:
                    try:
                        first = json.loads(await ws.conn.get_message())
                    except ConnectionClosed as exc:
                        assert exc.reason is not None
                        codes.append(exc.reason.code)
                        return
                    assert first["type"] == "CONNECTION_ESTABLISHED", first
                    established += 1
                    await held.wait()
            except ConnectionRejected as exc:
                refused.append(exc.status_code)
            except (HandshakeError, trio.BrokenResourceError, ConnectionClosed):
                refused.append(0)  # refused before the handshake went out: a reset

        assert r.ws_url is not None
        port = int(r.ws_url.rsplit(":", 1)[1].split("/")[0])
        silent: list[trio.SocketStream] = []

        async def silent_one() -> None:
            # From an address of their own: their auth timeouts count as failed
            # authentications, and that address (only) ends up blocked.
            sock = trio.socket.socket()
            await sock.bind(("127.0.0.3", 0))
            await sock.connect(("127.0.0.1", port))
            s = trio.SocketStream(sock)
            silent.append(s)
            await s.send_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                             b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                             b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")

        async with ws_connect(r.ws_url, token=r.token("viewer", "victim")) as victim:
            await victim.subscribe("heartbeat")
            # The silent ones first, one after another: exactly 32 get in.
            for _ in range(200):
                await silent_one()
            async with trio.open_nursery() as flood:
                for _ in range(200):
                    flood.start_soon(one)
                # While the flood is on, the others are served.
                for i in range(5):
                    await _event_arrives(r, victim, f"agent-{i}")
                while len(codes) + len(refused) < 195:
                    await trio.sleep(0.05)
                # (They authenticate within microseconds of their handshake, so few if any are
                # ever pending together: the per-user limit is what stops them.)
                assert established == 5 and set(codes) <= {4029}, (established, set(codes))
                assert set(refused) <= {429, 0} and len(codes) + len(refused) == 195
                users = (await r.request("GET", "/api/v1/websocket/online-users")).json()["users"]
                assert {"userId": "greedy", "connections": 5} in users
                held.set()
            answers: list[bytes] = []
            with trio.fail_after(15):
                for s in silent:
                    data = b""
                    # Until EOF (a refusal), a reset, or the 4001 close frame.
                    while b"\x88" not in data or b"\x0f\xa1" not in data.split(b"\x88", 1)[1]:
                        try:
                            chunk = await s.receive_some()
                        except trio.BrokenResourceError:  # a reset after the refusal
                            break
                        if not chunk:
                            break
                        data += chunk
                    answers.append(data)
                    await s.aclose()
            # 32 got the handshake and then a 4001 close frame at the auth timeout; the others
            # a 429 at once.
            accepted = [a for a in answers if a.startswith(b"HTTP/1.1 101")]
            assert len(accepted) == 32
            for a in accepted:
                assert b"\x88" in a and a.split(b"\x88", 1)[1][1:3] == b"\x0f\xa1", a
            assert all(a.startswith(b"HTTP/1.1 429 Too Many Requests") for a in answers
                       if a not in accepted), {a[:40] for a in answers if a not in accepted}
            metrics = (await r.request("GET", "/metrics")).text
            assert 'rpad_listener_connections_refused_total{listener="websocket",' \
                   'reason="per_address"}' in metrics
            await _event_arrives(r, victim, "agent-after")


async def test_a_message_flood_is_limited_and_does_not_starve_others(
        daemons: StartDaemon, make_config: Callable[..., Config]) -> None:
    """A WebSocket client sending a message every millisecond gets ERROR rate_limited, its
    excess is dropped unanswered, and it is closed with 4029 if it keeps on; an agent beating
    every millisecond gets 429s. Other dashboards and agents are served all along."""
    with trio.fail_after(TIMEOUT):
        r = await daemons(make_config())
        async with ws_connect(r.ws_url, token=r.token("viewer", "victim")) as victim:
            await victim.subscribe("heartbeat")
            answers: dict[str, int] = {}
            close: list[int] = []

            async def flooder() -> None:
                async with ws_connect(r.ws_url, token=r.token("viewer", "flooder")) as ws:
                    async def read() -> None:
                        try:
                            while True:
                                msg = json.loads(await ws.conn.get_message())
                                key = msg["data"].get("code", msg["type"]) \
                                    if msg["type"] == "ERROR" else msg["type"]
                                answers[key] = answers.get(key, 0) + 1
                        except ConnectionClosed as exc:
                            assert exc.reason is not None
                            close.append(exc.reason.code)

                    async with trio.open_nursery() as inner:
                        inner.start_soon(read)
                        try:
                            while not close:
                                await ws.send(action="ping")
                                await trio.sleep(0.001)
                        except ConnectionClosed:
                            pass

            async def agent_flood() -> list[int]:
                statuses = []
                for _ in range(300):
                    resp = await r.heartbeat("hasty")
                    statuses.append(resp.status_code)
                    await trio.sleep(0.001)
                return statuses

            statuses: list[int] = []
            async with trio.open_nursery() as nursery:
                nursery.start_soon(flooder)

                async def run_agent() -> None:
                    statuses.extend(await agent_flood())

                nursery.start_soon(run_agent)
                for i in range(5):
                    await _event_arrives(r, victim, f"calm-{i}")
                    await trio.sleep(0.1)
            assert close == [4029]
            assert answers.get("rate_limited", 0) >= 1
            # Well under one answer per message sent: the excess was dropped unanswered.
            assert answers["PONG"] < 800, answers
            assert statuses.count(200) >= 1 and statuses.count(429) >= 250, statuses[:20]
            stats = (await r.request("GET", "/api/v1/websocket/stats")).json()
            assert stats["rateLimitedMessages"] >= 500


# -- a refused request keeps the connection ------------------------------------------------

async def test_a_refused_request_leaves_the_keep_alive_connection_usable(
        daemons: StartDaemon, make_config: Callable[..., Config]) -> None:
    """An agent with a bad token whose body arrives in a second TCP segment gets its 401, and
    its next request on the same connection is answered (it used to be dropped or stalled)."""
    with trio.fail_after(TIMEOUT):
        r = await daemons(make_config())
        port = int(r.http_url.rsplit(":", 1)[1])
        for path in ("/api/v1/client/heartbeat", "/api/v1/clients"):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            body = b'{"clientId": "a"}'
            await stream.send_all(
                f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer nope\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode())
            await trio.sleep(0.1)
            await stream.send_all(body)
            await trio.sleep(0.1)
            await stream.send_all(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            with trio.fail_after(5):
                while data.count(b"HTTP/1.1 ") < 2 or not data.endswith(b"}"):
                    chunk = await stream.receive_some()
                    assert chunk, (path, data)
                    data += chunk
            assert data.startswith(b"HTTP/1.1 401") and b'"status":"ok"' in data, data
            await stream.aclose()


# -- secrets in logs and error bodies ----------------------------------------------------------

def test_tokens_and_secrets_never_appear_in_logs_or_error_bodies(tmp_path: Path) -> None:
    """Every way a token can reach rpad — header, query string, WebSocket query, header, first
    message and refresh; valid, expired, revoked, badly signed — with debug logging on: no
    response body and no log line ever holds a token, a signature or the signing secret."""
    with contextlib.contextmanager(serve)(tmp_path, log_level="debug") as served:
        secret = (tmp_path / "secret").read_text().strip()
        auth = served.auth
        admin = auth.mint(role="admin", sub="ops", ttl_seconds=600)
        agent = auth.mint(role="agent", sub="robot", ttl_seconds=600)
        tokens = [admin, agent, served.tokens["expired"], served.tokens["wrong-key"],
                  served.tokens["alg-none"], auth.mint(role="viewer", sub="v", ttl_seconds=600)]
        bodies: list[str] = []
        with httpx.Client(base_url=served.http_url, timeout=10) as http:
            r = http.post("/api/v1/client/heartbeat", json={"clientId": "robot"},
                          headers={"Authorization": f"Bearer {agent}"})
            assert r.status_code == 200
            assert http.delete("/api/v1/clients/robot/tokens",
                               headers={"Authorization": f"Bearer {admin}"}).status_code == 200
            for token in tokens:
                for resp in (
                    http.get("/api/v1/clients", headers={"Authorization": f"Bearer {token}"}),
                    http.get(f"/api/v1/clients?token={token}"),
                    http.post("/api/v1/client/heartbeat", json={"clientId": "robot", "token": token},
                              headers={"Authorization": f"Bearer {token}x"}),
                    http.post("/api/v1/clients", json={"clientId": token + "!", "name": 5},
                              headers={"Authorization": f"Bearer {admin}"}),
                    http.post("/api/v1/websocket/notify", json={"title": token, "message": token},
                              headers={"Authorization": f"Token {token}"}),
                    http.get("/static/" + token),
                ):
                    assert resp.status_code < 500
                    bodies.append(resp.text)

        async def websockets() -> None:
            with trio.fail_after(TIMEOUT):
                for token in tokens:
                    ways: list[dict[str, Any]] = [
                        {"token": token}, {"header_token": token}, {"auth_message": token}]
                    for kwargs in ways:
                        async with ws_connect(served.ws_url, established=False, **kwargs) as ws:
                            if token in (admin, tokens[-1]):  # valid: established, then leave
                                bodies.append(json.dumps(await ws.recv()))
                                continue
                            got, code = await ws.messages_until_closed()
                            assert code in (4001, 4003)
                            bodies.extend(json.dumps(m) for m in got)
                async with ws_connect(served.ws_url, token=admin) as ws:
                    for token in tokens:
                        await ws.send(action="refresh", token=token + "garbage")
                        bodies.append(json.dumps(await ws.recv()))

        trio.run(websockets)
        served.process.send_signal(signal.SIGTERM)
        served.process.wait(timeout=15)
        log = served.log_text()
        assert "DEBUG" in log and "authentication failed" in log  # it did log, in detail
        for token in tokens:
            signature = token.rsplit(".", 1)[1]
            for where, text in (("log", log), *(("body", b) for b in bodies)):
                assert token not in text, (where, text[:300])
                if signature:
                    assert signature not in text, (where, text[:300])
            assert token.split(".")[1] not in log  # not even the claims
        assert secret not in log and all(secret not in b for b in bodies)
