"""A role that one node of the cluster holds at a time (the sweep, the alerts), under a lease.

The lease is a Redis key holding ``<node>|<token>`` with a TTL (``lua/lease.lua``): a node
takes it when it is free, and keeps it by renewing it every :data:`LEASE_RENEW_SECONDS`; a
node that dies loses it within :data:`LEASE_TTL_SECONDS`. Each new holder gets a new fencing
token (a counter that only grows), so whatever a holder writes can be refused once a newer
holder exists (each role checks the token its own way: the sweep per presence shard, the
alerts against the lease key itself).

A holder that cannot reach Redis keeps its token (it cannot know whether it lapsed); its
writes are fenced. When Redis answers again the holder either renews its lease or, if it
lapsed, takes a new one (a new token: a new term) or finds another node holding it.

Resource handling: :meth:`Lease.run` takes and keeps the lease until cancelled, then gives it
back (the next holder need not wait for the TTL). Error handling: an unreachable Redis is
never raised here (the next round tries again).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from ...core.errors import BackendUnavailable
from .link import Link, text
from .scripts import SCRIPTS

log = logging.getLogger(__name__)

LEASE_TTL_SECONDS = 6.0
LEASE_RENEW_SECONDS = 2.0
RELEASE_TIMEOUT_SECONDS = 1.0


class Lease:
    """This node's claim on one role (``role`` names it in the logs)."""

    def __init__(self, link: Link, key: str, tokens_key: str, *, node_id: str, role: str,
                 ttl_seconds: float = LEASE_TTL_SECONDS,
                 renew_seconds: float = LEASE_RENEW_SECONDS) -> None:
        self.link = link
        self.key = key
        self.tokens_key = tokens_key
        self.node_id = node_id
        self.role = role
        self.ttl_seconds = ttl_seconds
        self.renew_seconds = renew_seconds
        # Our token while we hold the lease (or believe so: Redis unreachable), else None.
        self.token: int | None = None
        # Who holds it, as last seen (None: nobody, or not known yet).
        self.holder: str | None = None
        # Called with the new token (or None) whenever ours changes.
        self.on_change: list[Callable[[int | None], None]] = []
        self._changed = trio.Event()
        # When (trio time) Redis last confirmed that we hold it.
        self.confirmed_at: float | None = None

    @property
    def value(self) -> str:
        """The lease key's value while we hold it (scripts compare it)."""
        return f"{self.node_id}|{self.token}"

    def _set(self, token: int | None) -> None:
        if token == self.token:
            return
        self.token = token
        for callback in self.on_change:
            callback(token)
        self._changed.set()
        self._changed = trio.Event()

    def drop(self) -> None:
        """Forget our token (a write was fenced: a newer holder exists)."""
        if self.token is not None:
            log.warning("a newer %s lease holder exists; this node (%s) stops", self.role,
                        self.node_id)
        self._set(None)

    async def changed(self) -> None:
        """Wait until our token changes."""
        await self._changed.wait()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Take the lease when it is free and keep it while we live; give it back at the end."""
        try:
            await self.keep(task_status=task_status)
        finally:
            with trio.CancelScope(shield=True):
                await self.release()

    async def keep(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Take the lease when it is free and keep it, until cancelled (it is not given back:
        see :meth:`release`)."""
        task_status.started()
        while True:
            await self.hold()
            await trio.sleep(self.renew_seconds)

    async def confirmed(self, token: int) -> bool:
        """True if Redis confirmed that we hold the lease with ``token`` within the last
        ``ttl - renew`` seconds (so it cannot lapse for at least ``renew`` seconds more), or
        does so now; False when it cannot say (unreachable) or another node holds it."""
        if self.token != token:
            return False
        at = self.confirmed_at
        if at is not None and trio.current_time() - at <= self.ttl_seconds - self.renew_seconds:
            return True
        return await self.hold() and self.token == token

    async def release(self) -> None:
        """Give the lease back if we hold it (at most :data:`RELEASE_TIMEOUT_SECONDS`)."""
        if self.token is None:
            return
        with trio.move_on_after(RELEASE_TIMEOUT_SECONDS):
            try:
                await self.link.script(SCRIPTS["release"], [self.key],
                                       [self.node_id, str(self.token)])
            except BackendUnavailable:
                pass
        self._set(None)

    async def hold(self) -> bool:
        """Take or renew the lease; True while this node holds it."""
        try:
            answer = await self.link.script(
                SCRIPTS["lease"], [self.key, self.tokens_key],
                [self.node_id, str(int(self.ttl_seconds * 1000)),
                 str(self.token) if self.token is not None else ""])
        except BackendUnavailable:
            return False  # it may lapse meanwhile: writes are fenced
        token = int(answer[0])
        if token:
            if self.token != token:
                log.info("this node (%s) now holds the %s lease (token %d)", self.node_id,
                         self.role, token)
            self.holder = self.node_id
            self.confirmed_at = trio.current_time()
            self._set(token)
            return True
        if self.token is not None:
            log.warning("lost the %s lease to %s", self.role, text(answer[1]))
        self.holder = text(answer[1])
        self._set(None)
        return False
