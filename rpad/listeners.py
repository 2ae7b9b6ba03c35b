"""Bounds on rpad's two listeners: how many connections, from whom, and how long a connection
may take to say what it wants.

A :class:`ConnectionGate` keeps the table of one listener's open connections. Each is in one
phase:

- ``pending``: accepted, its request head (HTTP) or handshake (WebSocket) not complete yet. It
  must complete within ``head_timeout_seconds`` of being accepted, or of the first byte of a
  later request on a kept-alive connection, or it is cut (TCP reset);
- ``busy``: a request is being served (HTTP), or the hub is authenticating it (WebSocket);
- ``idle``: an HTTP keep-alive connection between requests (Hypercorn's keep-alive timeout
  ends it; the gate cuts it ``IDLE_GRACE_SECONDS`` later if Hypercorn has not, as happens when
  a Quart-Trio route answered a request that said ``Connection: close``);
- ``established``: an authenticated WebSocket connection (the hub's keepalive looks after it).

A connection is *proven* once it has authenticated (a WebSocket connection at ``auth``, an HTTP
connection once one of its requests carried a valid token): it is no longer counted against
its address. The caps:

- **per address**: at most ``max_connections_per_address`` connections per client address that
  are pending or busy and not proven. An IPv6 address counts by its /64 (one host's share of
  addresses). A peer in ``http.trusted_proxies`` is not counted itself: what counts behind it
  is the forwarded client address (:meth:`ConnectionGate.attribute` for a WebSocket handshake,
  :meth:`ConnectionGate.open_request` for an HTTP request, where that address is known only
  once the request head is read). Beyond the cap, a new connection gets ``429`` (a forwarded
  request: ``429``) and is closed at once.
- **in all**: at most ``max_connections`` open connections. At the cap a listener that may
  ``evict`` (HTTP, where agents open a connection per heartbeat) cuts its oldest pending
  connection, else its longest-idle one that is not proven, else its longest-idle proven one,
  to make room; busy and established connections are never cut. A listener that may not (the
  hub), or one with nothing to cut, refuses the newcomer with ``503`` and closes it.

A refusal costs one ``accept``, one non-blocking write of a canned response and one ``close``:
no task, no parser, no buffer.

Resource handling: :meth:`ConnectionGate.run` (one task per gate) cuts connections whose
deadline has passed and logs refusals at most once per ``REFUSAL_LOG_INTERVAL_SECONDS``; a cut
closes the socket with a reset (``SO_LINGER`` 0, so that neither side keeps it in TIME_WAIT)
and cancels the connection's handler scope when it has one. Error handling: an ``OSError`` on a
socket being refused or cut is ignored (the peer may already be gone); any other error is a bug
and propagates.
"""

from __future__ import annotations

import heapq
import ipaddress
import itertools
import json
import logging
import math
import os
import resource
import socket
import struct
from collections import Counter
from collections.abc import Callable, Collection
from typing import Any

import attrs
import trio

log = logging.getLogger(__name__)

PENDING = "pending"
BUSY = "busy"
IDLE = "idle"
ESTABLISHED = "established"
PHASES = (PENDING, BUSY, IDLE, ESTABLISHED)

# Refusal reasons (metric labels).
PER_ADDRESS = "per_address"
GLOBAL = "global"
# Why the gate cut a connection (metric labels).
EVICTED = "evicted"
HEAD_TIMEOUT = "head_timeout"
IDLE_TIMEOUT = "idle_timeout"
SEND_TIMEOUT = "send_timeout"
BODY_TIMEOUT = "body_timeout"
CUT_REASONS = (EVICTED, HEAD_TIMEOUT, IDLE_TIMEOUT, SEND_TIMEOUT, BODY_TIMEOUT)

REFUSAL_LOG_INTERVAL_SECONDS = 60.0
# An idle connection is cut this long after its idle timeout if it is still open (the owner's
# own timer, Hypercorn's keep-alive, normally closes it first and more gently).
IDLE_GRACE_SECONDS = 1.0
REFUSAL_DRAIN_BYTES = 64 * 1024
# Established connections of one owner that may be left out of max_connections (an agent's
# control channel, and its successor while the old one is being noticed as gone).
OUTSIDE_CAP_PER_OWNER = 2
# An IPv6 client counts by this prefix: a single host commonly holds a whole /64.
IPV6_PREFIX_LENGTH = 64
# File descriptors kept beside the listeners' connections: the listening sockets, SQLite and
# its WAL, outgoing alert connections, logs, and a margin.
SPARE_FILE_DESCRIPTORS = 256
_LINGER_RESET = struct.pack("ii", 1, 0)


