"""Windowed subscriptions to ``servers``: each dashboard gets only its page of the fleet.

``{"action": "subscribe", "topic": "servers", "view": {filter, q, tag, sort, offset, limit}}``
answers ``SUBSCRIBED {topic, seq, recovered, view}`` and at once ``SERVER_WINDOW {view, counts,
servers}`` (``counts``: total, online, offline, unknown, matching; ``servers``: the page's
client views, in order). Then every ``push.interval_seconds`` the page is pushed again *only if*
something in it changed (a client of the page, the page's membership or order, the counts);
otherwise nothing is sent. Subscribing again with another view replaces the view (the new page
comes at once); a subscribe without ``view`` goes back to the plain ``SERVER_LIST`` (and delta)
mode, which stays as it was for clients that ask for it.

Each distinct view is computed and serialized once per push, whoever holds it (from the
registry's cached client JSON); ``SERVER_WINDOW`` is conflatable (a newer page replaces a
queued one). Pages come from :class:`rpad.core.window.WindowEngine`, built on the first
windowed subscription and kept current from the registry's change journal.

Resource handling: :meth:`WindowPusher.run` runs in the daemon's periodic nursery and sleeps
while nobody holds a view. Error handling: a bad view is ``ERROR {code: "invalid_field"}``
naming each bad field (``view.sort``, ...); the connection stays open.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from ..core.access import may_subscribe
from ..core.errors import ValidationFailed
from ..core.jsonenc import dumps, envelope
from ..core.registry import Registry
from ..core.times import iso
from ..core.topics import SERVER_WINDOW, SUBSCRIBED, TOPIC_SERVERS
from ..core.window import View, Window, WindowEngine, parse_view
from .actions import Hub, on_subscribe
from .fanout import Fanout

if TYPE_CHECKING:
    from .connection import Connection

_KEY = f"{TOPIC_SERVERS} {SERVER_WINDOW}"


class WindowPusher:
    """The windowed subscriptions of this node's hub, and their pushes."""

    def __init__(self, fanout: Fanout, registry: Registry,
                 interval_seconds: Callable[[], float]) -> None:
        self.fanout = fanout
        self.registry = registry
        self.interval_seconds = interval_seconds
        self.engine: WindowEngine | None = None
        self.views: dict[Connection, View] = {}
        self.holders: dict[View, set[Connection]] = {}
        # What each view's holders were last sent: (page ids and revisions, counts, views'
        # generation).
        self._sent: dict[View, tuple[Any, ...]] = {}
        self._active = trio.Event()
        # Pages built and pushed (for the stats and the benchmarks).
        self.builds = 0
        self.pushes = 0
        fanout.leave_hooks.append(self._left)

    # -- subscriptions -------------------------------------------------------------------------

    async def on_subscribe(self, hub: Hub, c: Connection, msg: dict[str, Any]) -> None:
        """The ``subscribe`` action: windowed for ``servers`` with a ``view``, else the plain
        one (which also ends a windowed subscription)."""
        if msg.get("topic") != TOPIC_SERVERS or "view" not in msg:
            if msg.get("topic") == TOPIC_SERVERS:
                self._forget(c)
            await on_subscribe(hub, c, msg)
            return
        if not may_subscribe(c.principal, TOPIC_SERVERS):
            hub.error(c, "forbidden", f"this token may not subscribe to {TOPIC_SERVERS}",
                      topic=TOPIC_SERVERS)
            return
        try:
            view = parse_view(msg["view"])
        except ValidationFailed as exc:
            hub.error(c, "invalid_field", str(exc), topic=TOPIC_SERVERS, details=exc.details)
            return
        if c in self.fanout.plain_subscribers(TOPIC_SERVERS):
            self.fanout.leave(c, TOPIC_SERVERS)  # from the full list to a window
        self._forget(c)
        self.views[c] = view
        self.holders.setdefault(view, set()).add(c)
        c.topics.add(TOPIC_SERVERS)
        self._active.set()
        state = self.fanout.state[TOPIC_SERVERS]
        hub.reply(c, SUBSCRIBED, {"topic": TOPIC_SERVERS, "seq": state.seq,
                                  "recovered": msg.get("since") is not None,
                                  "view": view.as_json()})
        if c.close_code is None:
            engine = self._engine()
            engine.refresh()
            window = engine.window(view)
            if view not in self._sent:
                self._sent[view] = self._signature(window)
            if c.outbox.offer_latest(_KEY, self._text(view, window)):
                self.fanout.counters.conflated += 1

    def _left(self, c: Connection, topic: str) -> None:
        if topic == TOPIC_SERVERS:
            self._forget(c)

    def _forget(self, c: Connection) -> None:
        view = self.views.pop(c, None)
        if view is None:
            return
        holders = self.holders.get(view)
        if holders is not None:
            holders.discard(c)
            if not holders:
                del self.holders[view]
                self._sent.pop(view, None)
        if not self.views:
            self._active = trio.Event()

    # -- pushing -------------------------------------------------------------------------------

    def _engine(self) -> WindowEngine:
        if self.engine is None:
            self.engine = WindowEngine(self.registry)
        return self.engine

    def _signature(self, window: Window) -> tuple[Any, ...]:
        get = self.registry.get
        page = tuple((cid, c.revision if (c := get(cid)) is not None else -1)
                     for cid in window.ids)
        return (page, tuple(window.counts.values()), self.registry.view_generation,
                self.registry.max_clients)

    def _text(self, view: View, window: Window) -> str:
        get, vj = self.registry.get, self.registry.view_json
        servers = ",".join(vj(c) for cid in window.ids if (c := get(cid)) is not None)
        cap = self.registry.max_clients
        data = (f'{{"view":{dumps(view.as_json())},"counts":{dumps(window.counts)},'
                f'"servers":[{servers}]'
                + ("" if cap is None else f',"maxClients":{int(cap)}') + "}")
        self.builds += 1
        state = self.fanout.state[TOPIC_SERVERS]
        state.seq += 1
        return envelope(SERVER_WINDOW, TOPIC_SERVERS, state.seq,
                        iso(self.fanout.wall_clock()), data)

    def push(self) -> int:
        """One round: every view's page, sent to its holders if it changed. Returns the views
        pushed."""
        if not self.holders:
            return 0
        engine = self._engine()
        engine.refresh()
        pushed = 0
        for view, holders in self.holders.items():
            window = engine.window(view)
            sig = self._signature(window)
            if self._sent.get(view) == sig:
                continue
            self._sent[view] = sig
            text = self._text(view, window)
            pushed += 1
            for c in holders:
                if c.outbox.offer_latest(_KEY, text):
                    self.fanout.counters.conflated += 1
        self.pushes += pushed
        self.fanout.published += pushed
        return pushed

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Push every ``interval_seconds()`` while anyone holds a view (drift-free cadence)."""
        task_status.started()
        while True:
            await self._active.wait()
            deadline = trio.current_time()
            while self.views:
                deadline += self.interval_seconds()
                await trio.sleep_until(deadline)
                self.push()
