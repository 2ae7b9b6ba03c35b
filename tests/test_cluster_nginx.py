"""config/nginx-cluster.conf as shipped (only ports, addresses, certificate and log paths
replaced) in front of two cluster nodes and a dead third one: requests and WebSocket
connections spread over the live nodes with no sticky sessions, a node that is down is
skipped, and one that answers 503 (Redis unreachable from it) is retried on the next node.
Also checks config/rpad-cluster.toml and config/redis-rpad.conf."""

from __future__ import annotations

import ssl
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import trio

from rpad import config as config_mod

from .conftest import config_dict, need_tool, start_daemon
from .redisproc import CuttableLink, RedisProcess, free_port, redis_server  # noqa: F401 - a fixture
from .test_nginx import replace_exactly, running_nginx, self_signed, wss_connect

REPO = Path(__file__).resolve().parent.parent


def cluster_site(tmp: Path, *, tls_port: int, plain_port: int, http_ports: list[int],
                 ws_ports: list[int], cert: Path, key: Path) -> Path:
    text = (REPO / "config" / "nginx-cluster.conf").read_text()
    text = replace_exactly(text, "listen 443 ssl http2;", f"listen 127.0.0.1:{tls_port} ssl http2;", 1)
    text = replace_exactly(text, "listen 80;", f"listen 127.0.0.1:{plain_port};", 1)
    text = replace_exactly(text, "    listen [::]:443 ssl http2;\n", "", 1)
    text = replace_exactly(text, "    listen [::]:80;\n", "", 1)
    for i, (h, w) in enumerate(zip(http_ports, ws_ports, strict=True)):
        text = replace_exactly(text, f"server 10.0.0.1{i + 1}:8000 ", f"server 127.0.0.1:{h} ", 1)
        text = replace_exactly(text, f"server 10.0.0.1{i + 1}:8001 ", f"server 127.0.0.1:{w} ", 1)
    text = replace_exactly(text, "/etc/ssl/certs/rpad.example.com.pem", str(cert), 1)
    text = replace_exactly(text, "/etc/ssl/private/rpad.example.com.key", str(key), 1)
    text = replace_exactly(text, "/var/log/nginx/rpad.access.log", str(tmp / "access.log"), 2)
    site = tmp / "rpad-site.conf"
    site.write_text(text)
    main = tmp / "nginx.conf"
    main.write_text(
        f"user root root;\nworker_processes 1;\ndaemon off;\npid {tmp}/nginx.pid;\n"
        f"error_log {tmp}/error.log info;\nevents {{ worker_connections 256; }}\nhttp {{\n"
        f"    client_body_temp_path {tmp}/client_body;\n    proxy_temp_path {tmp}/proxy;\n"
        f"    fastcgi_temp_path {tmp}/fastcgi;\n    uwsgi_temp_path {tmp}/uwsgi;\n"
        f"    scgi_temp_path {tmp}/scgi;\n    include {site};\n}}\n")
    return main


async def test_nginx_spreads_the_cluster_and_retries_a_503_elsewhere(
        nursery: trio.Nursery, tmp_path: Path, redis_server: RedisProcess) -> None:  # noqa: F811
    nginx = need_tool("nginx")
    tls_port, plain_port = free_port(), free_port()
    origin = f"https://127.0.0.1:{tls_port}"
    secret = tmp_path / "jwt.secret"
    secret.write_text("nginx-cluster-secret-0123456789abcdef")
    cert, key = self_signed(tmp_path)
    ctx = ssl.create_default_context(cafile=str(cert))
    nodes = []
    # Node a reaches Redis through a link the test can cut.
    link = CuttableLink(redis_server.port)
    link.start()
    with trio.fail_after(60):
        for name, url in (("a", link.url), ("b", redis_server.url)):
            cfg = config_mod.from_dict(config_dict(
                tmp_path / name, auth={"secret_file": str(secret)},
                http={"trusted_proxies": ["127.0.0.1"]},
                websocket={"allowed_origins": [origin]},
                cluster={"backend": "redis", "redis_url": url, "node_id": name}))
            nodes.append(await start_daemon(nursery, cfg))
        http_ports = [urlsplit(n.http_url).port or 0 for n in nodes] + [free_port()]
        ws_ports = [urlsplit(n.ws_url or "").port or 0 for n in nodes] + [free_port()]
        conf = cluster_site(tmp_path, tls_port=tls_port, plain_port=plain_port,
                            http_ports=http_ports, ws_ports=ws_ports, cert=cert, key=key)
        service = nodes[0].token("service", "gateway")
        admin = nodes[0].token("admin", "ops")
        auth = {"Authorization": f"Bearer {service}"}
        async with running_nginx(nginx, tmp_path, conf, tls_port), \
                httpx.AsyncClient(base_url=origin, verify=ctx, timeout=10) as https:
            # Several dashboards through nginx land on different nodes; all see every change.
            async with wss_connect(f"wss://127.0.0.1:{tls_port}/ws?token={admin}", ctx,
                                   origin) as w1, \
                    wss_connect(f"wss://127.0.0.1:{tls_port}/ws?token={admin}", ctx,
                                origin) as w2:
                for ws in (w1, w2):
                    await ws.subscribe("client_status")
                for i in range(6):  # the dead third node is skipped
                    r = await https.post("/api/v1/client/heartbeat", headers=auth,
                                         json={"clientId": f"robot-{i}"})
                    assert r.status_code == 200, r.text
                for ws in (w1, w2):
                    got = [(await ws.expect("CLIENT_CONNECTED", skip=("HEARTBEAT_RECEIVED",)))
                           ["data"]["clientId"] for _ in range(6)]
                    assert got == [f"robot-{i}" for i in range(6)]
                conns = (await https.get("/api/v1/websocket/connections",
                                         headers={"Authorization": f"Bearer {admin}"})).json()
                assert sorted(c["node"] for c in conns["connections"]) == ["a", "b"]
            # Node a loses Redis: it answers 503, and nginx retries those on node b.
            await trio.to_thread.run_sync(link.cut_now)
            r = await nodes[0].http.post(nodes[0].http_url + "/api/v1/client/heartbeat",
                                         headers=auth, json={"clientId": "robot-0"})
            assert r.status_code == 503, r.text
            for i in range(4):
                r = await https.post("/api/v1/client/heartbeat", headers=auth,
                                     json={"clientId": f"robot-{i}"})
                assert r.status_code == 200, r.text
        access = (tmp_path / "access.log").read_text()
        assert f"127.0.0.1:{http_ports[0]}" in access and f"127.0.0.1:{http_ports[1]}" in access
        for n in nodes:
            await n.http.aclose()
            n.daemon.stop()
    link.close()


def test_cluster_config_and_redis_snippet_match_what_rpad_checks() -> None:
    cfg = config_mod.load(REPO / "config" / "rpad-cluster.toml")
    assert cfg.cluster.backend == "redis" and cfg.http.reuse_port and cfg.websocket.reuse_port
    assert cfg.cluster.durability == "strict"
    snippet = (REPO / "config" / "redis-rpad.conf").read_text().splitlines()
    settings = dict(line.split(None, 1) for line in snippet if line and not line.startswith("#"))
    assert settings["appendonly"] == "yes" and settings["appendfsync"] == "always"
    assert settings["maxmemory-policy"] == "noeviction"
