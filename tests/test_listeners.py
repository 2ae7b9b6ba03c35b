"""The connection gate on a real listener: raw sockets to loopback (from several loopback
source addresses), the real Hypercorn connection handling of rpad/httpserve.py, trio-websocket
for the hub's listener, and Trio's fake clock wherever time matters.

Socket counts stay small here (tens); the thousands are bench/hostile.py's.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio
from trio_websocket import WebSocketRequest, WebSocketServer, open_websocket_url

from rpad.httpserve import BodyLimits, RequestGuard, hypercorn_config, serve_http
from rpad.listeners import (
    BODY_TIMEOUT,
    ESTABLISHED,
    EVICTED,
    GLOBAL,
    HEAD_TIMEOUT,
    IDLE_TIMEOUT,
    PER_ADDRESS,
    SEND_TIMEOUT,
    ConnectionGate,
    GuardedListener,
    Limits,
    address_key,
)
from rpad.tickets import note_authenticated

TIMEOUT = 30
HEAD = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
BIG_RESPONSE_BYTES = 32 * 1024 * 1024
BODY_LIMITS = BodyLimits(10.0, 1000.0)


class App:
    """A tiny ASGI app: reads the body, answers ``ok <bytes read>``; ``x-auth: yes`` stands for
    a valid token (it calls note_authenticated); ``/hold`` waits until ``release`` is set;
    ``/big`` answers BIG_RESPONSE_BYTES."""

    def __init__(self) -> None:
        self.release = trio.Event()
        self.holding = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        size = 0
        while True:
            message = await receive()
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        if (b"x-auth", b"yes") in scope["headers"]:
            note_authenticated()
        if scope["path"] == "/hold":
            self.holding += 1
            await self.release.wait()
        body = b"x" * BIG_RESPONSE_BYTES if scope["path"] == "/big" else b"ok %d" % size
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


@attrs.define
class Server:
    gate: ConnectionGate
    port: int
    app: App


def limits(**over: Any) -> Limits:
    base: dict[str, Any] = {"max_connections": 100, "max_connections_per_address": 100,
                            "head_timeout_seconds": 10.0, "evict": True}
    return Limits(**{**base, **over})


@asynccontextmanager
async def http_server(lim: Limits, *, trusted: tuple[str, ...] = (),
                      body: BodyLimits = BODY_LIMITS,
                      send_timeout: float = 30.0, keep_alive: float = 75.0
                      ) -> AsyncIterator[Server]:
    gate = ConnectionGate("http", lim, trusted)
    app = App()
    hc = hypercorn_config("127.0.0.1:0", graceful_timeout_seconds=1.0,
                          keep_alive_timeout_seconds=keep_alive)
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(functools.partial(
            serve_http, RequestGuard(app, gate, lambda: body), hc, gate,
            send_timeout=lambda: send_timeout, shutdown_trigger=stop.wait))
        yield Server(gate, int(binds[0].rsplit(":", 1)[1]), app)
        app.release.set()
        stop.set()


class Connect:
    """Opens client connections to loopback from a chosen source address; the fixture closes
    them all at the end."""

    def __init__(self) -> None:
        self.opened: list[trio.SocketStream] = []

    async def __call__(self, port: int, source: str = "127.0.0.1", *,
                       rcvbuf: int | None = None) -> trio.SocketStream:
        sock = trio.socket.socket()
        if rcvbuf is not None:
            sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, rcvbuf)
        await sock.bind((source, 0))
        await sock.connect(("127.0.0.1", port))
        stream = trio.SocketStream(sock)
        self.opened.append(stream)
        return stream


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    c = Connect()
    yield c
    for stream in c.opened:
        await stream.aclose()


async def read_until_closed(stream: trio.SocketStream) -> tuple[bytes, str]:
    """Everything the server sends, and how it ended: "eof" or "reset"."""
    data = b""
    while True:
        try:
            chunk = await stream.receive_some()
        except trio.BrokenResourceError as exc:
            cause = exc.__cause__
            assert isinstance(cause, OSError) and cause.errno == errno.ECONNRESET, exc
            return data, "reset"
        if not chunk:
            return data, "eof"
        data += chunk


async def request(stream: trio.SocketStream, raw: bytes = HEAD) -> bytes:
    """Send one request and read one small response (headers and body in one read)."""
    await stream.send_all(raw)
    data = b""
    while b"\r\n\r\n" not in data or not data.split(b"\r\n\r\n", 1)[1]:
        chunk = await stream.receive_some()
        assert chunk, data
        data += chunk
    return data


async def settle() -> None:
    """Let the server's tasks run (the gate hears of a finished request just after the
    client has read its answer)."""
    await trio.sleep(0.01)


def test_address_keys() -> None:
    assert address_key("203.0.113.7") == "203.0.113.7"
    assert address_key("::ffff:203.0.113.7") == "203.0.113.7"
    # One host's /64 is one address.
    assert address_key("2001:db8:1:2:aaaa::1") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::1") == "2001:db8:1:3::/64"
    assert address_key("/run/rpad.sock") == "/run/rpad.sock"


async def test_per_address_cap_refuses_with_429_and_spares_other_addresses(connect: Connect) -> None:
    with trio.fail_after(TIMEOUT):
        async with http_server(limits(max_connections_per_address=3)) as srv:
            tasks_before = trio.lowlevel.current_statistics().tasks_living
            held = [await connect(srv.port, "127.0.0.2") for _ in range(3)]
            await settle()
            assert srv.gate.active("127.0.0.2") == 3
            tasks_held = trio.lowlevel.current_statistics().tasks_living
            refused = await connect(srv.port, "127.0.0.2")
            data, how = await read_until_closed(refused)
            assert data.startswith(b"HTTP/1.1 429 Too Many Requests\r\n"), data
            assert data.endswith(b'{"error":"too_many_connections","message":"too many '
                                 b'connections from this address; retry later","details":[]}')
            assert how == "eof"
            assert srv.gate.refused == {PER_ADDRESS: 1, GLOBAL: 0}
            # A refusal costs no task.
            assert trio.lowlevel.current_statistics().tasks_living == tasks_held > tasks_before
            # Another address is served, and so is this one once one of its three is gone.
            other = await connect(srv.port, "127.0.0.3")
            assert (await request(other)).startswith(b"HTTP/1.1 200")
            await held[0].aclose()
            await settle()
            again = await connect(srv.port, "127.0.0.2")
            assert (await request(again)).startswith(b"HTTP/1.1 200")


async def test_authenticated_and_idle_connections_do_not_count_against_their_address(connect: Connect) -> None:
    """Only connections that are unproven and pending or busy count: a NAT'ed fleet keeps its
    authenticated connections, and browsers their idle keep-alive ones."""
    with trio.fail_after(TIMEOUT):
        async with http_server(limits(max_connections_per_address=2)) as srv:
            proven = await connect(srv.port, "127.0.0.2")
            await proven.send_all(b"GET /hold HTTP/1.1\r\nHost: x\r\nx-auth: yes\r\n\r\n")
            idle = await connect(srv.port, "127.0.0.2")
            await request(idle)
            while srv.app.holding < 1:
                await trio.sleep(0.01)
            await settle()
            assert srv.gate.phases()["busy"] == 1 and srv.gate.phases()["idle"] == 1
            assert srv.gate.active("127.0.0.2") == 0
            pending = [await connect(srv.port, "127.0.0.2") for _ in range(2)]
            await settle()
            assert srv.gate.active("127.0.0.2") == 2
            data, _ = await read_until_closed(await connect(srv.port, "127.0.0.2"))
            assert data.startswith(b"HTTP/1.1 429")
            del pending


async def test_global_cap_refuses_with_503_when_it_may_not_evict(connect: Connect) -> None:
    with trio.fail_after(TIMEOUT):
        async with http_server(limits(max_connections=3, evict=False)) as srv:
            held = [await connect(srv.port, f"127.0.0.{i}") for i in (2, 3, 4)]
            await settle()
            data, how = await read_until_closed(await connect(srv.port, "127.0.0.5"))
            assert data.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"), data
            assert b'"error":"server_busy"' in data and how == "eof"
            assert srv.gate.refused == {PER_ADDRESS: 0, GLOBAL: 1}
            # The ones it holds are served.
            assert (await request(held[0])).startswith(b"HTTP/1.1 200")


async def test_global_cap_evicts_pending_then_idle_never_busy(connect: Connect) -> None:
    """At the cap the oldest connection that has not sent its request goes first, then the
    longest-idle unproven one, then the longest-idle proven one; a busy one never."""
    with trio.fail_after(TIMEOUT):
        async with http_server(limits(max_connections=4)) as srv:
            busy = await connect(srv.port, "127.0.0.2")
            await busy.send_all(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
            idle_proven = await connect(srv.port, "127.0.0.3")
            await request(idle_proven, b"GET / HTTP/1.1\r\nHost: x\r\nx-auth: yes\r\n\r\n")
            idle = await connect(srv.port, "127.0.0.4")
            await request(idle)
            pending = await connect(srv.port, "127.0.0.5")
            while srv.app.holding < 1:
                await trio.sleep(0.01)
            await settle()
            assert srv.gate.phases() == {"pending": 1, "busy": 1, "idle": 2, "established": 0}

            # Each newcomer takes the place of the next victim, is served, and stays (idle,
            # proven: so the unproven idle one goes before the older proven one).
            for victim in (pending, idle, idle_proven):
                newcomer = await connect(srv.port, "127.0.0.6")
                assert await read_until_closed(victim) == (b"", "reset")
                assert (await request(newcomer, b"GET / HTTP/1.1\r\nHost: x\r\nx-auth: yes"
                                                b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
                await settle()
            assert srv.gate.cut[EVICTED] == 3
            assert srv.gate.phases() == {"pending": 0, "busy": 1, "idle": 3, "established": 0}


async def test_global_cap_never_cuts_a_busy_connection(connect: Connect) -> None:
    with trio.fail_after(TIMEOUT):
        async with http_server(limits(max_connections=2)) as srv:
            for source in ("127.0.0.2", "127.0.0.3"):
                s = await connect(srv.port, source)
                await s.send_all(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
            while srv.app.holding < 2:
                await trio.sleep(0.01)
            data, _ = await read_until_closed(await connect(srv.port, "127.0.0.4"))
            assert data.startswith(b"HTTP/1.1 503")
            assert srv.gate.cut[EVICTED] == 0 and srv.gate.refused[GLOBAL] == 1


async def test_head_deadline_from_accept_cuts_a_trickling_request(autojump_clock: Any, connect: Connect) -> None:
    """The request line and a header, then one byte a second: the head is not complete 10 s
    after the connection was accepted, so it is cut then (not at the 75 s keep-alive)."""
    async with http_server(limits(head_timeout_seconds=10.0)) as srv:
        t0 = trio.current_time()
        slow = await connect(srv.port, "127.0.0.2")
        await slow.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        for _ in range(9):
            await trio.sleep(1.0)
            await slow.send_all(b"X")
        await trio.sleep(0.99)
        assert srv.gate.cut[HEAD_TIMEOUT] == 0 and len(srv.gate) == 1
        await trio.sleep(0.02)
        assert srv.gate.cut[HEAD_TIMEOUT] == 1 and len(srv.gate) == 0
        assert await read_until_closed(slow) == (b"", "reset")
        assert trio.current_time() - t0 == pytest.approx(10.01)


async def test_head_deadline_on_a_kept_alive_connection_runs_from_its_first_byte(
        autojump_clock: Any, connect: Connect) -> None:
    async with http_server(limits(head_timeout_seconds=10.0)) as srv:
        conn = await connect(srv.port, "127.0.0.2")
        assert (await request(conn)).startswith(b"HTTP/1.1 200")
        # Idle for 30 s: that is the keep-alive's business (75 s), not the head deadline's.
        await trio.sleep(30.0)
        assert srv.gate.phases()["idle"] == 1
        await conn.send_all(b"GET / HTTP/1.1\r\n")
        t_first_byte = trio.current_time()
        await trio.sleep(9.99)
        assert srv.gate.cut[HEAD_TIMEOUT] == 0
        await trio.sleep(0.02)
        assert srv.gate.cut[HEAD_TIMEOUT] == 1
        assert await read_until_closed(conn) == (b"", "reset")
        assert trio.current_time() - t_first_byte == pytest.approx(10.01)


async def test_slow_body_gets_408_at_the_minimum_rate(autojump_clock: Any, connect: Connect) -> None:
    """10 s for the body plus one second per 1000 bytes received: 1000 bytes and then nothing
    is answered 408 at 11 s; a body arriving at 2000 bytes a second is served."""
    async with http_server(limits(), body=BodyLimits(10.0, 1000.0)) as srv:
        stalled = await connect(srv.port, "127.0.0.2")
        await stalled.send_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n"
                               + b"a" * 1000)
        t0 = trio.current_time()
        data, how = await read_until_closed(stalled)
        assert trio.current_time() - t0 == pytest.approx(11.0)
        assert data.startswith(b"HTTP/1.1 408 "), data
        assert b'"error":"request_timeout"' in data and how == "eof"
        assert srv.gate.cut[BODY_TIMEOUT] == 1

        steady = await connect(srv.port, "127.0.0.2")
        await steady.send_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 30000\r\n\r\n")
        for _ in range(15):  # 15 s, longer than the 10 s allowance, at 2000 bytes a second
            await trio.sleep(1.0)
            await steady.send_all(b"b" * 2000)
        assert (await request(steady, b"")).startswith(b"HTTP/1.1 200")
        assert srv.gate.cut[BODY_TIMEOUT] == 1


async def test_a_peer_that_stops_reading_is_cut_and_shutdown_is_not_held(
        autojump_clock: Any, connect: Connect) -> None:
    with trio.fail_after(600):
        async with http_server(limits(), send_timeout=30.0) as srv:
            reader = await connect(srv.port, "127.0.0.2", rcvbuf=4096)
            await reader.send_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            await trio.sleep(29.9)
            assert srv.gate.cut[SEND_TIMEOUT] == 0 and len(srv.gate) == 1
            await trio.sleep(0.2)
            assert srv.gate.cut[SEND_TIMEOUT] == 1 and len(srv.gate) == 0
            data, how = await read_until_closed(reader)
            assert how == "reset" and len(data) < BIG_RESPONSE_BYTES
        # (Leaving the block stopped the server: Hypercorn alone would wait for ever here.)


async def test_connect_and_close_leaves_no_tasks_behind(connect: Connect) -> None:
    """Hypercorn alone keeps two tasks for each such connection until its keep-alive timer
    fires (75 s); behind the gate they end at once."""
    with trio.fail_after(TIMEOUT):
        async with http_server(limits()) as srv:
            await settle()
            before = trio.lowlevel.current_statistics().tasks_living
            for _ in range(50):
                s = await connect(srv.port, "127.0.0.2")
                await s.aclose()
            idle = await connect(srv.port, "127.0.0.3")
            await request(idle)
            await idle.aclose()
            while len(srv.gate):
                await trio.sleep(0.01)
            await settle()
            assert trio.lowlevel.current_statistics().tasks_living == before


async def test_forwarded_requests_count_against_the_client_address_behind_a_trusted_proxy(connect: Connect) -> None:
    """Through a trusted proxy the proxy's own connections are not capped; each forwarded
    client address may have two unauthenticated requests in progress; authenticated ones do
    not count."""
    with trio.fail_after(TIMEOUT):
        async with http_server(limits(max_connections_per_address=2),
                               trusted=("127.0.0.1",)) as srv:
            def held(client: str, auth: bool = False) -> bytes:
                return (b"GET /hold HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: " + client.encode()
                        + (b"\r\nAuthorization: Bearer t\r\nx-auth: yes" if auth else b"")
                        + b"\r\n\r\n")

            proxy = [await connect(srv.port) for _ in range(6)]
            for s in proxy[:2]:
                await s.send_all(held("203.0.113.7"))
            await proxy[2].send_all(held("203.0.113.7", auth=True))
            await proxy[3].send_all(held("198.51.100.1"))
            while srv.app.holding < 4:
                await trio.sleep(0.01)
            assert srv.gate.active("203.0.113.7") == 2
            assert srv.gate.active("198.51.100.1") == 1
            assert srv.gate.active("127.0.0.1") == 0
            refused = await request(proxy[4], held("203.0.113.7"))
            assert refused.startswith(b"HTTP/1.1 429"), refused
            assert b'"error":"too_many_connections"' in refused
            assert srv.gate.refused[PER_ADDRESS] == 1
            srv.app.release.set()
            for s in proxy[:4]:
                assert (await request(s, b"")).startswith(b"HTTP/1.1 200")
            await settle()
            assert srv.gate.active("203.0.113.7") == 0


async def test_refusals_are_logged_at_most_once_a_minute(
        autojump_clock: Any, caplog: pytest.LogCaptureFixture, connect: Connect) -> None:
    caplog.set_level(logging.WARNING, logger="rpad.listeners")
    async with http_server(limits(max_connections_per_address=1, head_timeout_seconds=1000.0),
                           keep_alive=1000.0) as srv:
        keep = await connect(srv.port, "127.0.0.2")
        for _ in range(5):
            await read_until_closed(await connect(srv.port, "127.0.0.2"))
        lines = [r.getMessage() for r in caplog.records]
        assert lines == [("http: refused 1 over the per-address cap of 1 (for example from "
                         "127.0.0.2)")]
        await trio.sleep(59.0)
        assert len(caplog.records) == 1
        await trio.sleep(1.5)
        assert [r.getMessage() for r in caplog.records][1:] == [
            "http: refused 4 over the per-address cap of 1 (for example from 127.0.0.2)"]
        # Quiet for a minute, then the next refusal is logged at once again.
        await trio.sleep(120.0)
        await read_until_closed(await connect(srv.port, "127.0.0.2"))
        assert len(caplog.records) == 3
        del keep


# -- the hub's listener (trio-websocket) ---------------------------------------------------------


@asynccontextmanager
async def ws_server(lim: Limits, trusted: tuple[str, ...] = ()) -> AsyncIterator[
        tuple[ConnectionGate, int]]:
    """trio-websocket over a guarded listener, with a handler that does what the hub does:
    claim the connection, attribute it behind a proxy, establish it on a valid "token"."""
    gate = ConnectionGate("websocket", lim, trusted)

    async def handler(request: WebSocketRequest) -> None:
        remote = request.remote
        conn = gate.find(str(remote.address), remote.port)  # type: ignore[union-attr]
        assert conn is not None
        gate.request_started(conn)
        try:
            forwarded = dict(request.headers).get(b"x-forwarded-for")
            if forwarded and not gate.attribute(conn, forwarded.decode()):
                await request.reject(429)
                gate.finish(conn)
                return
            ws = await request.accept()
            said = await ws.get_message()
            if said == "token" or str(said).startswith("agent:"):
                gate.establish(conn, long_lived=True,
                               outside_cap_for=str(said)[6:] if said != "token" else None)
                await ws.send_message("welcome")
                await trio.sleep_forever()
        finally:
            gate.release(conn)

    async with trio.open_nursery() as nursery:
        inner = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
        listener = GuardedListener(inner, gate)
        server = WebSocketServer(handler, [listener],  # type: ignore[list-item]
                                 handler_nursery=nursery,
                                 connect_timeout=lim.head_timeout_seconds + 1,
                                 disconnect_timeout=0.5)
        nursery.start_soon(gate.run)
        await nursery.start(server.run)
        yield gate, inner.socket.getsockname()[1]
        nursery.cancel_scope.cancel()


WS_HANDSHAKE = (b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n")


async def test_websocket_handshake_deadline(autojump_clock: Any, connect: Connect) -> None:
    async with ws_server(limits(head_timeout_seconds=10.0, evict=False)) as (gate, port):
        half = await connect(port, "127.0.0.2")
        await half.send_all(WS_HANDSHAKE)  # no blank line: the handshake never completes
        await trio.sleep(9.99)
        assert gate.cut[HEAD_TIMEOUT] == 0 and len(gate) == 1
        await trio.sleep(0.02)
        assert gate.cut[HEAD_TIMEOUT] == 1 and len(gate) == 0
        assert await read_until_closed(half) == (b"", "reset")


async def test_websocket_caps_spare_established_connections(connect: Connect) -> None:
    """Per address only the connections still handshaking or authenticating count; at the
    global cap the hub refuses newcomers (503) and keeps every connection it has."""
    with trio.fail_after(TIMEOUT):
        async with ws_server(limits(max_connections=4, max_connections_per_address=2,
                                    evict=False)) as (gate, port):
            url = f"ws://127.0.0.1:{port}/ws"
            async with open_websocket_url(url) as a, open_websocket_url(url) as b:
                for ws in (a, b):
                    await ws.send_message("token")
                    assert await ws.get_message() == "welcome"
                assert gate.phases()[ESTABLISHED] == 2 and gate.active("127.0.0.1") == 0
                half = [await connect(port, "127.0.0.1") for _ in range(2)]
                await settle()
                assert gate.active("127.0.0.1") == 2
                data, _ = await read_until_closed(await connect(port, "127.0.0.1"))
                assert data.startswith(b"HTTP/1.1 429")
                data, _ = await read_until_closed(await connect(port, "127.0.0.9"))
                assert data.startswith(b"HTTP/1.1 503")
                assert gate.refused == {PER_ADDRESS: 1, GLOBAL: 1}
                # The established ones still work.
                await a.send_message("token")
                del half


async def test_websocket_behind_a_proxy_counts_the_forwarded_address(connect: Connect) -> None:
    with trio.fail_after(TIMEOUT):
        async with ws_server(limits(max_connections_per_address=1, evict=False),
                             trusted=("127.0.0.1",)) as (gate, port):
            first = await connect(port)
            await first.send_all(WS_HANDSHAKE + b"X-Forwarded-For: 203.0.113.7\r\n\r\n")
            assert (await first.receive_some()).startswith(b"HTTP/1.1 101")
            assert gate.active("203.0.113.7") == 1
            second = await connect(port)
            await second.send_all(WS_HANDSHAKE + b"X-Forwarded-For: 203.0.113.7\r\n\r\n")
            data, _ = await read_until_closed(second)
            assert data.startswith(b"HTTP/1.1 429"), data
            third = await connect(port)
            await third.send_all(WS_HANDSHAKE + b"X-Forwarded-For: 198.51.100.1\r\n\r\n")
            assert (await third.receive_some()).startswith(b"HTTP/1.1 101")


async def test_an_idle_connection_is_cut_if_its_keep_alive_timer_does_not_close_it(
        autojump_clock: Any, connect: Connect) -> None:
    """The gate's backstop: idle_timeout_seconds + IDLE_GRACE_SECONDS after the last answer
    (here Hypercorn's own keep-alive is longer, as it is in effect when Hypercorn missed the
    close)."""
    async with http_server(limits(idle_timeout_seconds=5.0), keep_alive=1000.0) as srv:
        conn = await connect(srv.port, "127.0.0.2")
        assert (await request(conn)).startswith(b"HTTP/1.1 200")
        t0 = trio.current_time()
        await trio.sleep(5.9)
        assert srv.gate.cut[IDLE_TIMEOUT] == 0
        await trio.sleep(0.2)
        assert srv.gate.cut[IDLE_TIMEOUT] == 1
        assert await read_until_closed(conn) == (b"", "reset")
        assert trio.current_time() - t0 == pytest.approx(6.1, abs=0.05)


async def test_a_head_in_pieces_is_served_and_an_oversized_one_refused(
        connect: Connect) -> None:
    """The first head is read before Hypercorn gets the connection (rpad/httpserve.py
    read_head): pieces are put together, and a head still incomplete past Hypercorn's 16 KiB
    limit is still Hypercorn's to refuse (431)."""
    with trio.fail_after(TIMEOUT):
        async with http_server(limits()) as srv:
            s = await connect(srv.port, "127.0.0.2")
            for piece in (b"POST / HT", b"TP/1.1\r\nHost: x\r\nContent-Le", b"ngth: 5\r\n\r",
                          b"\nhel", b"lo"):
                await s.send_all(piece)
                await trio.sleep(0.01)
            assert (await request(s, b"")).endswith(b"ok 5")
            big = await connect(srv.port, "127.0.0.3")
            await big.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ")
            for _ in range(5):  # 20 KiB of a head that does not end
                await big.send_all(b"a" * 4096)
                await trio.sleep(0.01)
            data, _ = await read_until_closed(big)
            assert data.startswith(b"HTTP/1.1 431"), data[:40]


async def test_agents_channels_are_bounded_by_the_fleet_not_the_hubs_cap(
        connect: Connect) -> None:
    """Established connections the hub marks as an agent's control channel are left out of
    max_connections (which is the dashboards'), at most two per agent and outside_cap in all;
    beyond that they count like any other."""
    with trio.fail_after(TIMEOUT):
        async with ws_server(limits(max_connections=2, evict=False)) as (gate, port):
            gate.outside_cap = 3
            url = f"ws://127.0.0.1:{port}/ws"
            async with contextlib.AsyncExitStack() as stack:
                async def opened(said: str) -> Any:
                    ws = await stack.enter_async_context(open_websocket_url(url))
                    await ws.send_message(said)
                    assert await ws.get_message() == "welcome"
                    return ws

                for said in ("agent:a", "agent:a", "agent:b"):  # three outside the cap
                    await opened(said)
                await opened("token")
                await opened("agent:a")  # a's third: inside the cap
                assert gate.snapshot()["outside_cap"] == 3 and len(gate) == 5
                data, _ = await read_until_closed(await connect(port, "127.0.0.2"))
                assert data.startswith(b"HTTP/1.1 503"), data
                assert gate.refused[GLOBAL] == 1
