"""The ceiling of rpad's HTTP stack: a trivial ASGI app on the same Hypercorn-on-Trio setup.

It reads the request body and answers with a fixed JSON body the size of a heartbeat answer,
served by ``hypercorn.trio.serve`` with the very Hypercorn configuration the daemon builds
(``Daemon._hypercorn_config``), so the only difference from rpad is the work of the heartbeat
itself. Prints ``listening on http://HOST:PORT`` when bound; runs until SIGTERM.

    python bench/asgi_ceiling.py [--listen 127.0.0.1:0]
"""

from __future__ import annotations

import argparse
import signal
from typing import Any

import trio
from hypercorn.trio import serve

from rpad.config import Config, HttpConfig
from rpad.daemon import Daemon

ANSWER = (b'{"clientId":"b0-1234","status":"online","serverTime":"2026-01-01T00:00:00.000Z",'
          b'"timeoutSeconds":60.0,"nextHeartbeatInSeconds":30.0,"clockSkewSeconds":null}')
HEADERS = [(b"content-type", b"application/json"),
           (b"content-length", str(len(ANSWER)).encode())]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            break
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": ANSWER})


async def main(listen: str) -> None:
    hc = Daemon(Config(http=HttpConfig(listen=listen)))._hypercorn_config()
    stop = trio.Event()

    async def on_signals() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                stop.set()
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(on_signals)
        binds = await nursery.start(lambda task_status: serve(
            app, hc, shutdown_trigger=stop.wait, task_status=task_status))
        print(f"listening on {binds[0]}", flush=True)
        await stop.wait()
        nursery.cancel_scope.deadline = trio.current_time() + 2


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:0")
    trio.run(main, parser.parse_args().listen)
