"""The console's hub actions (``terminal.*``), for dashboards' connections.

| action | fields | answer |
|---|---|---|
| ``terminal.open`` | ``clientId``, ``ref?`` | ``TERMINAL_CONNECTED {sessionId, clientId, ref, capabilities}`` |
| ``terminal.command`` | ``sessionId``, ``command``, ``timeoutSeconds?``, ``maxOutputBytes?`` | ``COMMAND_START``, ``COMMAND_OUTPUT``\\ s, ``COMMAND_DONE`` |
| ``terminal.ack`` | ``sessionId``, ``commandId``, ``shownBytes`` | (credit for the agent: the command's output shown so far, in all) |
| ``terminal.cancel`` | ``sessionId`` | ``COMMAND_DONE {status: "cancelled"}`` when the agent has stopped it |
| ``terminal.history`` | ``sessionId`` | ``COMMAND_HISTORY {sessionId, clientId, commands}`` |
| ``terminal.attach`` | ``sessionId`` | ``TERMINAL_CONNECTED`` (this user now receives the session's messages) |
| ``terminal.list`` | | ``TERMINAL_SESSIONS {sessions}`` (the user's open sessions) |
| ``terminal.close`` | ``sessionId`` | ``TERMINAL_CLOSED {sessionId, reason}`` |

A refusal is ``TERMINAL_ERROR {code, message, sessionId?, ref?}`` to the asking connection (the
connection stays open). What the rules are — who may, binding, caps, audit — is
:mod:`rpad.service.console`'s; these functions only read the fields and answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..service.console import (
    COMMAND_HISTORY,
    TERMINAL_CONNECTED,
    TERMINAL_ERROR,
    TERMINAL_SESSIONS,
    Console,
    ConsoleError,
)
from .actions import Action, Hub

if TYPE_CHECKING:
    from .connection import Connection

MAX_REF_CHARS = 64


def _ref(msg: dict[str, Any]) -> dict[str, Any]:
    """The fields that tie an answer to its request: ``ref`` (the page's), ``sessionId``."""
    out: dict[str, Any] = {}
    ref = msg.get("ref")
    if isinstance(ref, str) and len(ref) <= MAX_REF_CHARS:
        out["ref"] = ref
    sid = msg.get("sessionId")
    if isinstance(sid, str) and len(sid) <= MAX_REF_CHARS:
        out["sessionId"] = sid
    client_id = msg.get("clientId")
    if isinstance(client_id, str) and len(client_id) <= 128:
        out["clientId"] = client_id
    return out


def _address(c: Connection) -> str | None:
    address = c.metadata.get("remoteAddress")
    return address if isinstance(address, str) else None


def console_actions(console: Console) -> Mapping[str, Action]:
    """The ``terminal.*`` actions, bound to ``console``."""

    def refused(hub: Hub, c: Connection, msg: dict[str, Any], exc: ConsoleError) -> None:
        hub.counters.errors += 1
        hub.reply(c, TERMINAL_ERROR, {"code": exc.code, "message": exc.message, **_ref(msg)})

    async def on_open(hub: Hub, c: Connection, msg: dict[str, Any]) -> None:
        try:
            data = await console.open(c.principal, msg.get("clientId"), address=_address(c))
        except ConsoleError as exc:
            refused(hub, c, msg, exc)
            return
        hub.reply(c, TERMINAL_CONNECTED, {**data, **({"ref": msg["ref"]} if "ref" in _ref(msg)
                                                     else {})})

    async def on_command(hub: Hub, c: Connection, msg: dict[str, Any]) -> None:
        try:
            await console.command(c.principal, msg.get("sessionId"), msg.get("command"),
                                  address=_address(c), timeout_seconds=msg.get("timeoutSeconds"),
                                  max_output_bytes=msg.get("maxOutputBytes"))
        except ConsoleError as exc:
            refused(hub, c, msg, exc)

    async def on_ack(hub: Hub, c: Connection, msg: dict[str, Any]) -> None:
        try:
            console.ack(c.principal, msg.get("sessionId"), msg.get("commandId"),
                        msg.get("shownBytes"), address=_address(c))
        except ConsoleError as exc:
            refused(hub, c, msg, exc)

    async def on_cancel(hub: Hub, c: Connection, msg: dict[str, Any]) -> None:
        try:
            console.cancel(c.principal, msg.get("sessionId"), address=_address(c))
        except ConsoleError as exc:
            refused(hub, c, msg, exc)

    async def on_history(hub: Hub, c: Connection, msg: dict[str, Any]) -> None:
        try:
            data = console.history(c.principal, msg.get("sessionId"), address=_address(c))
        except ConsoleError as exc:
            refused(hub, c, msg, exc)
            return
        hub.reply(c, COMMAND_HISTORY, data)

    async def on_attach(hub: Hub, c: Connection, msg: dict[str, Any]) -> None:
        try:
            data = console.attach(c.principal, msg.get("sessionId"), address=_address(c))
        except ConsoleError as exc:
            refused(hub, c, msg, exc)
            return
        hub.reply(c, TERMINAL_CONNECTED, data)

    async def on_list(hub: Hub, c: Connection, msg: dict[str, Any]) -> None:
        try:
            data = console.list_sessions(c.principal, address=_address(c))
        except ConsoleError as exc:
            refused(hub, c, msg, exc)
            return
        hub.reply(c, TERMINAL_SESSIONS, data)

    async def on_close(hub: Hub, c: Connection, msg: dict[str, Any]) -> None:
        try:
            await console.close(c.principal, msg.get("sessionId"), address=_address(c))
        except ConsoleError as exc:
            refused(hub, c, msg, exc)

    return {
        "terminal.open": on_open,
        "terminal.command": on_command,
        "terminal.ack": on_ack,
        "terminal.cancel": on_cancel,
        "terminal.history": on_history,
        "terminal.attach": on_attach,
        "terminal.list": on_list,
        "terminal.close": on_close,
    }
