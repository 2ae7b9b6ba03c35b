"""A connection's bounded outgoing queue: what the publisher hands over without waiting, and what
the connection's writer takes out.

One trio memory channel of ``websocket.queue_size`` items; the producers (publishers, actions,
the flusher) only ever use ``send_nowait``, the writer is the one consumer.

Conflation. A conflatable message (a complete state: ``SERVER_LIST``, ``STATS_UPDATE``) is
queued as a :class:`_Slot`, a small mutable holder, and the outbox remembers its live slot per
key (topic and type). A newer message takes a fresh slot at the tail and empties the old one
(the writer skips empty slots), so order is kept; when the channel is full it overwrites the
live slot in place instead. If the channel is full and no slot is live, the message waits in a
one-per-key side slot (``deferred``) that the writer sends as soon as the channel runs dry.
Memory is bounded by the channel plus one side slot per key.

Frame batching (asked for at auth): topic messages wait in ``pending`` until the hub's flusher
(or any other message for this connection, which must not overtake them) moves them to the
channel as one :class:`_Frame`. ``backlog`` counts topic messages not yet taken by the writer
(pending or queued); past ``queue_size`` the connection is a slow consumer. While the writer
is sending (``writing``) the flusher leaves them pending, so under load frames grow with the
time a write takes. ``dirty``: the connection is in the flusher's list; ``flushed_at``: when it
last got a frame (trio time).

Error handling: after :meth:`close`, offers are accepted and dropped (the connection is going),
and the writer's next take ends with ``trio.EndOfChannel``.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable

import trio


class _Slot:
    """A conflatable message in the queue; ``text`` None once superseded."""

    __slots__ = ("key", "text")

    def __init__(self, key: str, text: str) -> None:
        self.key = key
        self.text: str | None = text


class _Batch:
    """Several messages that take one queue place (a ``since`` replay)."""

    __slots__ = ("texts",)

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts


class _Frame(_Batch):
    """A batching connection's topic messages gathered since the last flush (one queue place);
    they count in ``backlog`` until the writer takes them."""

    __slots__ = ()


_Item = str | _Slot | _Batch


class Outbox:
    __slots__ = ("_deferred", "_recv", "_send", "_slots", "backlog", "batch", "dirty",
                 "flushed_at", "frame_chars", "pending", "size", "writing")

    def __init__(self, size: int, *, batch: bool = False,
                 frame_chars: int = 64 * 1024) -> None:
        self.size = size
        self.batch = batch
        self.frame_chars = frame_chars
        self._send, self._recv = trio.open_memory_channel[_Item](size)
        # Live conflatable slots in the queue, and side slots waiting for room, by key.
        self._slots: dict[str, _Slot] = {}
        self._deferred: dict[str, str] = {}
        self.pending: list[str] = []
        self.backlog = 0
        self.writing = False
        self.dirty = False
        self.flushed_at = -math.inf

    @property
    def queued(self) -> int:
        """Messages waiting (channel items, side slots and pending topic messages)."""
        return (self._recv.statistics().current_buffer_used + len(self._deferred)
                + len(self.pending))

    @property
    def untaken(self) -> bool:
        """The writer has not taken everything it was given yet."""
        return self._recv.statistics().current_buffer_used > 0

    # -- producers -----------------------------------------------------------------------------

    def _put(self, item: _Item) -> bool:
        try:
            self._send.send_nowait(item)
        except trio.WouldBlock:
            return False
        except trio.ClosedResourceError:
            pass  # closing: nothing more is sent
        return True

    def flush(self) -> bool:
        """Move pending topic messages to the queue as one item. False means the queue is full
        (they stay pending)."""
        if not self.pending:
            return True
        if not self._put(_Frame(self.pending)):
            return False
        self.pending = []
        return True

    def offer(self, text: str) -> bool:
        """Queue without waiting (after any pending topic messages, which go first). False
        means the queue is full."""
        return (not self.pending or self.flush()) and self._put(text)

    def offer_many(self, texts: list[str]) -> bool:
        """Several messages in one queue place (a replay). False means the queue is full."""
        return (not self.pending or self.flush()) and self._put(_Batch(texts))

    def offer_latest(self, key: str, text: str) -> bool:
        """Queue a conflatable message; returns True if it superseded one still waiting."""
        if self.pending:
            self.flush()  # when the queue is full they stay; the flusher finds it slow
        old = self._slots.get(key)
        slot = _Slot(key, text)
        try:
            self._send.send_nowait(slot)
        except trio.WouldBlock:
            if old is not None:
                old.text = text
                return True
            superseded = key in self._deferred
            self._deferred[key] = text
            return superseded
        except trio.ClosedResourceError:
            return False
        self._slots[key] = slot
        superseded = self._deferred.pop(key, None) is not None
        if old is not None:
            old.text = None
            superseded = True
        return superseded

    def add_pending(self, text: str) -> bool:
        """A topic message for a batching connection, gathered until the next flush. False
        means the backlog is over the queue size (a slow consumer)."""
        self.pending.append(text)
        self.backlog += 1
        return self.backlog <= self.size

    # -- the writer ----------------------------------------------------------------------------

    def take_nowait(self) -> list[str] | None:
        """The next texts to write, in queue order, if any are waiting: a side slot when the
        queue has run dry, else the next item and whatever else is queued now (up to about
        ``frame_chars``); None when nothing waits. Raises trio.EndOfChannel once closed."""
        try:
            item = self._recv.receive_nowait()
        except trio.WouldBlock:
            if self._deferred:
                _, text = self._deferred.popitem()
                return [text]
            return None
        return self.gather(item)

    def receive(self) -> Awaitable[_Item]:
        """Wait for the next item (the writer, when :meth:`take_nowait` found nothing; the
        channel's own coroutine, so an idle writer holds no frame of ours)."""
        return self._recv.receive()

    def gather(self, item: _Item) -> list[str]:
        """``item`` and whatever else is queued now, as texts; superseded slots give
        nothing."""
        texts: list[str] = []
        size = 0
        while True:
            if isinstance(item, str):
                texts.append(item)
                size += len(item)
            elif isinstance(item, _Slot):
                if self._slots.get(item.key) is item:
                    del self._slots[item.key]
                if item.text is not None:
                    texts.append(item.text)
                    size += len(item.text)
            else:
                texts.extend(item.texts)
                size += sum(len(t) for t in item.texts)
                if isinstance(item, _Frame):
                    self.backlog -= len(item.texts)
            if size >= self.frame_chars:
                return texts
            try:
                item = self._recv.receive_nowait()
            except trio.WouldBlock:
                return texts

    # -- closing -------------------------------------------------------------------------------

    def close(self) -> int:
        """Stop accepting and drop everything waiting; returns how many messages were
        dropped."""
        self._send.close()
        dropped = 0
        while True:
            try:
                item = self._recv.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            dropped += len(item.texts) if isinstance(item, _Frame) else 1
        dropped += len(self._deferred) + len(self.pending)
        self.pending.clear()
        self.backlog = 0
        self._slots.clear()
        self._deferred.clear()
        return dropped
