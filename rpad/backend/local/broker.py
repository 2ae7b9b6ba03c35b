"""The local broker: each topic's seq and history in this process, delivered to this node's hub
at once.

Every topic has a ``seq`` that grows by one per message and keeps its last
``websocket.history_size`` messages (whole envelopes) for ``since`` replay; state topics keep
none. Topics are created on first use; beyond :data:`MAX_TOPICS`, the least recently used app
topic (and its history) is forgotten. The ``epoch`` changes with every start of rpad, so
clients know when seqs start afresh.

Publishing is synchronous underneath (``publish`` never awaits), so a message reaches the hub's
subscribers in the same scheduling round as the change that caused it.

Resource handling: memory only; nothing to run. Error handling: none (data is JSON text
already).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable

import trio

from ...core.jsonenc import envelope
from ...core.times import iso
from ...core.topics import BUILTIN_TOPICS, STATE_TOPICS
from ..base import Delivery, Replay

MAX_TOPICS = 2000


class _TopicLog:
    __slots__ = ("history", "seq")

    def __init__(self, history_size: int | None) -> None:
        self.seq = 0
        self.history: deque[tuple[int, str]] | None = (
            deque(maxlen=history_size) if history_size is not None else None)


class LocalBroker:
    """:class:`~rpad.backend.base.Broker` for one node."""

    def __init__(self, delivery: Delivery, *, epoch: str, history_size: int,
                 wall_clock: Callable[[], float]) -> None:
        self.delivery = delivery
        self.epoch = epoch
        self.history_size = history_size
        self.wall_clock = wall_clock
        self.messages_published = 0
        self._logs: OrderedDict[str, _TopicLog] = OrderedDict()
        for name in BUILTIN_TOPICS:
            self._log(name)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()

    def reconfigure(self, *, history_size: int) -> None:
        self.history_size = history_size  # for topics created from now on

    def _log(self, topic: str) -> _TopicLog:
        log = self._logs.get(topic)
        if log is not None:
            self._logs.move_to_end(topic)
            return log
        log = _TopicLog(None if topic in STATE_TOPICS else self.history_size)
        self._logs[topic] = log
        if len(self._logs) > MAX_TOPICS:
            for name in self._logs:
                if name not in BUILTIN_TOPICS and not self.delivery.subscribers(name):
                    del self._logs[name]
                    break
        return log

    def _publish(self, topic: str, type_: str, data_json: str, at: float | None) -> tuple[int, int]:
        log = self._log(topic)
        log.seq += 1
        text = envelope(type_, topic, log.seq, iso(self.wall_clock() if at is None else at),
                        data_json)
        if log.history is not None:
            log.history.append((log.seq, text))
        self.messages_published += 1
        return log.seq, self.delivery.deliver(topic, type_, text)

    def publish_nowait(self, topic: str, type_: str, data_json: str, *,
                       at: float | None = None) -> None:
        self._publish(topic, type_, data_json, at)

    async def publish(self, topic: str, type_: str, data_json: str, *,
                      at: float | None = None) -> tuple[int, int]:
        return self._publish(topic, type_, data_json, at)

    async def replay(self, topic: str, since: int | None) -> Replay:
        """What a subscriber who saw up to ``since`` missed, and whether that is complete."""
        log = self._log(topic)
        if since is None:
            return Replay(log.seq, [], False)
        if log.history is None or since == log.seq:
            return Replay(log.seq, [], True)
        history = log.history
        if since > log.seq or not history or history[0][0] > since + 1:
            return Replay(log.seq, [], False)
        return Replay(log.seq, [text for seq, text in history if seq > since], True)

    def topic_seq(self, topic: str) -> int:
        log = self._logs.get(topic)
        return log.seq if log is not None else 0

    def history(self, topic: str) -> list[tuple[int, str]]:
        """The topic's kept messages (seq, envelope), oldest first."""
        log = self._logs.get(topic)
        return list(log.history) if log is not None and log.history is not None else []

    async def send_to_user(self, user_id: str, type_: str, data_json: str) -> int:
        if not self.delivery.user_connections(user_id):
            return 0
        text = envelope(type_, None, None, iso(self.wall_clock()), data_json)
        self.messages_published += 1
        return self.delivery.deliver_to_user(user_id, text)

    async def disconnect_user(self, user_id: str, reason: str) -> int:
        return self.delivery.disconnect_user(user_id, reason)

    async def claim_connection(self, user_id: str, connection_id: str, limit: int) -> bool:
        return self.delivery.user_connections(user_id) < limit

    def release_connection(self, user_id: str, connection_id: str) -> None:
        pass  # the hub's own count of live connections is the local claim

    def stats(self) -> dict[str, int]:
        return {"messagesPublished": self.messages_published, "topics": len(self._logs)}
