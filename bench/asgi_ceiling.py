"""The ceiling of rpad's HTTP stack: a trivial ASGI app on the same Hypercorn-on-Trio setup.

It reads the request body and answers with a fixed JSON body the size of a heartbeat answer,
served the way the daemon serves HTTP: through ``rpad.httpserve`` (Hypercorn's connection
handler behind the connection gate, the request guard in front of the app) with the Hypercorn
configuration the daemon builds, so the only difference from rpad is the work of the heartbeat
itself. (An rpad from before the connection limits, measured with ``BENCH_RPAD_ROOT``, is
served its own way: ``hypercorn.trio.serve`` with ``Daemon._hypercorn_config``.) Prints
``listening on http://HOST:PORT`` when bound; runs until SIGTERM.

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

try:
    from rpad.daemon import http_limits
    from rpad.httpserve import BodyLimits, RequestGuard, hypercorn_config, serve_http
    from rpad.listeners import ConnectionGate
except ImportError:  # an rpad from before the connection limits
    serve_http = None  # type: ignore[assignment]

# The benchmarks' load is one loopback address (bench/common.py lifts the caps likewise).
UNCAPPED = 1_000_000

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


def server(listen: str, stop: trio.Event) -> Any:
    """A function of ``task_status`` that serves ``app`` as the daemon serves its own."""
    if serve_http is None:
        hc = Daemon(Config(http=HttpConfig(listen=listen)))._hypercorn_config()  # type: ignore[attr-defined]
        return lambda task_status: serve(app, hc, shutdown_trigger=stop.wait,
                                         task_status=task_status)
    http = HttpConfig(listen=listen, max_connections=UNCAPPED,
                      max_connections_per_address=UNCAPPED)
    gate = ConnectionGate("http", http_limits(http))
    hc = hypercorn_config(listen, graceful_timeout_seconds=http.graceful_timeout_seconds,
                          keep_alive_timeout_seconds=http.keep_alive_timeout_seconds)
    guarded = RequestGuard(app, gate, lambda: BodyLimits(http.body_timeout_seconds,
                                                         http.min_body_bytes_per_second))
    return lambda task_status: serve_http(guarded, hc, gate,
                                          send_timeout=lambda: http.send_timeout_seconds,
                                          shutdown_trigger=stop.wait, task_status=task_status)


async def main(listen: str) -> None:
    stop = trio.Event()

    async def on_signals() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                stop.set()
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(on_signals)
        binds = await nursery.start(server(listen, stop))
        print(f"listening on {binds[0]}", flush=True)
        await stop.wait()
        nursery.cancel_scope.deadline = trio.current_time() + 2


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:0")
    trio.run(main, parser.parse_args().listen)
