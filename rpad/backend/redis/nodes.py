"""The cluster's nodes: who is alive, and questions every node answers (admin views).

Each node writes its id into the nodes hash with an expiry every :data:`NODE_RENEW_SECONDS`
(a node that died leaves within :data:`NODE_TTL_SECONDS`). The management API asks the whole
cluster through :meth:`ClusterNodes.ask`: the question goes on the bus, every node answers on
the bus from its own state (``answer(kind, args)``, given by the daemon: the hub's admin
views), and the asker waits for an answer from every live node, or until the timeout (the
answer then names the nodes that stayed silent).

Resource handling: :meth:`ClusterNodes.run` renews this node's entry and answers questions
until cancelled, then removes its entry. Error handling: :meth:`ask` raises
BackendUnavailable when Redis cannot be reached; a node whose answer fails logs it and sends
an error answer.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from ...core.errors import BackendUnavailable
from ...core.jsonenc import dumps
from .keys import Keys
from .link import Link, text

log = logging.getLogger(__name__)

NODE_TTL_SECONDS = 15.0
NODE_RENEW_SECONDS = 5.0
ASK_TIMEOUT_SECONDS = 2.0

Answerer = Callable[[str, dict[str, Any]], Awaitable[Any]]


class ClusterNodes:
    def __init__(self, link: Link, keys: Keys, *, node_id: str,
                 wall_clock: Callable[[], float]) -> None:
        self.link = link
        self.keys = keys
        self.node_id = node_id
        self.wall_clock = wall_clock
        self.answer: Answerer | None = None
        self._waiting: dict[str, tuple[dict[str, Any], trio.Event, set[str]]] = {}
        self._questions: trio.MemorySendChannel[tuple[str, str, str, dict[str, Any]]]
        self._incoming: trio.MemoryReceiveChannel[tuple[str, str, str, dict[str, Any]]]
        self._questions, self._incoming = trio.open_memory_channel(100)
        link.on_message("q", self._on_question)
        link.on_message("r", self._on_answer)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._answer_questions)
                await self.renew()
                task_status.started()
                while True:
                    await trio.sleep(NODE_RENEW_SECONDS)
                    await self.renew()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                try:
                    await self.link.call("HDEL", self.keys.nodes, self.node_id)
                except BackendUnavailable:
                    pass

    async def renew(self) -> None:
        try:
            await self.link.call("HSET", self.keys.nodes, self.node_id,
                                 str(int((self.wall_clock() + NODE_TTL_SECONDS) * 1000)))
        except BackendUnavailable:
            pass

    async def live_nodes(self) -> list[str]:
        reply = await self.link.call("HGETALL", self.keys.nodes)
        pairs = reply.items() if isinstance(reply, dict) else zip(reply[::2], reply[1::2],
                                                                   strict=True)
        now_ms = self.wall_clock() * 1000
        live: list[str] = []
        dead: list[str] = []
        for node, expires in pairs:
            (live if float(text(expires)) >= now_ms else dead).append(text(node))
        if dead:
            await self.link.call("HDEL", self.keys.nodes, *dead)
        return sorted(live)

    # -- questions -------------------------------------------------------------------------------

    async def ask(self, kind: str, args: dict[str, Any],
                  timeout_seconds: float = ASK_TIMEOUT_SECONDS) -> tuple[dict[str, Any], list[str]]:
        """Ask every live node; returns ({node: answer}, [nodes that did not answer])."""
        nodes = set(await self.live_nodes())
        nodes.add(self.node_id)
        qid = secrets.token_hex(8)
        answers: dict[str, Any] = {}
        done = trio.Event()
        self._waiting[qid] = (answers, done, nodes)
        try:
            await self.link.publish("q", self.node_id, qid, kind, dumps(args))
            with trio.move_on_after(timeout_seconds):
                await done.wait()
        finally:
            self._waiting.pop(qid, None)
        return answers, sorted(nodes - set(answers))

    def _on_question(self, fields: list[str]) -> None:
        asker, qid, kind = fields[0], fields[1], fields[2]
        try:
            self._questions.send_nowait((asker, qid, kind, json.loads("\n".join(fields[3:]))))
        except trio.WouldBlock:
            log.warning("too many cluster questions at once; one from %s is not answered", asker)

    async def _answer_questions(self) -> None:
        async with trio.open_nursery() as nursery:
            async for asker, qid, kind, args in self._incoming:
                nursery.start_soon(self._answer_one, qid, kind, args)

    async def _answer_one(self, qid: str, kind: str, args: dict[str, Any]) -> None:
        if self.answer is None:
            return
        try:
            body: Any = {"ok": await self.answer(kind, args)}
        except Exception as exc:
            log.exception("cluster question %s failed", kind)
            body = {"error": str(exc)}
        try:
            await self.link.publish("r", self.node_id, qid, dumps(body))
        except BackendUnavailable:
            pass

    def _on_answer(self, fields: list[str]) -> None:
        node, qid = fields[0], fields[1]
        waiting = self._waiting.get(qid)
        if waiting is None:
            return
        answers, done, nodes = waiting
        body = json.loads("\n".join(fields[2:]))
        answers[node] = body.get("ok")
        if nodes <= set(answers):
            done.set()
