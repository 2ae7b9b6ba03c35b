"""Simulated agents for bench/console.py: many control channels in one process, each answering
``COMMAND_RUN`` at once (``command.started``, one line of output, ``command.done``), so that a
task's time is rpad's.

    python bench/console_agents.py ws://127.0.0.1:PORT/api/v1/agent/ws tokens.json

``tokens.json`` maps client ids to agent tokens. Prints ``ready N`` once every channel has said
hello and rpad answered, then serves until killed (SIGTERM).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import trio
from trio_websocket import WebSocketConnection, open_websocket_url

CAPABILITIES = {"commands": True, "pty": False, "shell": True, "allowlist": [], "runAs": None,
                "maxTimeoutSeconds": 600, "maxOutputBytes": 4194304, "maxConcurrent": 4}
OUTPUT = "ok\n"


async def agent(url: str, token: str, ready: trio.MemorySendChannel[str]) -> None:
    async with open_websocket_url(url, extra_headers=[(b"Authorization",
                                                       f"Bearer {token}".encode())]) as ws:
        await _expect(ws, "CONNECTION_ESTABLISHED")
        await _send(ws, {"action": "agent.hello", "protocol": 1, "agentVersion": "bench",
                         "capabilities": CAPABILITIES})
        await _expect(ws, "AGENT_REGISTERED")
        await ready.send("ok")
        while True:
            msg = json.loads(await ws.get_message())
            if msg.get("type") != "COMMAND_RUN":
                continue
            cid = msg["data"]["commandId"]
            await _send(ws, {"action": "command.started", "commandId": cid})
            await _send(ws, {"action": "command.output", "commandId": cid, "stream": "stdout",
                             "chunk": OUTPUT, "bytes": len(OUTPUT)})
            await _send(ws, {"action": "command.done", "commandId": cid, "status": "success",
                             "exitCode": 0, "signal": None, "durationMs": 1, "truncated": False,
                             "outputBytes": len(OUTPUT)})


async def _send(ws: WebSocketConnection, msg: dict[str, Any]) -> None:
    await ws.send_message(json.dumps(msg))


async def _expect(ws: WebSocketConnection, type_: str) -> None:
    while True:
        msg = json.loads(await ws.get_message())
        if msg.get("type") == type_:
            return
        if msg.get("type") == "ERROR":
            raise RuntimeError(f"rpad refused a simulated agent: {msg['data']}")


async def main(url: str, tokens: dict[str, str]) -> None:
    send, recv = trio.open_memory_channel[str](len(tokens))
    async with trio.open_nursery() as nursery:
        for token in tokens.values():
            nursery.start_soon(agent, url, token, send)
        for _ in tokens:
            await recv.receive()
        print(f"ready {len(tokens)}", flush=True)


if __name__ == "__main__":
    trio.run(main, sys.argv[1], json.loads(Path(sys.argv[2]).read_text()))
