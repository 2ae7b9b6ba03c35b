"""Slow requests and idle connections are bounded on both of the daemon's listeners (issue 16,
point 1): the real daemon, raw sockets from several loopback addresses, real dashboards and
agents' heartbeats, and the fake clock where time matters. (The gate's mechanics in detail:
tests/test_listeners.py.)"""

from __future__ import annotations

import resource
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from rpad import config as config_mod
from rpad.config import Config, ConfigError
from rpad.listeners import SPARE_FILE_DESCRIPTORS, ensure_file_limit

from .conftest import Running, config_dict, fake_wall_clock
from .test_listeners import WS_HANDSHAKE, Connect, connect, read_until_closed
from .wsclient import StartDaemon, daemons, fake_time, ws_connect

__all__ = ["connect", "daemons"]  # the fixtures

TIMEOUT = 60
HALF_OPEN = b"POST /api/v1/client/heartbeat HTTP/1.1\r\nHost: x\r\n"


def port_of(url: str | None) -> int:
    assert url is not None
    return int(url.rsplit(":", 1)[1].split("/")[0])


def metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}} ") or (not labels and line.startswith(name + " ")):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name}{{{want}}} not in /metrics")


async def beat(r: Running, client_id: str) -> None:
    resp = await r.heartbeat(client_id)
    assert resp.status_code == 200, resp.text


def test_defaults_and_bad_values(tmp_path: Path) -> None:
    cfg = config_mod.from_dict(config_dict(tmp_path))
    assert (cfg.http.max_connections, cfg.http.max_connections_per_address) == (1024, 32)
    assert (cfg.http.header_timeout_seconds, cfg.http.keep_alive_timeout_seconds) == (10, 75)
    assert (cfg.http.body_timeout_seconds, cfg.http.min_body_bytes_per_second) == (10, 1024)
    assert cfg.http.send_timeout_seconds == 30
    assert (cfg.websocket.max_connections, cfg.websocket.max_connections_per_address) == (2048, 32)
    assert cfg.websocket.handshake_timeout_seconds == 10
    with pytest.raises(ConfigError) as info:
        config_mod.from_dict(config_dict(tmp_path, http={"max_connections": 0,
                                                         "header_timeout_seconds": -1},
                                         websocket={"max_connections_per_address": 0}))
    assert info.value.problems == [
        "http.max_connections: must be greater than 0, got 0",
        "http.header_timeout_seconds: must be greater than 0, got -1.0",
        "websocket.max_connections_per_address: must be greater than 0, got 0"]


def test_the_open_file_limit_is_raised_to_fit_the_caps() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (512, hard))
        want = min(hard, 3000 + SPARE_FILE_DESCRIPTORS)
        assert ensure_file_limit(3000, "the caps") == want
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (want, hard)
        # Never lowered.
        assert ensure_file_limit(10, "the caps") == want
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_half_open_http_requests_are_cut_at_the_header_timeout(
        autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, daemons: StartDaemon,
        make_config: Callable[..., Config], connect: Connect) -> None:
    """The attack of the issue: connections that send a request line and one header, then
    nothing. They are cut 10 s after they were accepted (they were held until Hypercorn's
    keep-alive timer, 75 s); heartbeats are answered all along."""
    fake_time(autojump_clock, nursery)
    r = await daemons(make_config(presence={"min_interval_seconds": 0}),
                      wall_clock=fake_wall_clock())
    port = port_of(r.http_url)
    gate = r.daemon.http_gate
    first = trio.current_time()  # no connection was accepted before this
    half = []
    for i in range(20):
        s = await connect(port, f"127.0.0.{2 + i % 4}")
        await s.send_all(HALF_OPEN)
        half.append(s)
    while gate.phases()["pending"] < 20:
        await trio.sleep(0.001)
    last = trio.current_time()  # nor after this
    await trio.sleep_until(first + 9.5)
    # Read before the next request: while it waits on real sockets and the commit's worker
    # thread, the autojumping clock may move on past 10 s.
    assert gate.cut["head_timeout"] == 0
    await beat(r, "agent-1")
    await trio.sleep_until(last + 10.5)
    assert gate.cut["head_timeout"] == 20
    for s in half:
        assert await read_until_closed(s) == (b"", "reset")
    await beat(r, "agent-1")
    text = (await r.request("GET", "/metrics")).text
    assert metric(text, "rpad_listener_connections_cut_total", listener="http",
                  reason="head_timeout") == 20


