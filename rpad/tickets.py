"""Which HTTP request is being served, so that authenticating it can prove its connection.

:class:`~rpad.httpserve.RequestGuard` makes a :class:`RequestTicket` current for each request
(a context variable, inherited by the tasks the request starts); the one place where HTTP
tokens are verified (:meth:`rpad.service.gate.Gate.authenticate`) calls
:func:`note_authenticated`, and from then on the request's connection is no longer counted
against its address (and a request forwarded by a trusted proxy no longer against the client's
address): see :class:`rpad.listeners.ConnectionGate`. Outside a guarded request nothing happens.
"""

from __future__ import annotations

import contextvars

from .listeners import Conn, ConnectionGate


class RequestTicket:
    """One HTTP request as the gate sees it: what it counts against (the connection, and the
    forwarded client address when a trusted proxy sent it), until it authenticates or ends."""

    __slots__ = ("conn", "gate", "key")

    def __init__(self, gate: ConnectionGate, conn: Conn | None, key: str | None) -> None:
        self.gate = gate
        self.conn = conn
        self.key = key  # a forwarded address's key, while it counts

    def authenticated(self) -> None:
        """The request carried a valid token: its connection is proven, and it no longer
        counts against its forwarded address."""
        if self.key is not None:
            self.gate.close_request(self.key)
            self.key = None
        if self.conn is not None and not self.conn.trusted:
            self.gate.establish(self.conn)

    def end(self) -> None:
        if self.key is not None:
            self.gate.close_request(self.key)
            self.key = None


_current_ticket: contextvars.ContextVar[RequestTicket | None] = contextvars.ContextVar(
    "rpad_request_ticket", default=None)


def set_ticket(ticket: RequestTicket | None) -> contextvars.Token[RequestTicket | None]:
    return _current_ticket.set(ticket)


def reset_ticket(token: contextvars.Token[RequestTicket | None]) -> None:
    _current_ticket.reset(token)


def note_authenticated() -> None:
    """Called where a request's token has been verified (the request's task or a task it
    started): the request's connection counts as proven (see :class:`ConnectionGate`).
    Outside a guarded request it does nothing."""
    ticket = _current_ticket.get()
    if ticket is not None:
        ticket.authenticated()
