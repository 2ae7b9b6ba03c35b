"""A lean WebSocket load generator: many client connections in one process on plain sockets and
epoll, so that the clients cost far less than the server they measure.

Server frames are walked header by header; only the last message of each read is looked into
(for its ``"seq":``), except in latency mode, where every message's ``clientId`` is matched to a
receive time. Pings are answered with pongs. Client frames are masked as RFC 6455 requires.

A subscriber process (:func:`subscriber_main`) opens its connections, reports how many are
ready, then reports the lowest seq that all of them have received (so a publisher can keep a
bounded window in flight) and counts every message. Progress goes through a shared array:
``progress[2*i]`` is process i's count of ready connections, ``progress[2*i+1]`` its lowest seq.

Resource handling: every socket is closed when the process ends; the process ends when
``stop`` is set or after ``max_seconds``.
Error handling: a connection that fails the handshake or is closed by the server raises
:class:`WsError` (the run is invalid, not quietly smaller).
"""

from __future__ import annotations

import base64
import os
import select
import socket
import struct
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

HANDSHAKE_TIMEOUT_SECONDS = 30.0
RECV_BYTES = 256 * 1024
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10
SEQ_KEY = b'"seq":'
CLIENT_KEY = b'"clientId":"'
RECEIVED_KEY = b'"receivedAt":"'


class WsError(Exception):
    """A connection did not behave (refused handshake, closed by the server)."""


def wait_readable(sock: socket.socket, timeout: float) -> bool:
    """Whether ``sock`` became readable within ``timeout`` seconds (poll: any fd number)."""
    p = select.poll()
    p.register(sock.fileno(), select.POLLIN)
    return bool(p.poll(timeout * 1000))


