"""The Redis broker: topics' seq, history and delivery shared by every node.

Publishing runs ``lua/publish.lua``: it bumps the topic's seq in its meta hash, appends the
envelope to the topic's stream (``XADD MAXLEN ~ websocket.history_size``) and publishes it on
the bus, atomically. Every node (the publisher too) delivers what it reads from the bus to its
own subscribers, so each topic reaches every subscriber in seq order. A node that sees a gap in
a topic's seqs (its bus connection dropped messages) holds that topic's later messages back,
reads the missing ones from the stream, and delivers them first.

A ``since`` replay (``lua/replay.lua``) reads the stream and publishes a marker on the bus in
the same script; once this node has read the marker from the bus, every message up to the
replayed seq has been delivered here, and the messages delivered after it are added from a
short in-memory buffer, so the subscriber who joins then misses nothing and sees nothing twice.

rpad's own events (``publish_nowait``) wait in an outbox that one task drains: whatever queued
during a round trip goes in the next (one pipelined round trip). The epoch is the cluster's
(``<prefix>:{<prefix>}:epoch``), the same on every node and across restarts of nodes.

The per-user connection limit is cluster-wide: each connection is an entry of the user's hash
with an expiry that its node renews every :data:`CONN_RENEW_SECONDS`; a dead node's entries
expire within :data:`CONN_TTL_SECONDS`. While Redis is unreachable the limit is counted on
this node alone (dashboards keep connecting to read the node's last view).

Resource handling: :meth:`RedisBroker.run` runs the outbox drainer, the connection renewer and
gap filling until cancelled. Error handling: :meth:`publish`, :meth:`send_to_user` and
:meth:`disconnect_user` raise BackendUnavailable; the outbox keeps its messages (up to
:data:`MAX_OUTBOX` — the oldest are dropped, and logged, beyond that) until Redis is back;
a replay that cannot reach Redis answers "not recovered".
"""

from __future__ import annotations

import logging
import secrets
from collections import deque
from collections.abc import Callable
from typing import Any

import trio

from ...core.errors import BackendUnavailable
from ...core.jsonenc import envelope, quote
from ...core.times import iso
from ..base import Delivery, Replay
from .keys import Keys
from .link import Link, text
from .scripts import SCRIPTS

log = logging.getLogger(__name__)

CONN_TTL_SECONDS = 30.0
CONN_RENEW_SECONDS = 10.0
MARKER_WAIT_SECONDS = 2.0
RECENT_PER_TOPIC = 256
MAX_TOPICS_TRACKED = 10_000
MAX_OUTBOX = 10_000
OUTBOX_RETRY_SECONDS = 1.0


class RedisBroker:
    """:class:`~rpad.backend.base.Broker` shared by every node through Redis."""

    def __init__(self, link: Link, keys: Keys, delivery: Delivery, *, node_id: str,
                 epoch: str, history_size: int, wall_clock: Callable[[], float]) -> None:
        self.link = link
        self.keys = keys
        self.delivery = delivery
        self.node_id = node_id
        self.epoch = epoch  # replaced by the cluster's at start
        self.history_size = history_size
        self.wall_clock = wall_clock
        self.messages_published = 0
        self.gaps_filled = 0
        self._seqs: dict[str, int] = {}
        self._recent: dict[str, deque[tuple[int, str]]] = {}
        self._held: dict[str, list[tuple[int, str, str]]] = {}
        self._markers: dict[str, trio.Event] = {}
        self._outbox: deque[tuple[str, str, str, float | None]] = deque()
        self._outbox_wake = trio.Event()
        self._claims: dict[str, str] = {}  # field (node/connection) -> user
        self._released: list[tuple[str, str]] = []
        self._nursery: trio.Nursery | None = None
        link.on_message("m", self._on_message)
        link.on_message("k", self._on_marker)
        link.on_message("u", self._on_user_message)
        link.on_message("d", self._on_disconnect)
        link.on_recovered(self._recovered)

    # -- running ---------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self._load_epoch()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._drain_outbox)
            nursery.start_soon(self._renew_connections)
            task_status.started()
            await trio.sleep_forever()

    async def _load_epoch(self) -> None:
        _, epoch = await self.link.batch([["SET", self.keys.epoch, self.epoch, "NX"],
                                          ["GET", self.keys.epoch]])
        epoch = text(epoch)
        if epoch != self.epoch:
            self.epoch = epoch
        log.info("cluster epoch %s", self.epoch)

    async def _recovered(self) -> None:
        old = self.epoch
        await self._load_epoch()
        if self.epoch != old:
            # Redis lost its data (no AOF, or a new server): seqs start afresh.
            log.warning("the cluster's epoch changed (%s -> %s): Redis lost its data",
                        old, self.epoch)
            self._seqs.clear()
            self._recent.clear()
        self._wake_outbox()

    def reconfigure(self, *, history_size: int) -> None:
        self.history_size = history_size

    # -- the bus ---------------------------------------------------------------------------------

    def _on_message(self, fields: list[str]) -> None:
        topic, type_, seq, text_ = fields[1], fields[2], int(fields[3]), "\n".join(fields[4:])
        held = self._held.get(topic)
        if held is not None:  # a gap of this topic is being filled: keep the order
            held.append((seq, type_, text_))
            return
        last = self._seqs.get(topic)
        if last is not None and seq <= last:
            return  # delivered already (a replay's or a gap filler's copy)
        if last is not None and seq > last + 1 and self._nursery is not None:
            self._held[topic] = [(seq, type_, text_)]
            self._nursery.start_soon(self._fill_gap, topic, last)
            return
        self._deliver(topic, type_, seq, text_)

    def _deliver(self, topic: str, type_: str, seq: int, text_: str) -> None:
        if topic not in self._seqs and len(self._seqs) >= MAX_TOPICS_TRACKED:
            for name in list(self._seqs)[: MAX_TOPICS_TRACKED // 10]:
                if not self.delivery.subscribers(name):
                    self._seqs.pop(name, None)
                    self._recent.pop(name, None)
        self._seqs[topic] = seq
        recent = self._recent.get(topic)
        if recent is None:
            recent = self._recent[topic] = deque(maxlen=RECENT_PER_TOPIC)
        recent.append((seq, text_))
        self.delivery.deliver(topic, type_, text_)

    async def _fill_gap(self, topic: str, last: int) -> None:
        """Read the messages of ``topic`` after ``last`` that the bus lost, deliver them, then
        the ones held back meanwhile."""
        _, log_key = self.keys.topic(topic)
        try:
            with trio.fail_after(5):
                entries = await self.link.call("XRANGE", log_key, f"{last + 1}-0", "+")
        except (BackendUnavailable, trio.TooSlowError):
            entries = []
        held = self._held.pop(topic, [])
        types = {seq: type_ for seq, type_, _ in held}
        for entry_id, values in _entries(entries):
            seq = int(entry_id.split("-")[0])
            if seq <= self._seqs.get(topic, 0):
                continue
            self.gaps_filled += 1
            self._deliver(topic, types.get(seq) or _type_of(values), seq, values)
        for seq, type_, text_ in held:
            if seq > self._seqs.get(topic, 0):
                self._deliver(topic, type_, seq, text_)

    def _on_marker(self, fields: list[str]) -> None:
        if fields[0] == self.node_id:
            event = self._markers.pop(fields[1], None)
            if event is not None:
                event.set()

    def _on_user_message(self, fields: list[str]) -> None:
        self.delivery.deliver_to_user(fields[1], "\n".join(fields[2:]))

    def _on_disconnect(self, fields: list[str]) -> None:
        self.delivery.disconnect_user(fields[1], "\n".join(fields[2:]))

    # -- publishing ------------------------------------------------------------------------------

    def _publish_call(self, topic: str, type_: str, data_json: str,
                      at: float | None) -> tuple[list[str], list[str | bytes]]:
        """(keys, args) of publish.lua."""
        meta, log_key = self.keys.topic(topic)
        ts = iso(self.wall_clock() if at is None else at)
        return [meta, log_key], [
            self.link.bus_channel, self.node_id, quote(topic), quote(type_), quote(ts or ""),
            data_json, str(self.history_size), topic, type_]

    def publish_nowait(self, topic: str, type_: str, data_json: str, *,
                       at: float | None = None) -> None:
        if len(self._outbox) >= MAX_OUTBOX:
            dropped = self._outbox.popleft()
            log.warning("outbox full while Redis is unreachable: dropped a %s on %s",
                        dropped[1], dropped[0])
        self._outbox.append((topic, type_, data_json, at))
        self._wake_outbox()

    def _wake_outbox(self) -> None:
        self._outbox_wake.set()

    async def _drain_outbox(self) -> None:
        while True:
            await self._outbox_wake.wait()
            self._outbox_wake = trio.Event()
            while self._outbox:
                batch = list(self._outbox)
                try:
                    results = await self.link.batch(
                        [self.link.script_command(SCRIPTS["publish"], *self._publish_call(*item))
                         for item in batch])
                except BackendUnavailable:
                    await trio.sleep(OUTBOX_RETRY_SECONDS)
                    continue
                for _ in batch:
                    self._outbox.popleft()
                for result in results:
                    if isinstance(result, Exception):
                        log.error("publish failed: %s", result)
                self.messages_published += len(batch)

    async def publish(self, topic: str, type_: str, data_json: str, *,
                      at: float | None = None) -> tuple[int, int]:
        seq = await self.link.script(SCRIPTS["publish"],
                                     *self._publish_call(topic, type_, data_json, at))
        self.messages_published += 1
        return int(seq), self.delivery.subscribers(topic)

    async def replay(self, topic: str, since: int | None) -> Replay:
        """What a subscriber who saw up to ``since`` missed, and whether that is complete;
        see the module's text for how nothing is missed or repeated at the join."""
        meta, log_key = self.keys.topic(topic)
        marker = secrets.token_hex(8)
        arrived = self._markers[marker] = trio.Event()
        try:
            answer = await self.link.script(SCRIPTS["replay"], [meta, log_key], [
                str(since if since is not None else -1), self.link.bus_channel, self.node_id,
                marker])
        except BackendUnavailable:
            self._markers.pop(marker, None)
            return Replay(self._seqs.get(topic, 0), [], False)
        seq, oldest = int(answer[0]), int(answer[1])
        texts = [text(t) for t in answer[2:]]
        with trio.move_on_after(MARKER_WAIT_SECONDS):
            await arrived.wait()
        self._markers.pop(marker, None)
        if not arrived.is_set():
            return Replay(seq, [], False)
        self._seqs.setdefault(topic, seq)
        # Delivered here after the read (to the subscribers already there): add them.
        delivered = self._seqs.get(topic, seq)
        extra = [t for s, t in self._recent.get(topic, ()) if seq < s <= delivered]
        complete_extra = len(extra) == max(0, delivered - seq)
        top = max(seq, delivered)
        if since is None:
            return Replay(top, [], False)
        if since == seq:
            return Replay(top, extra, complete_extra)
        if since > seq or oldest == 0 or oldest > since + 1:
            return Replay(top, [], False)
        return Replay(top, texts + extra, complete_extra)

    def topic_seq(self, topic: str) -> int:
        return self._seqs.get(topic, 0)

    # -- users -----------------------------------------------------------------------------------

    async def _cluster_connections(self, user_id: str, then: list[str]) -> int:
        """The user's live connections on every node; ``then`` is published on the bus in
        the same round trip."""
        now_ms = self.wall_clock() * 1000
        conns, _ = await self.link.batch([["HGETALL", self.keys.user_connections(user_id)],
                                          ["PUBLISH", self.link.bus_channel, "\n".join(then)]])
        values = conns.values() if isinstance(conns, dict) else list(conns or [])[1::2]
        return sum(1 for v in values if float(text(v)) >= now_ms)

    async def send_to_user(self, user_id: str, type_: str, data_json: str) -> int:
        text_ = envelope(type_, None, None, iso(self.wall_clock()), data_json)
        n = await self._cluster_connections(user_id, ["u", self.node_id, user_id, text_])
        self.messages_published += 1
        return n

    async def disconnect_user(self, user_id: str, reason: str) -> int:
        return await self._cluster_connections(user_id, ["d", self.node_id, user_id, reason])

    def _field(self, connection_id: str) -> str:
        return f"{self.node_id}/{connection_id}"

    async def claim_connection(self, user_id: str, connection_id: str, limit: int) -> bool:
        field = self._field(connection_id)
        if not self.link.up:
            ok = self.delivery.user_connections(user_id) < limit
        else:
            try:
                ok = bool(int(await self.link.script(
                    SCRIPTS["claim"], [self.keys.user_connections(user_id)],
                    [field, str(int(self.wall_clock() * 1000)),
                     str(int(CONN_TTL_SECONDS * 1000)), str(limit)])))
            except BackendUnavailable:
                ok = self.delivery.user_connections(user_id) < limit
        if ok:
            self._claims[field] = user_id
        return ok

    def release_connection(self, user_id: str, connection_id: str) -> None:
        field = self._field(connection_id)
        if self._claims.pop(field, None) is not None:
            self._released.append((user_id, field))

    async def _renew_connections(self) -> None:
        """Renew this node's entries (so that they outlive no dead node) and drop released
        ones, every CONN_RENEW_SECONDS."""
        while True:
            await trio.sleep(CONN_RENEW_SECONDS)
            await self.renew_connections()

    async def renew_connections(self) -> None:
        expires = str(int((self.wall_clock() + CONN_TTL_SECONDS) * 1000))
        ttl = str(int(CONN_TTL_SECONDS * 1000))
        released, self._released = self._released, []
        commands: list[list[str | bytes]] = [
            ["HDEL", self.keys.user_connections(user), field] for user, field in released]
        for field, user in self._claims.items():
            key = self.keys.user_connections(user)
            commands += [["HSET", key, field, expires], ["PEXPIRE", key, ttl]]
        try:
            await self.link.batch(commands)
        except BackendUnavailable:
            self._released = released + self._released

    def stats(self) -> dict[str, int]:
        return {"messagesPublished": self.messages_published, "topics": len(self._seqs)}


def _entries(reply: Any) -> list[tuple[str, str]]:
    """XRANGE's answer → [(id, the envelope text)]."""
    out: list[tuple[str, str]] = []
    items = reply.items() if isinstance(reply, dict) else (reply or [])
    for item in items:
        entry_id, values = item
        if isinstance(values, dict):
            value = next(iter(values.values()))
        elif values and isinstance(values[0], list | tuple):
            value = values[0][1]
        else:
            value = values[1]
        out.append((text(entry_id), text(value)))
    return out


def _type_of(envelope_text: str) -> str:
    import json

    try:
        return str(json.loads(envelope_text).get("type", ""))
    except ValueError:
        return ""