async def test_a_slow_body_is_answered_408(
        autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, daemons: StartDaemon,
        make_config: Callable[..., Config], connect: Connect) -> None:
    """10 s plus a second per 1024 bytes: a heartbeat whose 2048-byte body stops after 1024
    bytes is answered 408 at 11 s."""
    fake_time(autojump_clock, nursery)
    r = await daemons(make_config(), wall_clock=fake_wall_clock())
    s = await connect(port_of(r.http_url), "127.0.0.2")
    await s.send_all(HALF_OPEN + b"Content-Type: application/json\r\nContent-Length: 2048"
                     b"\r\n\r\n" + b" " * 1024)
    t0 = trio.current_time()
    data, how = await read_until_closed(s)
    assert 11.0 <= trio.current_time() - t0 < 11.0 + 1.0  # the fake clock ticks by 1 s at most
    assert data.startswith(b"HTTP/1.1 408 ") and how == "eof", data
    assert data.endswith(b'"details":[]}') and b'"error":"request_timeout"' in data
    assert r.daemon.http_gate.cut["body_timeout"] == 1


async def test_per_address_caps_refuse_newcomers_and_spare_the_established(
        daemons: StartDaemon, make_config: Callable[..., Config], connect: Connect) -> None:
    """From one address: 3 connections that have not sent their request are held, the 4th is
    refused (HTTP 429; on the hub, 429 to the handshake). Authenticated ones from the same
    address are not counted: a dashboard and an agent's keep-alive connection keep working."""
    with trio.fail_after(TIMEOUT):
        r = await daemons(make_config(http={"max_connections_per_address": 3},
                                      websocket={"max_connections_per_address": 3},
                                      presence={"min_interval_seconds": 0}))
        http_port, ws_port = port_of(r.http_url), port_of(r.ws_url)
        async with ws_connect(r.ws_url, token=r.token("viewer", "dash")) as dash:
            await dash.subscribe("heartbeat")
            for port, gate in ((http_port, r.daemon.http_gate), (ws_port, r.daemon.ws_gate)):
                assert gate is not None
                held = [await connect(port) for _ in range(3)]
                while gate.active("127.0.0.1") < 3:
                    await trio.sleep(0.01)
                data, _ = await read_until_closed(await connect(port))
                assert data.startswith(b"HTTP/1.1 429 Too Many Requests\r\n"), data
                assert b'"error":"too_many_connections"' in data
                # Another address is not affected.
                other = await connect(port, "127.0.0.2")
                await other.send_all(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n"
                                     if port == http_port else WS_HANDSHAKE + b"\r\n")
                assert (await other.receive_some()).startswith(
                    b"HTTP/1.1 200" if port == http_port else b"HTTP/1.1 101")
                for s in held:
                    await s.aclose()
            # The established dashboard and heartbeats (httpx keeps its connection alive)
            # from the capped address carried on all along.
            await beat(r, "agent-1")
            assert (await dash.expect("HEARTBEAT_RECEIVED"))["data"]["clientId"] == "agent-1"
        text = (await r.request("GET", "/metrics")).text
        for listener in ("http", "websocket"):
            assert metric(text, "rpad_listener_connections_refused_total", listener=listener,
                          reason="per_address") == 1


async def test_the_hub_refuses_newcomers_at_its_cap_and_keeps_its_dashboards(
        daemons: StartDaemon, make_config: Callable[..., Config], connect: Connect) -> None:
    with trio.fail_after(TIMEOUT):
        r = await daemons(make_config(websocket={"max_connections": 3},
                                      presence={"min_interval_seconds": 0}))
        port = port_of(r.ws_url)
        async with ws_connect(r.ws_url, token=r.token("viewer", "a")) as a, \
                ws_connect(r.ws_url, token=r.token("viewer", "b")) as b:
            for ws in (a, b):
                await ws.subscribe("heartbeat")
            pending = await connect(port, "127.0.0.2")
            await pending.send_all(WS_HANDSHAKE)  # never finished
            data, _ = await read_until_closed(await connect(port, "127.0.0.3"))
            assert data.startswith(b"HTTP/1.1 503 Service Unavailable"), data
            assert b'"error":"server_busy"' in data
            await beat(r, "agent-1")
            for ws in (a, b):
                assert (await ws.expect("HEARTBEAT_RECEIVED"))["data"]["clientId"] == "agent-1"
        gate = r.daemon.ws_gate
        assert gate is not None and gate.refused["global"] == 1 and gate.cut["evicted"] == 0


async def test_websocket_handshakes_are_cut_at_the_handshake_timeout(
        autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, daemons: StartDaemon,
        make_config: Callable[..., Config], connect: Connect) -> None:
    fake_time(autojump_clock, nursery)
    r = await daemons(make_config(websocket={"handshake_timeout_seconds": 5}),
                      wall_clock=fake_wall_clock())
    half = await connect(port_of(r.ws_url), "127.0.0.2")
    t0 = trio.current_time()
    await half.send_all(WS_HANDSHAKE)  # without the blank line that ends it
    gate = r.daemon.ws_gate
    assert gate is not None
    await trio.sleep_until(t0 + 4.5)
    assert gate.cut["head_timeout"] == 0
    await trio.sleep_until(t0 + 5.5)
    assert gate.cut["head_timeout"] == 1 and len(gate) == 0
    assert await read_until_closed(half) == (b"", "reset")