def client_frame(payload: bytes, opcode: int = OP_TEXT) -> bytes:
    """A masked client frame."""
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    mask = os.urandom(4)
    if n:
        key = (mask * (n // 4 + 1))[:n]
        payload = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")
    return header + mask + payload


def connect(url: str, *,
            extra_headers: Sequence[tuple[str, str]] = ()) -> tuple[socket.socket, bytes]:
    """Open a WebSocket (blocking handshake); returns the socket (now non-blocking) and any bytes
    received after the handshake."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    sock = socket.create_connection((host, port), timeout=HANDSHAKE_TIMEOUT_SECONDS)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Upgrade: websocket",
             "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
    lines += [f"{k}: {v}" for k, v in extra_headers]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise WsError(f"{url}: closed during the handshake")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    if b" 101 " not in head.split(b"\r\n", 1)[0]:
        raise WsError(f"{url}: handshake refused: {head[:200]!r}")
    sock.setblocking(False)
    return sock, rest


def parse_frames(buf: bytes) -> tuple[list[tuple[int, int, int]], int]:
    """Complete frames in ``buf`` as (opcode, payload start, payload end), and where the
    unparsed rest begins. Server frames are not masked."""
    frames = []
    pos, n = 0, len(buf)
    while n - pos >= 2:
        b1 = buf[pos + 1]
        length = b1 & 0x7F
        if length == 126:
            if n - pos < 4:
                break
            length = int.from_bytes(buf[pos + 2:pos + 4], "big")
            start = pos + 4
        elif length == 127:
            if n - pos < 10:
                break
            length = int.from_bytes(buf[pos + 2:pos + 10], "big")
            start = pos + 10
        else:
            start = pos + 2
        end = start + length
        if end > n:
            break
        frames.append((buf[pos] & 0x0F, start, end))
        pos = end
    return frames, pos


class Conn:
    """One client connection: its socket, unparsed bytes, and what it has received."""

    __slots__ = ("sock", "buf", "last_seq", "messages", "frames", "closed")

    def __init__(self, sock: socket.socket, rest: bytes) -> None:
        self.sock = sock
        self.buf = rest
        self.last_seq = 0
        self.messages = 0
        self.frames = 0
        self.closed: str | None = None

    def send_text(self, text: str) -> None:
        self.sock.setblocking(True)
        try:
            self.sock.sendall(client_frame(text.encode()))
        finally:
            self.sock.setblocking(False)

    def receive(self, latency: list[tuple[bytes, bytes, float, float]] | None = None) -> None:
        """Read what is there: count messages, note the last seq, answer pings. With
        ``latency``, append each message's clientId and receivedAt with the monotonic and wall
        times of this read."""
        try:
            data = self.sock.recv(RECV_BYTES)
        except BlockingIOError:
            return
        if not data:
            self.closed = self.closed or "connection closed by the server"
            return
        now = time.monotonic()
        wall = time.time() if latency is not None else 0.0
        buf = self.buf + data if self.buf else data
        # Walk the frame headers only; count messages and find the last seq over the whole
        # complete region at C speed (a control frame never holds '"seq":').
        pos, n, frames, special = 0, len(buf), 0, False
        while n - pos >= 2:
            length = buf[pos + 1] & 0x7F
            if length < 126:
                start = pos + 2
            elif length == 126:
                if n - pos < 4:
                    break
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                start = pos + 4
            else:
                if n - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2:pos + 10], "big")
                start = pos + 10
            if start + length > n:
                break
            if buf[pos] & 0x0F > OP_TEXT:
                special = True
            frames += 1
            pos = start + length
        self.buf = buf[pos:]
        if not frames:
            return
        self.frames += frames
        self.messages += buf.count(SEQ_KEY, 0, pos)
        i = buf.rfind(SEQ_KEY, 0, pos)
        if i >= 0:
            j = k = i + len(SEQ_KEY)
            while 48 <= buf[k] <= 57:
                k += 1
            if k > j:
                self.last_seq = int(buf[j:k])
        if special or latency is not None:
            self._slow_path(buf[:pos], latency, now, wall)

    def _slow_path(self, region: bytes, latency: list[tuple[bytes, bytes, float, float]] | None,
                   now: float, wall: float) -> None:
        """Control frames (ping, close, non-text) and latency samples, frame by frame."""
        frames, _ = parse_frames(region)
        for op, start, end in frames:
            if op == OP_TEXT or op == OP_CONT:
                if latency is not None:
                    for message in region[start:end].split(b"\n"):
                        i = message.find(CLIENT_KEY)
                        if i >= 0:
                            j = message.index(b'"', i + len(CLIENT_KEY))
                            k = message.find(RECEIVED_KEY)
                            at = message[k + len(RECEIVED_KEY):k + len(RECEIVED_KEY) + 24]
                            latency.append((message[i + len(CLIENT_KEY):j], at, now, wall))
            elif op == OP_PING:
                self.frames -= 1
                self.send_pong(region[start:end])
            elif op == OP_CLOSE:
                self.frames -= 1
                code = int.from_bytes(region[start:start + 2], "big") if end - start >= 2 else 1005
                self.closed = f"closed by the server: {code} {region[start + 2:end]!r}"
            else:
                self.frames -= 1

    def send_pong(self, payload: bytes) -> None:
        self.sock.setblocking(True)
        try:
            self.sock.sendall(client_frame(payload, OP_PONG))
        finally:
            self.sock.setblocking(False)

    def read_until(self, needle: bytes, timeout: float) -> bytes:
        """Blocking read of whole text frames until one contains ``needle``; returns it."""
        deadline = time.monotonic() + timeout
        while True:
            frames, used = parse_frames(self.buf)
            for op, start, end in frames:
                payload = self.buf[start:end]
                if op == OP_TEXT and needle in payload:
                    self.buf = self.buf[end:]
                    return payload
                if op == OP_CLOSE:
                    raise WsError(f"closed while waiting for {needle!r}: {payload!r}")
                if op == OP_PING:
                    self.send_pong(payload)
            self.buf = self.buf[used:]
            left = deadline - time.monotonic()
            if left <= 0:
                raise WsError(f"no message with {needle!r} within {timeout} s")
            wait_readable(self.sock, left)
            try:
                data = self.sock.recv(RECV_BYTES)
            except BlockingIOError:
                continue
            if not data:
                raise WsError(f"connection closed while waiting for {needle!r}")
            self.buf += data


def open_subscriber(url: str, subscribe: dict[str, Any] | None, ready_needle: bytes) -> Conn:
    """Connect, optionally send one JSON message (a subscribe), wait for ``ready_needle``."""
    import json

    sock, rest = connect(url)
    conn = Conn(sock, rest)
    if subscribe is not None:
        conn.send_text(json.dumps(subscribe))
    conn.read_until(ready_needle, HANDSHAKE_TIMEOUT_SECONDS)
    return conn


PROGRESS_REPORT_SECONDS = 0.0005
READ_PAUSE_SECONDS = 0.001
SLOTS = 4  # per subscriber process: ready connections, lowest seq, messages, frames


def subscriber_main(index: int, url: str, count: int, subscribe: dict[str, Any] | None,
                    ready_needle: bytes, shared: Any, stop: Any, max_seconds: float,
                    latency_out: str | None = None) -> None:
    """A subscriber process: ``count`` connections to ``url``; see the module docstring.
    ``shared[SLOTS*index:SLOTS*index+4]`` = ready connections, lowest seq, messages, frames."""
    base = SLOTS * index
    conns: list[Conn] = []
    for _ in range(count):
        conns.append(open_subscriber(url, subscribe, ready_needle))
        shared[base] = len(conns)
    ep = select.epoll()
    by_fd = {c.sock.fileno(): c for c in conns}
    for fd in by_fd:
        ep.register(fd, select.EPOLLIN)
    samples: list[tuple[bytes, bytes, float, float]] | None = [] if latency_out else None
    deadline = time.monotonic() + max_seconds
    next_report = 0.0
    try:
        while not stop.value:
            events = ep.poll(0.02)
            for fd, _ in events:
                c = by_fd[fd]
                c.receive(samples)
                if c.closed:
                    raise WsError(f"subscriber {index}: {c.closed}")
            if latency_out is None and events:
                # Throughput mode: let frames pile up in the socket buffers, so that one recv
                # takes many (the client must cost far less per message than the server).
                time.sleep(READ_PAUSE_SECONDS)
            now = time.monotonic()
            if now >= next_report:  # the lowest seq, for the publisher's window
                shared[base + 1] = min(c.last_seq for c in conns)
                next_report = now + PROGRESS_REPORT_SECONDS
                if now > deadline:
                    break
    finally:
        ep.close()
        shared[base + 1] = min(c.last_seq for c in conns)
        shared[base + 2] = sum(c.messages for c in conns)
        shared[base + 3] = sum(c.frames for c in conns)
        for c in conns:
            c.sock.close()
        if latency_out is not None and samples is not None:
            with open(latency_out, "w") as f:
                for cid, at, t, wall in samples:
                    f.write(f"{cid.decode()} {at.decode()} {t:.6f} {wall:.6f}\n")
