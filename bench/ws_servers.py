"""The two comparison servers of the fan-out benchmark, each in its own process.

``trio``: the floor of rpad's WebSocket layer — ``trio_websocket.serve_websocket`` and, for
every message the publisher sends, a bare loop ``for ws in subscribers: await
ws.send_message(text)``. No queues, no tasks per subscriber, no topics: what trio-websocket
itself costs per delivery.

``websockets``: the ``websockets`` library (asyncio) and its ``broadcast()``, which writes the
frame to every subscriber's transport without awaiting (the fastest fan-out that library has).

Both: connections to ``/sub`` are subscribers (each is answered ``{"type":"SUBSCRIBED"}`` once
registered); messages arriving on ``/pub`` are sent to every subscriber as they are. Prints
``listening on ws://HOST:PORT`` when bound; runs until SIGTERM.

    python bench/ws_servers.py trio|websockets
"""

from __future__ import annotations

import sys
from typing import Any

READY = '{"type":"SUBSCRIBED"}'


def run_trio() -> None:
    import signal

    import trio
    from trio_websocket import ConnectionClosed, WebSocketRequest, serve_websocket

    subscribers: set[Any] = set()

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        try:
            if request.path.startswith("/pub"):
                while True:
                    text = await ws.get_message()
                    for sub in list(subscribers):
                        try:
                            await sub.send_message(text)
                        except ConnectionClosed:
                            subscribers.discard(sub)
            else:
                subscribers.add(ws)
                await ws.send_message(READY)
                while True:
                    await ws.get_message()
        except ConnectionClosed:
            pass
        finally:
            subscribers.discard(ws)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, None)
            print(f"listening on ws://127.0.0.1:{server.port}", flush=True)
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    return

    trio.run(main)


def run_websockets() -> None:
    import asyncio
    import signal

    from websockets.asyncio.server import ServerConnection, broadcast, serve
    from websockets.exceptions import ConnectionClosed

    subscribers: set[ServerConnection] = set()

    async def handler(ws: ServerConnection) -> None:
        path = ws.request.path if ws.request is not None else "/sub"
        try:
            if path.startswith("/pub"):
                async for text in ws:
                    broadcast(subscribers, text)
            else:
                subscribers.add(ws)
                await ws.send(READY)
                await ws.wait_closed()
        except ConnectionClosed:
            pass
        finally:
            subscribers.discard(ws)

    async def main() -> None:
        stop = asyncio.get_running_loop().create_future()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
        # No compression, as rpad; the default write limit.
        async with serve(handler, "127.0.0.1", 0, compression=None, max_size=2**20,
                         ping_interval=None) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            print(f"listening on ws://127.0.0.1:{port}", flush=True)
            await stop

    asyncio.run(main())


if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else ""
    if which == "trio":
        run_trio()
    elif which == "websockets":
        run_websockets()
    else:
        sys.exit(__doc__)
