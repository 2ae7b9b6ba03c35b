"""One origin behind a reverse proxy: a real nginx on loopback runs config/nginx.conf (with a
throwaway self-signed certificate) in front of the real daemon; the dashboard, its hub URL, a
heartbeat and a WebSocket subscription all go through it over TLS.

The site file is used as shipped, with only the deployment-specific values replaced: ports,
certificate paths and the access log path (each replacement must match exactly, so the test
fails if the file changes shape).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from trio_websocket import WebSocketConnection, wrap_client_stream

from rpad import config as config_mod

from .conftest import config_dict, start_daemon, tool_fixture
from .console_helpers import RUN_AS, commands_on, open_session, run, text, wait_view
from .wsclient import Ws

REPO = Path(__file__).resolve().parent.parent
NGINX_START_TIMEOUT_SECONDS = 20

nginx = tool_fixture("nginx")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def self_signed(tmp: Path) -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1 and rpad.example.com."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rpad test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("rpad.example.com")]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


def replace_exactly(text: str, old: str, new: str, count: int) -> str:
    assert text.count(old) == count, f"config/nginx.conf: expected {count} x {old!r}"
    return text.replace(old, new)


def site_config(tmp: Path, *, tls_port: int, plain_port: int, http_port: int, ws_port: int,
                cert: Path, key: Path) -> Path:
    text = (REPO / "config" / "nginx.conf").read_text()
    text = replace_exactly(text, "listen 443 ssl http2;", f"listen 127.0.0.1:{tls_port} ssl http2;", 1)
    text = replace_exactly(text, "listen 80;", f"listen 127.0.0.1:{plain_port};", 1)
    # No IPv6 on every test machine: drop the [::] listeners.
    text = replace_exactly(text, "    listen [::]:443 ssl http2;\n", "", 1)
    text = replace_exactly(text, "    listen [::]:80;\n", "", 1)
    text = replace_exactly(text, "server 127.0.0.1:8000;", f"server 127.0.0.1:{http_port};", 1)
    text = replace_exactly(text, "server 127.0.0.1:8001;", f"server 127.0.0.1:{ws_port};", 1)
    text = replace_exactly(text, "/etc/ssl/certs/rpad.example.com.pem", str(cert), 1)
    text = replace_exactly(text, "/etc/ssl/private/rpad.example.com.key", str(key), 1)
    text = replace_exactly(text, "/var/log/nginx/rpad.access.log", str(tmp / "access.log"), 2)
    site = tmp / "rpad-site.conf"
    site.write_text(text)
    user = "user root root;\n" if os.geteuid() == 0 else ""  # else: workers run as we do
    main = tmp / "nginx.conf"
    main.write_text(
        f"{user}worker_processes 1;\ndaemon off;\npid {tmp}/nginx.pid;\n"
        f"error_log {tmp}/error.log info;\n"
        "events { worker_connections 256; }\n"
        "http {\n"
        f"    client_body_temp_path {tmp}/client_body;\n    proxy_temp_path {tmp}/proxy;\n"
        f"    fastcgi_temp_path {tmp}/fastcgi;\n    uwsgi_temp_path {tmp}/uwsgi;\n"
        f"    scgi_temp_path {tmp}/scgi;\n"
        f"    access_log {tmp}/access.log;\n"
        f"    include {site};\n"
        "}\n")
    return main


@asynccontextmanager
async def running_nginx(nginx: str, tmp: Path, conf: Path, port: int) -> AsyncIterator[None]:
    check = await trio.run_process(
        [nginx, "-t", "-p", str(tmp), "-c", str(conf), "-e", str(tmp / "error.log")],
        capture_stdout=True, capture_stderr=True, check=False)
    assert check.returncode == 0, check.stderr.decode()
    proc = await trio.lowlevel.open_process(
        [nginx, "-p", str(tmp), "-c", str(conf), "-e", str(tmp / "error.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with trio.fail_after(NGINX_START_TIMEOUT_SECONDS):
            while True:  # until it accepts connections (an external process: nothing to await)
                try:
                    stream = await trio.open_tcp_stream("127.0.0.1", port)
                except OSError:
                    assert proc.returncode is None, (tmp / "error.log").read_text()
                    await trio.sleep(0.05)
                    continue
                await stream.aclose()
                break
        yield
    finally:
        proc.terminate()
        with trio.CancelScope(shield=True), trio.move_on_after(10):
            await proc.wait()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@asynccontextmanager
async def wss_connect(url: str, ctx: ssl.SSLContext, origin: str) -> AsyncIterator[Ws]:
    """A WebSocket over TLS on a stream this helper owns and closes."""
    parts = urlsplit(url)
    assert parts.hostname and parts.port
    tcp = await trio.open_tcp_stream(parts.hostname, parts.port)
    stream = trio.SSLStream(tcp, ctx, server_hostname=parts.hostname)
    resource = parts.path + (f"?{parts.query}" if parts.query else "")
    try:
        async with trio.open_nursery() as nursery:
            conn: WebSocketConnection = await wrap_client_stream(
                nursery, stream, f"{parts.hostname}:{parts.port}", resource,
                extra_headers=[(b"Origin", origin.encode())])
            try:
                ws = Ws(conn)
                ws.established = (await ws.expect("CONNECTION_ESTABLISHED"))["data"]
                yield ws
            finally:
                with trio.move_on_after(5):
                    await conn.aclose()
                nursery.cancel_scope.cancel()
    finally:
        with trio.move_on_after(5):
            await stream.aclose()


async def test_api_dashboard_and_hub_through_nginx_on_one_origin(
    nursery: trio.Nursery, tmp_path: Path, nginx: str
) -> None:
    tls_port, plain_port = free_port(), free_port()
    origin = f"https://127.0.0.1:{tls_port}"
    cfg = config_mod.from_dict(config_dict(
        tmp_path / "state",
        websocket={"public_url": f"wss://127.0.0.1:{tls_port}/ws", "allowed_origins": [origin]},
        metrics={"public": False}))
    cert, key = self_signed(tmp_path)
    ctx = ssl.create_default_context(cafile=str(cert))

    with trio.fail_after(60):
        d = await start_daemon(nursery, cfg)
        assert d.ws_url is not None
        http_port = urlsplit(d.http_url).port
        ws_port = urlsplit(d.ws_url).port
        assert http_port and ws_port
        conf = site_config(tmp_path, tls_port=tls_port, plain_port=plain_port,
                           http_port=http_port, ws_port=ws_port, cert=cert, key=key)
        viewer = d.token("viewer", "ops")
        service = d.token("service", "gateway")
        async with running_nginx(nginx, tmp_path, conf, tls_port), \
                httpx.AsyncClient(base_url=origin, verify=ctx, timeout=10) as https:
            # The dashboard page and where it finds the hub: this same origin's /ws.
            page = await https.get("/")
            assert page.status_code == 200
            assert page.headers["content-type"].startswith("text/html")
            assert page.headers["strict-transport-security"] == "max-age=31536000"
            dash = (await https.get("/api/v1/dashboard-config")).json()
            assert dash["wsUrl"] == f"wss://127.0.0.1:{tls_port}/ws"

            # A dashboard subscribes through nginx (TLS, Upgrade), with a browser's Origin and
            # its token in ?token=, as browsers do.
            async with wss_connect(f"{dash['wsUrl']}?token={viewer}", ctx, origin) as ws:
                assert ws.established["userId"] == "ops"
                await ws.subscribe("client_status")
                # A heartbeat through nginx reaches the subscriber through nginx.
                r = await https.post("/api/v1/client/heartbeat",
                                     json={"clientId": "robot-1", "version": "2.0"},
                                     headers={"Authorization": f"Bearer {service}"})
                assert r.status_code == 200, r.text
                assert r.json()["status"] == "online"
                msg = await ws.expect("CLIENT_CONNECTED", skip=("HEARTBEAT_RECEIVED",))
                assert msg["topic"] == "client_status"
                assert msg["data"]["clientId"] == "robot-1" and msg["data"]["version"] == "2.0"
                await ws.send(action="ping")
                assert (await ws.expect("PONG", skip=("HEARTBEAT_RECEIVED",)))["data"]["serverTime"]

            # The rest of the API, errors included, as rpad answers them.
            r = await https.get("/api/v1/clients", headers={"Authorization": f"Bearer {viewer}"})
            assert r.status_code == 200 and r.json()["total"] == 1
            r = await https.post("/api/v1/client/heartbeat", content=b"{",
                                 headers={"Authorization": f"Bearer {service}"})
            assert r.status_code == 400 and r.json()["error"] == "invalid_json"
            r = await https.post("/api/v1/client/heartbeat",
                                 json={"clientId": "big", "metadata": {"x": "y" * 70_000}},
                                 headers={"Authorization": f"Bearer {service}"})
            assert r.status_code == 413 and r.json()["error"] == "body_too_large"
            r = await https.get("/metrics", headers={"Authorization": f"Bearer {viewer}"})
            assert r.status_code == 200 and "rpad_websocket_connections" in r.text
            health = await https.get("/api/v1/health")
            assert health.json()["status"] == "ok"

            # An agent behind the proxy (TLS): its control channel goes through nginx too,
            # found from --url alone, and the console reaches it.
            token_file = tmp_path / "edge-1.token"
            token_file.write_text(d.token("agent", "edge-1", ttl=None))
            agent = await trio.lowlevel.open_process(
                [sys.executable, "-m", "rpad.client", "agent", "--url", origin,
                 "--client-id", "edge-1", "--token-file", str(token_file), "--interval", "2",
                 "--allow-commands", *RUN_AS],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                env={**os.environ, "SSL_CERT_FILE": str(cert)})
            try:
                view = await wait_view(d, "edge-1", commands_on)
                assert view["capabilities"]["commands"] is True
                admin = d.token("admin", "root")
                async with wss_connect(f"{dash['wsUrl']}?token={admin}", ctx, origin) as ws:
                    sid = (await open_session(ws, "edge-1"))["sessionId"]
                    _, chunks, done = await run(ws, sid, "echo through nginx")
                    assert text(chunks) == "through nginx\n" and done["status"] == "success"
                r = await d.request("GET", "/api/v1/agents")
                assert [a["clientId"] for a in r.json()["agents"]] == ["edge-1"]
            finally:
                agent.kill()
                await agent.wait()

            # Plain HTTP is redirected to HTTPS.
            async with httpx.AsyncClient(timeout=10) as plain:
                r = await plain.get(f"http://127.0.0.1:{plain_port}/api/v1/health")
                assert r.status_code == 301
                assert r.headers["location"] == "https://127.0.0.1/api/v1/health"

        access_log = (tmp_path / "access.log").read_text()
        assert '"GET /ws HTTP/1.1" 101' in access_log
        assert '"GET /api/v1/agent/ws HTTP/1.1" 101' in access_log
        assert viewer not in access_log and "token=" not in access_log
        await d.http.aclose()
        d.daemon.stop()


def test_production_config_matches_the_proxy_and_the_units() -> None:
    """config/rpad.toml listens where config/nginx.conf proxies to, is valid, and its hub URL
    is the proxy's same-origin /ws."""
    cfg = config_mod.load(REPO / "config" / "rpad.toml")
    nginx = (REPO / "config" / "nginx.conf").read_text()
    assert f"server {cfg.http.listen};" in nginx.split("upstream rpad_http")[1].split("}")[0]
    assert f"server {cfg.websocket.listen};" in nginx.split("upstream rpad_ws")[1].split("}")[0]
    assert cfg.websocket.public_url == "wss://rpad.example.com/ws"
    assert "server_name rpad.example.com;" in nginx
    assert cfg.websocket.allowed_origins == ["https://rpad.example.com"]
    assert cfg.state_dir == "/var/lib/rpad"  # StateDirectory=rpad in systemd/rpad.service
    unit = (REPO / "systemd" / "rpad.service").read_text()
    assert "StateDirectory=rpad\n" in unit and "--config /etc/rpad/rpad.toml" in unit