async def test_behind_a_trusted_proxy_the_forwarded_address_is_capped(
        daemons: StartDaemon, make_config: Callable[..., Config], connect: Connect) -> None:
    """The proxy's own address is not capped; each forwarded client address may have two
    unauthenticated requests in progress (here: bodies still arriving) and two unauthenticated
    WebSocket connections; a request with a valid token from that address still gets through."""
    with trio.fail_after(TIMEOUT):
        r = await daemons(make_config(http={"trusted_proxies": ["127.0.0.1"],
                                            "max_connections_per_address": 2},
                                      websocket={"max_connections_per_address": 2}))
        http_port, ws_port = port_of(r.http_url), port_of(r.ws_url)
        fwd = b"X-Forwarded-For: 203.0.113.7\r\n"
        slow = []
        for _ in range(2):
            s = await connect(http_port)
            await s.send_all(HALF_OPEN + fwd + b"Content-Length: 100\r\n\r\n{")
            slow.append(s)
        while r.daemon.http_gate.active("203.0.113.7") < 2:
            await trio.sleep(0.01)
        s = await connect(http_port)
        await s.send_all(HALF_OPEN + fwd + b"Content-Length: 2\r\n\r\n{}")
        data, _ = await read_until_closed(s)
        assert data.startswith(b"HTTP/1.1 429"), data
        resp = await r.request("POST", "/api/v1/client/heartbeat", role="service",
                               headers={"X-Forwarded-For": "203.0.113.7"},
                               json={"clientId": "behind-nat"})
        assert resp.status_code == 200, resp.text
        # Another forwarded address, and the proxy itself, are not affected.
        resp = await r.http.get(r.http_url + "/api/v1/health",
                                headers={"X-Forwarded-For": "198.51.100.1"})
        assert resp.status_code == 200

        for _ in range(2):
            s = await connect(ws_port)
            await s.send_all(WS_HANDSHAKE + fwd + b"\r\n")
            assert (await s.receive_some()).startswith(b"HTTP/1.1 101")
        s = await connect(ws_port)
        await s.send_all(WS_HANDSHAKE + fwd + b"\r\n")
        data, how = await read_until_closed(s)
        assert data.startswith(b"HTTP/1.1 429") and how == "eof", data
        assert b'"error":"too_many_connections"' in data
        async with ws_connect(r.ws_url, token=r.token("viewer", "nat"),
                              extra_headers=[(b"X-Forwarded-For", b"198.51.100.1")]):
            pass


async def test_a_reload_applies_new_caps(
        daemons: StartDaemon, tmp_path: Path, connect: Connect) -> None:
    with trio.fail_after(TIMEOUT):
        path = tmp_path / "rpad.toml"
        base = (f'state_dir = "{tmp_path / "state"}"\n[http]\nlisten = "127.0.0.1:0"\n'
                '[websocket]\nlisten = "127.0.0.1:0"\n')
        path.write_text(base.replace("[websocket]", "max_connections_per_address = 1\n"
                                     "[websocket]"))
        r = await daemons(config_mod.load(path), config_path=str(path))
        port = port_of(r.http_url)
        first = await connect(port)
        while r.daemon.http_gate.active("127.0.0.1") < 1:
            await trio.sleep(0.01)
        data, _ = await read_until_closed(await connect(port))
        assert data.startswith(b"HTTP/1.1 429")
        path.write_text(base.replace("[websocket]", "max_connections_per_address = 2\n"
                                     "keep_alive_timeout_seconds = 5\n[websocket]"))
        assert await r.daemon.reload()
        second = await connect(port)
        await second.send_all(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await second.receive_some()).startswith(b"HTTP/1.1 200")
        assert r.daemon.hyper is not None and r.daemon.hyper.keep_alive_timeout == 5
        del first




async def test_connection_close_is_honoured_on_every_route(
        daemons: StartDaemon, make_config: Callable[..., Config], connect: Connect) -> None:
    """A request that says Connection: close (or an HTTP/1.0 one) gets its answer and then the
    end of the connection, on Quart's routes too (Hypercorn alone left those open when
    Quart-Trio's task was cancelled while closing, until the client hung up)."""
    with trio.fail_after(TIMEOUT):
        r = await daemons(make_config())
        port = port_of(r.http_url)
        for raw in (b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                    b"GET /api/v1/health HTTP/1.0\r\nHost: x\r\n\r\n",
                    b"GET /no/such/page HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"):
            s = await connect(port, "127.0.0.2")
            await s.send_all(raw)
            data, how = await read_until_closed(s)
            assert data.startswith((b"HTTP/1.1 200", b"HTTP/1.1 404")) and how == "eof", data
        while len(r.daemon.http_gate):
            await trio.sleep(0.01)
