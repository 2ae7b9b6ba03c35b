"""The wire-level writer against the real trio-websocket over loopback TCP: the internals it uses
are there in the pinned version, frames written together arrive whole, and they are byte for
byte what ``send_message`` writes one by one."""

from __future__ import annotations

import functools
import importlib.metadata
from collections.abc import AsyncIterator

import pytest
import trio
from trio_websocket import (
    WebSocketConnection,
    WebSocketRequest,
    open_websocket_url,
    serve_websocket,
)

from rpad.hub import wire

TIMEOUT_SECONDS = 10


def test_the_pinned_trio_websocket_is_the_one_installed() -> None:
    assert importlib.metadata.version("trio-websocket") == wire.TRIO_WEBSOCKET_VERSION


@pytest.fixture
async def pair(nursery: trio.Nursery) -> AsyncIterator[tuple[WebSocketConnection,
                                                             WebSocketConnection]]:
    """(server side, client side) of one real WebSocket connection on 127.0.0.1."""
    accepted: trio.MemorySendChannel[WebSocketConnection]
    accepted, incoming = trio.open_memory_channel[WebSocketConnection](1)

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        await accepted.send(ws)
        await trio.sleep_forever()

    server = await nursery.start(functools.partial(serve_websocket, handler, "127.0.0.1", 0,
                                                   None))
    port = server.port
    with trio.fail_after(TIMEOUT_SECONDS):
        async with open_websocket_url(f"ws://127.0.0.1:{port}/ws") as client:
            yield await incoming.receive(), client
    nursery.cancel_scope.cancel()


async def test_internals_are_there_and_frames_written_together_arrive_whole(
        pair: tuple[WebSocketConnection, WebSocketConnection]) -> None:
    server, client = pair
    assert wire.check_internals(server) == []
    assert wire.can_write_together(server)
    texts = ["one", '{"two":2}', "drei \u00fc", "x" * 70_000, "last"]
    with trio.fail_after(TIMEOUT_SECONDS):
        await wire.send_frames(server, texts)
        assert [await client.get_message() for _ in texts] == texts
        await wire.send_batched(server, ["a", "b", "c"])
        assert await client.get_message() == "a\nb\nc"


async def test_one_write_holds_the_bytes_send_message_would_write(
        pair: tuple[WebSocketConnection, WebSocketConnection]) -> None:
    server, client = pair
    writes: list[bytes] = []
    stream = server._stream
    send_all = stream.send_all

    async def recording(data: bytes) -> None:
        writes.append(bytes(data))
        await send_all(data)

    stream.send_all = recording  # type: ignore[method-assign]
    texts = ["alpha", "beta \u20ac", "gamma" * 100]
    with trio.fail_after(TIMEOUT_SECONDS):
        await wire.send_texts(server, texts)
        together = list(writes)
        writes.clear()
        for t in texts:
            await server.send_message(t)
        one_by_one = list(writes)
        assert [await client.get_message() for _ in range(2 * len(texts))] == texts + texts
    assert len(together) == 1 and len(one_by_one) == len(texts)
    assert together[0] == b"".join(one_by_one)
