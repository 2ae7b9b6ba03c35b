"""The wire-level writer: several queued messages to one WebSocket in a single socket write.

This is the one module that uses trio-websocket's internals (``_wsproto``, ``_stream``,
``_stream_lock``, ``_abort_web_socket``, ``_close_reason``), so the version it was written
against is pinned in pyproject.toml (:data:`TRIO_WEBSOCKET_VERSION`), and a test
(tests/test_wire.py) fails if they move. Without them it falls back to ``send_message`` per
message, which sends the same bytes, only with one write and one scheduler round per
message.
"""

from __future__ import annotations

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection
from wsproto.events import TextMessage

# The trio-websocket release whose internals send_texts uses (pinned in pyproject.toml).
TRIO_WEBSOCKET_VERSION = "0.12.2"
_INTERNALS = ("_wsproto", "_stream", "_stream_lock", "_abort_web_socket", "_close_reason")
# A frame (or a write of several frames) holds about this many characters at most; a single
# larger message goes alone.
FRAME_CHARS = 64 * 1024


def can_write_together(ws: WebSocketConnection) -> bool:
    """Whether :func:`send_texts` can write several frames at once on ``ws``."""
    return all(getattr(ws, name, None) is not None for name in _INTERNALS if name != "_close_reason")


def check_internals(ws: WebSocketConnection) -> list[str]:
    """The internals :func:`send_texts` needs that ``ws`` lacks (empty: all there)."""
    return [name for name in _INTERNALS if not hasattr(ws, name)]


async def send_texts(ws: WebSocketConnection, texts: list[str]) -> None:
    """Send each text as its own text frame — the very bytes ``send_message`` would send one
    by one — in a single write to the socket. Raises ConnectionClosed like ``send_message``."""
    if len(texts) == 1 or not can_write_together(ws):
        for text in texts:
            await ws.send_message(text)
        return
    if ws._close_reason:
        raise ConnectionClosed(ws._close_reason)
    data = b"".join([ws._wsproto.send(TextMessage(data=text)) for text in texts])
    async with ws._stream_lock:
        try:
            await ws._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            await ws._abort_web_socket()
            assert ws._close_reason is not None
            raise ConnectionClosed(ws._close_reason) from None


async def send_frames(ws: WebSocketConnection, texts: list[str]) -> None:
    """Send ``texts``, each its own frame, written to the socket together (at most about
    FRAME_CHARS a write)."""
    start = 0
    while start < len(texts):
        end, size = start + 1, len(texts[start])
        while end < len(texts) and size + len(texts[end]) < FRAME_CHARS:
            size += len(texts[end])
            end += 1
        await send_texts(ws, texts[start:end])
        start = end


async def send_batched(ws: WebSocketConnection, texts: list[str]) -> None:
    """Send ``texts`` newline-delimited, several to a text frame (a frame holds about
    FRAME_CHARS at most; one message alone is sent as it is). JSON text never holds a raw
    newline, so a client splits a frame on newlines into whole messages."""
    start = 0
    while start < len(texts):
        end, size = start + 1, len(texts[start])
        while end < len(texts) and size + len(texts[end]) < FRAME_CHARS:
            size += len(texts[end]) + 1
            end += 1
        await ws.send_message(texts[start] if end == start + 1 else "\n".join(texts[start:end]))
        start = end