@attrs.frozen
class Limits:
    """One listener's limits (from ``[http]`` or ``[websocket]``)."""

    max_connections: int
    max_connections_per_address: int
    # A request head or handshake must be complete this long after it began.
    head_timeout_seconds: float
    # At the global cap: cut the oldest pending/idle connection (True) or refuse (False).
    evict: bool
    # An idle connection is closed after this long (None: no idle phase, or not the gate's
    # business).
    idle_timeout_seconds: float | None = None


def address_key(host: str) -> str:
    """The per-address key of a client address: IPv4 as it is (also when mapped into IPv6),
    IPv6 by its /64; anything else (a Unix socket path) as it is."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, IPV6_PREFIX_LENGTH), strict=False))
    return str(ip)


def ensure_file_limit(connections: int, what: str) -> int:
    """Raise this process's soft limit on open files (up to the hard limit) so that
    ``connections`` sockets plus ``SPARE_FILE_DESCRIPTORS`` fit; returns the soft limit. If
    the hard limit is lower, say so (``what`` names the settings): past it, accepting fails
    and connections wait in the kernel's queue instead of being refused cheaply."""
    needed = connections + SPARE_FILE_DESCRIPTORS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        if target > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    if soft != resource.RLIM_INFINITY and soft < needed:
        log.warning("the open-file limit (%d) is below %s plus %d; raise LimitNOFILE "
                    "(ulimit -n) or lower the caps", soft, what, SPARE_FILE_DESCRIPTORS)
    return soft


def _normal(host: str) -> str:
    """One spelling per IP address (the socket's and the ASGI scope's may differ)."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


def refusal_response(status: int, code: str, message: str) -> bytes:
    """A complete HTTP/1.1 response with rpad's JSON error body, sent as-is on refusal."""
    body = json.dumps({"error": code, "message": message, "details": []},
                      separators=(",", ":")).encode()
    reason = {408: "Request Timeout", 429: "Too Many Requests",
              503: "Service Unavailable"}.get(status, "Error")
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nretry-after: 1\r\nconnection: close\r\n\r\n"
            ).encode() + body


_REFUSED_PER_ADDRESS = refusal_response(
    429, "too_many_connections", "too many connections from this address; retry later")
_REFUSED_GLOBAL = refusal_response(
    503, "server_busy", "the server holds as many connections as it may; retry later")


class Conn:
    """One accepted connection in a gate's table."""

    __slots__ = ("_seq", "deadline", "host", "key", "outside_cap", "phase", "port", "proven",
                 "released", "requests", "scope", "since", "socket", "trusted")

    def __init__(self, sock: trio.socket.SocketType, host: str, port: int, trusted: bool,
                 seq: int, now: float) -> None:
        self.socket = sock
        self.host = host
        self.port = port
        self.key = address_key(host)
        # The direct peer is a trusted proxy and no forwarded address was attributed yet.
        self.trusted = trusted
        self.phase = PENDING
        self.proven = False
        self.since = now
        self.deadline = math.inf
        self.requests = 0  # in progress (HTTP/2 may hold several)
        self.released = False
        # The handler's cancel scope, when the gate's owner runs the handler (HTTP).
        self.scope: trio.CancelScope | None = None
        self._seq = seq
        # Whose budget this established connection is in, instead of max_connections.
        self.outside_cap: str | None = None

    @property
    def counted(self) -> bool:
        """Whether this connection counts against its address's cap."""
        return (not self.trusted and not self.proven and not self.released
                and self.phase in (PENDING, BUSY))

    def __repr__(self) -> str:
        return f"<Conn {self.host}:{self.port} {self.phase}{' proven' if self.proven else ''}>"


