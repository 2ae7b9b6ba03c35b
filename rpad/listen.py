"""Listening sockets that several processes on one host share (``SO_REUSEPORT``).

With ``http.reuse_port`` / ``websocket.reuse_port``, each rpad process of a cluster node's host
binds the same address with ``SO_REUSEPORT`` and the kernel spreads new connections over them.

Resource handling: the caller owns the returned socket (Hypercorn takes it over by file
descriptor; the hub wraps it in a Trio listener). Error handling: OSError (address in use
without the option on the other side, permission) propagates: rpad cannot start.
"""

from __future__ import annotations

import socket

from .config import parse_listen

BACKLOG = 1024


def reuse_port_socket(listen: str) -> socket.socket:
    """A bound, listening TCP socket on ``HOST:PORT`` with SO_REUSEADDR and SO_REUSEPORT."""
    host, port = parse_listen(listen)
    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock
