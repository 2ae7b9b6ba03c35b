"""Failed authentications per address, counted by every node together (brute force spread
over the nodes behind a load balancer is still seen).

Both methods of the Protocol are on every request's path and never wait: ``failed`` counts on
this node at once (:class:`~rpad.backend.local.failures.LocalFailureCounter`) and queues the
failure for Redis, where ``lua/failure.lua`` keeps each address's failures of the last minute;
at the limit it tells every node on the bus that the address is blocked until its oldest
failure is a minute old. ``blocked`` answers from this node's memory: its own count, or a
block announced by any node.

Resource handling: :meth:`RedisFailureCounter.run` reports queued failures (one pipelined
round trip for all that queued meanwhile) until cancelled. Memory is bounded
(:data:`MAX_BLOCKED`, :data:`MAX_QUEUED`). Error handling: while Redis is unreachable,
failures are counted on this node only (queued ones beyond MAX_QUEUED are dropped).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable

import trio

from ...core.errors import BackendUnavailable
from ..local.failures import WINDOW_SECONDS, LocalFailureCounter
from .keys import Keys
from .link import Link
from .scripts import SCRIPTS

MAX_BLOCKED = 100_000
MAX_QUEUED = 10_000


class RedisFailureCounter:
    """:class:`~rpad.backend.base.FailureCounter` shared through Redis."""

    def __init__(self, link: Link, keys: Keys, max_per_window: int, *, node_id: str,
                 wall_clock: Callable[[], float] = time.time,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.link = link
        self.keys = keys
        self.node_id = node_id
        self.wall_clock = wall_clock
        self.local = LocalFailureCounter(max_per_window, clock)
        self._blocked: dict[str, float] = {}  # address -> wall-clock end of its block
        self._queue: list[tuple[str, float]] = []
        self._wake = trio.Event()
        link.on_message("b", self._on_blocked)

    @property
    def max_per_window(self) -> int:
        return self.local.max_per_window

    @max_per_window.setter
    def max_per_window(self, value: int) -> None:
        self.local.max_per_window = value

    def blocked(self, peer: str) -> float | None:
        own = self.local.blocked(peer)
        until = self._blocked.get(peer)
        if until is not None:
            left = until - self.wall_clock()
            if left <= 0:
                del self._blocked[peer]
            elif own is None or left > own:
                return left
        return own

    def failed(self, peer: str) -> None:
        self.local.failed(peer)
        if len(self._queue) < MAX_QUEUED:
            self._queue.append((peer, self.wall_clock()))
            self._wake.set()

    def _on_blocked(self, fields: list[str]) -> None:
        peer, until = fields[1], float(fields[2]) / 1000
        if len(self._blocked) >= MAX_BLOCKED:
            self._blocked.clear()
        self._blocked[peer] = max(until, self._blocked.get(peer, 0.0))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            queued, self._queue = self._queue, []
            window = str(int(WINDOW_SECONDS * 1000))
            limit = str(self.local.max_per_window)
            commands = [self.link.script_command(
                SCRIPTS["failure"], [self.keys.failures(peer)],
                [str(int(at * 1000)), window, limit, secrets.token_hex(6),
                 self.link.bus_channel, self.node_id, peer]) for peer, at in queued]
            try:
                await self.link.batch(commands)
            except BackendUnavailable:
                pass  # counted on this node meanwhile