class ConnectionGate:
    """The table of one listener's connections, its caps and its deadlines (see the module
    docstring). ``trusted_proxies`` and ``limits`` may be replaced at any time (a reload):
    they apply to what happens next."""

    def __init__(self, name: str, limits: Limits,
                 trusted_proxies: Collection[str] = frozenset()) -> None:
        self.name = name
        self.limits = limits
        self.trusted_proxies = frozenset(trusted_proxies)
        self._open: dict[tuple[str, int], Conn] = {}
        # Candidates for eviction, oldest first (dicts keep insertion order).
        self._pending: dict[Conn, None] = {}
        self._idle_unproven: dict[Conn, None] = {}
        self._idle_proven: dict[Conn, None] = {}
        self._active: Counter[str] = Counter()  # per address key: counted connections/requests
        self._deadlines: list[tuple[float, int, Conn]] = []
        # Established connections left out of max_connections (see establish), by owner.
        self.outside_cap = 0
        self._outside: Counter[str] = Counter()
        self._outside_total = 0
        self._seq = itertools.count()
        self._wake: trio.CancelScope | None = None
        # Counters (read by /metrics).
        self.accepted = 0
        self.refused: Counter[str] = Counter({PER_ADDRESS: 0, GLOBAL: 0})
        self.cut: Counter[str] = Counter({r: 0 for r in CUT_REASONS})
        # Refusals since the last log line, by reason, and one address over its cap.
        self._unlogged: Counter[str] = Counter()
        self._unlogged_example = ""
        self._next_log_at = -math.inf

    # -- reading -----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._open)

    def find(self, host: str, port: int) -> Conn | None:
        """The open connection from ``host:port`` (as the socket's peer name gives them)."""
        return self._open.get((_normal(host), port))

    def phases(self) -> dict[str, int]:
        counts = dict.fromkeys(PHASES, 0)
        for c in self._open.values():
            counts[c.phase] += 1
        return counts

    def active(self, address: str) -> int:
        """Connections and requests from ``address`` that count against its cap."""
        return self._active.get(address_key(address), 0)

    # -- admission -----------------------------------------------------------------------------

    def admit(self, sock: trio.socket.SocketType) -> Conn | None:
        """A connection just accepted: its :class:`Conn`, or None when it was refused (then it
        has been answered and closed)."""
        try:
            peer = sock.getpeername()
        except OSError:  # reset before we got to it
            sock.close()
            return None
        host, port = (_normal(peer[0]), peer[1]) if isinstance(peer, tuple) else (str(peer), 0)
        now = trio.current_time()
        conn = Conn(sock, host, port, host in self.trusted_proxies, next(self._seq), now)
        limits = self.limits
        if not conn.trusted and self._active[conn.key] >= limits.max_connections_per_address:
            self._refuse(sock, PER_ADDRESS, conn.key, _REFUSED_PER_ADDRESS)
            return None
        in_cap = len(self._open) - self._outside_total
        if in_cap >= limits.max_connections and not (limits.evict and self._evict()):
            self._refuse(sock, GLOBAL, conn.key, _REFUSED_GLOBAL)
            return None
        self.accepted += 1
        self._open[(host, port)] = conn
        self._enter(conn, PENDING, now + limits.head_timeout_seconds)
        return conn

    def _evict(self) -> bool:
        for pool in (self._pending, self._idle_unproven, self._idle_proven):
            for victim in pool:
                self.cut_off(victim, EVICTED)
                return True
        return False

    def _refuse(self, sock: trio.socket.SocketType, reason: str, key: str,
                response: bytes) -> None:
        self.refused[reason] += 1
        self._unlogged[reason] += 1
        if reason == PER_ADDRESS:
            self._unlogged_example = key
        fd = sock.fileno()
        try:
            # What the peer has sent already is read (and dropped), so that the close is a
            # FIN after the response rather than a reset that could discard it; non-blocking.
            os.read(fd, REFUSAL_DRAIN_BYTES)
        except OSError:
            pass
        try:
            os.write(fd, response)  # non-blocking: whatever fits, or nothing
        except OSError:
            pass
        sock.close()
        self._schedule_log()

    # -- phases --------------------------------------------------------------------------------

    def _leave(self, conn: Conn) -> None:
        if conn.counted:
            self._uncount(conn.key)
        self._pending.pop(conn, None)
        self._idle_unproven.pop(conn, None)
        self._idle_proven.pop(conn, None)
        conn.deadline = math.inf

    def _enter(self, conn: Conn, phase: str, deadline: float = math.inf) -> None:
        conn.phase = phase
        conn.since = trio.current_time()
        if conn.counted:
            self._active[conn.key] += 1
        if phase == PENDING:
            self._pending[conn] = None
        elif phase == IDLE:
            (self._idle_proven if conn.proven else self._idle_unproven)[conn] = None
        conn.deadline = deadline
        if deadline != math.inf:
            heapq.heappush(self._deadlines, (deadline, conn._seq, conn))
            if self._wake is not None and deadline < self._wake.deadline:
                self._wake.deadline = deadline

    def _uncount(self, key: str) -> None:
        self._active[key] -= 1
        if self._active[key] <= 0:
            del self._active[key]

    def _move(self, conn: Conn, phase: str, deadline: float = math.inf) -> None:
        if conn.released:
            return
        self._leave(conn)
        self._enter(conn, phase, deadline)

    def head_started(self, conn: Conn) -> None:
        """The first bytes of a new request arrived on an idle keep-alive connection."""
        if conn.phase == IDLE:
            self._move(conn, PENDING, trio.current_time() + self.limits.head_timeout_seconds)

    def request_started(self, conn: Conn) -> None:
        """A request head (or WebSocket handshake) is complete: the head deadline is off."""
        conn.requests += 1
        if conn.phase != BUSY:
            self._move(conn, BUSY)

    def request_finished(self, conn: Conn) -> None:
        """A request was answered; with none left in progress the connection is idle."""
        conn.requests = max(0, conn.requests - 1)
        if conn.requests == 0 and conn.phase == BUSY:
            idle = self.limits.idle_timeout_seconds
            self._move(conn, IDLE, math.inf if idle is None
                       else trio.current_time() + idle + IDLE_GRACE_SECONDS)

    def close_answered(self, conn: Conn) -> None:
        """The connection's last answer has been written and it is not kept alive: close it
        (a FIN after the answer) and end its handler. (Hypercorn leaves it open when the app's
        task is cancelled while closing, as Quart-Trio's is after a ``Connection: close``
        request.)"""
        if conn.released:
            return
        self.release(conn)
        try:
            conn.socket.close()
        except OSError:
            pass
        if conn.scope is not None:
            conn.scope.cancel()

    def attribute(self, conn: Conn, address: str) -> bool:
        """Count ``conn`` (from a trusted proxy) against the forwarded client ``address``.
        False when that address is over its cap (the caller refuses the connection)."""
        key = address_key(address)
        if conn.released or not conn.trusted:
            return True
        if self._active[key] >= self.limits.max_connections_per_address:
            self.refused[PER_ADDRESS] += 1
            self._unlogged[PER_ADDRESS] += 1
            self._unlogged_example = key
            self._schedule_log()
            return False
        phase, deadline = conn.phase, conn.deadline
        self._leave(conn)
        conn.trusted, conn.key = False, key
        self._enter(conn, phase, deadline)
        return True

    def establish(self, conn: Conn, *, long_lived: bool = False,
                  outside_cap_for: str | None = None) -> None:
        """``conn`` authenticated: no longer counted against its address. ``long_lived``: a
        WebSocket connection, established from now on (never evicted). ``outside_cap_for``: an
        owner (an agent's client id) whose long-lived connections are bounded by the fleet
        rather than by ``max_connections``: at most ``OUTSIDE_CAP_PER_OWNER`` per owner and
        ``outside_cap`` in all are left out of ``max_connections``; more count as usual."""
        if conn.released:
            return
        owner = outside_cap_for
        if (owner is not None and conn.outside_cap is None
                and self._outside[owner] < OUTSIDE_CAP_PER_OWNER
                and self._outside_total < self.outside_cap):
            conn.outside_cap = owner
            self._outside[owner] += 1
            self._outside_total += 1
        phase = ESTABLISHED if long_lived else conn.phase
        deadline = conn.deadline if phase == conn.phase else math.inf
        self._leave(conn)
        conn.proven = True
        self._enter(conn, phase, deadline)

    def release(self, conn: Conn) -> None:
        """``conn`` is closed (its handler ended). Idempotent."""
        if conn.released:
            return
        self._leave(conn)
        conn.released = True
        if conn.outside_cap is not None:
            self._outside[conn.outside_cap] -= 1
            if self._outside[conn.outside_cap] <= 0:
                del self._outside[conn.outside_cap]
            self._outside_total -= 1
        if self._open.get((conn.host, conn.port)) is conn:
            del self._open[(conn.host, conn.port)]

    def finish(self, conn: Conn) -> None:
        """The owner is done with ``conn`` and wants its socket closed now (trio-websocket does
        not close a connection whose handshake was rejected: its task would wait for the peer
        to hang up, for ever if the peer does not)."""
        self.release(conn)
        try:
            conn.socket.close()
        except OSError:
            pass

    def cut_off(self, conn: Conn, reason: str) -> None:
        """Close ``conn`` now with a TCP reset and cancel its handler (if the gate knows it);
        counted under ``reason``."""
        if conn.released:
            return
        self.cut[reason] += 1
        log.debug("%s: cutting %s:%d (%s)", self.name, conn.host, conn.port, reason)
        self.release(conn)
        _reset(conn.socket)
        if conn.scope is not None:
            conn.scope.cancel()

    # -- forwarded HTTP requests ---------------------------------------------------------------

    def open_request(self, address: str, *, credentials: bool = False) -> str | None:
        """An unauthenticated request forwarded by a trusted proxy for ``address``: its key
        (pass it to :meth:`close_request` when the request ends or authenticates), or None when
        ``address`` is over its cap (answer 429). A request that carries ``credentials`` counts
        but is not refused: it proves itself (or fails and meets the failed-authentication
        limit) at once, and must not be locked out by the address's anonymous requests."""
        key = address_key(address)
        if not credentials and self._active[key] >= self.limits.max_connections_per_address:
            self.refused[PER_ADDRESS] += 1
            self._unlogged[PER_ADDRESS] += 1
            self._unlogged_example = key
            self._schedule_log()
            return None
        self._active[key] += 1
        return key

    def close_request(self, key: str) -> None:
        self._uncount(key)

    # -- the reaper ----------------------------------------------------------------------------

    def _schedule_log(self) -> None:
        if self._next_log_at == -math.inf:
            self._log_refusals()
        elif self._wake is not None and self._next_log_at < self._wake.deadline:
            self._wake.deadline = self._next_log_at

    def _log_refusals(self) -> None:
        now = trio.current_time()
        if self._unlogged:
            parts = []
            if self._unlogged[PER_ADDRESS]:
                parts.append(f"{self._unlogged[PER_ADDRESS]} over the per-address cap of "
                             f"{self.limits.max_connections_per_address} (for example from "
                             f"{self._unlogged_example})")
            if self._unlogged[GLOBAL]:
                parts.append(f"{self._unlogged[GLOBAL]} over the cap of "
                             f"{self.limits.max_connections} connections")
            log.warning("%s: refused %s", self.name, " and ".join(parts))
            self._unlogged.clear()
            self._next_log_at = now + REFUSAL_LOG_INTERVAL_SECONDS
        else:
            self._next_log_at = -math.inf  # the next refusal is logged at once

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Cut connections whose deadline has passed, and log refusals (at most once per
        ``REFUSAL_LOG_INTERVAL_SECONDS``), until cancelled."""
        task_status.started()
        while True:
            now = trio.current_time()
            while self._deadlines and self._deadlines[0][0] <= now:
                deadline, _, conn = heapq.heappop(self._deadlines)
                if conn.deadline == deadline and not conn.released:
                    self.cut_off(conn, IDLE_TIMEOUT if conn.phase == IDLE else HEAD_TIMEOUT)
            if self._next_log_at != -math.inf and now >= self._next_log_at:
                self._log_refusals()
            wake_at = self._deadlines[0][0] if self._deadlines else math.inf
            if self._next_log_at != -math.inf:
                wake_at = min(wake_at, self._next_log_at)
            with trio.CancelScope(deadline=wake_at) as self._wake:
                await trio.sleep_forever()
            self._wake = None

    def snapshot(self) -> dict[str, Any]:
        """For /metrics: open connections by phase, the caps, and the counters."""
        return {"phases": self.phases(), "accepted": self.accepted,
                "outside_cap": self._outside_total,
                "limits": {"max_connections": self.limits.max_connections,
                           "max_connections_per_address": self.limits.max_connections_per_address},
                "refused": dict(self.refused), "cut": dict(self.cut)}


def _reset(sock: trio.socket.SocketType) -> None:
    """Close with a TCP reset: nothing lingers on either side."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    except OSError:
        pass
    sock.close()


class GuardedListener(trio.abc.Listener[trio.abc.Stream]):
    """A ``trio.SocketListener`` whose ``accept`` returns only the connections ``gate`` admits
    (refused ones are answered and closed inside ``accept``). ``wrap(stream, conn)`` may wrap
    the stream it returns (the HTTP listener wraps it in :class:`rpad.httpserve.GuardedStream`)."""

    def __init__(self, inner: trio.SocketListener, gate: ConnectionGate,
                 wrap: Callable[[trio.SocketStream, Conn], trio.abc.Stream] | None = None
                 ) -> None:
        self.inner = inner
        self.gate = gate
        self.wrap = wrap

    @property
    def socket(self) -> trio.socket.SocketType:
        return self.inner.socket

    async def accept(self) -> trio.abc.Stream:
        while True:
            stream = await self.inner.accept()
            conn = self.gate.admit(stream.socket)
            if conn is not None:
                return stream if self.wrap is None else self.wrap(stream, conn)

    async def aclose(self) -> None:
        await self.inner.aclose()
