"""Alerts in cluster mode: one alerting node for the whole cluster, everything else shared.

:class:`ClusterAlerts` is :class:`~rpad.service.alerts.Alerts` over a
:class:`~rpad.backend.base.SharedAlertStore`. On every node it:

- marks the events of silenced clients (``silenced``, ``silencedUntil``) from its copy of the
  shared silences, kept current from the backend's change notices;
- answers the admin API from the shared state: silences and overrides are read through
  before they are listed, test alerts go into the shared outbox, the delivery log, the
  deliveries pending and each target's counters are the cluster's.

On the node that holds the alert lease (one at a time, :meth:`SharedAlertStore.lead`), a
*term* runs the policy and the deliveries:

- it takes over the policy's memory and the outbox where the previous alerting node left
  them, and follows every transition of the cluster, in order, from where that memory last
  saw them (:meth:`~rpad.backend.base.AlertTerm.transitions`); when they were not all kept
  (the first term ever, or a very long gap), it rebuilds the memory from the clients'
  states, as a single node does after a restart;
- each step (transitions taken in, or alerts raised by a tick) saves the policy's changed
  memory, how far the transitions were read and the deliveries it queued in one atomic,
  fenced write; a delivery is attempted, and a NOTIFICATION published, only once that write
  is done, so a node that dies leaves no alert half-decided: the next one either finds it
  queued (and delivers it, with its delivery id) or decides it again;
- deliveries queued through another node (test alerts) are taken up when that node says so,
  and every :data:`PICK_UP_SECONDS` anyway.

Resource handling: :meth:`ClusterAlerts.run` follows the shared settings and runs terms while
this node holds the lease, until cancelled; a term's tasks (policy, workers) are cancelled
when its lease is lost. Error handling: while the backend is unreachable the API's writes
answer 503 (BackendUnavailable) and reads show this node's last copy; the alerting node's
steps wait and are written when it is back, unless the lease was lost meanwhile (then the
next alerting node carries on from the last step written).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import trio

from ..backend.base import AlertState, AlertTerm, OutboxRow, SharedAlertStore, TermStart, Transition
from ..config import AlertsConfig
from ..core.alert_policy import AlertPolicy
from ..core.alert_text import Notice, test_payload
from ..core.errors import BackendUnavailable
from ..core.model import (
    CLIENT_CONNECTED,
    CLIENT_DISCONNECTED,
    CLIENT_REMOVED,
    OFFLINE,
    ONLINE,
    Client,
    Event,
)
from ..core.silences import Silence
from ..core.times import iso
from .alerts import Alerts, NoticeSink, _record_json, override_of, silence_of
from .outbox import Outbox, new_id, pending_json

log = logging.getLogger(__name__)

# The alerting node looks for deliveries queued through other nodes at least this often.
PICK_UP_SECONDS = 30.0
_COUNTERS = ("delivered", "failed", "dropped", "expired", "attempts")


class ClusterAlerts(Alerts):
    def __init__(self, cfg: AlertsConfig, store: SharedAlertStore, notices: NoticeSink | None,
                 *, wall_clock: Callable[[], float],
                 client_view: Callable[[str], dict[str, Any] | None] = lambda _cid: None) -> None:
        super().__init__(cfg, store, notices, wall_clock=wall_clock, client_view=client_view)
        self.shared = store
        self.term: AlertTerm | None = None
        self.terms = 0
        self._view: Callable[[Client], dict[str, Any]] = lambda c: {"clientId": c.client_id}
        # From a rebuild: each client's version in the view then (older transitions skipped).
        self._skip: dict[str, int] = {}
        self._held_notices: list[Notice] = []
        self._settings_changed = trio.Event()
        self._outbox_changed = trio.Event()
        self._term_nursery: trio.Nursery | None = None
        store.on_changed(self._changed)

    @property
    def holder(self) -> str | None:
        return self.shared.holder

    # -- the shared settings (every node) --------------------------------------------------------

    def _changed(self, kind: str) -> None:
        if kind == "outbox":
            self._outbox_changed.set()
        else:
            self._settings_changed.set()

    async def load(self, clients: Iterable[Client],
                   view: Callable[[Client], dict[str, Any]]) -> None:
        """At start: the shared silences and overrides (the policy and the outbox are the
        alerting node's, taken up when this node's term begins)."""
        self._view = view
        self._apply_settings(await self.shared.settings())

    async def refresh(self) -> None:
        """Silences and overrides as the backend has them now (this node's last copy while
        it is unreachable)."""
        try:
            self._apply_settings(await self.shared.settings())
        except BackendUnavailable:
            pass

    def _apply_settings(self, state: AlertState) -> None:
        now = self.wall_clock()
        found: dict[str, Silence] = {}
        for body in state.silences:
            s = silence_of(body)
            if s.ends_at > now:
                found[s.id] = s
        book = self.silences
        for sid in [sid for sid in book.silences if sid not in found]:
            book.remove(sid)
        for s in found.values():
            if book.silences.get(s.id) != s:
                book.add(s)
        overrides = {(scope, name): override_of(fields) for scope, name, fields in state.overrides}
        if overrides != self.api_overrides:
            self.api_overrides = overrides
            self._apply_policy()
        self._wake.set()

    async def _follow_settings(self) -> None:
        while True:
            await self._settings_changed.wait()
            self._settings_changed = trio.Event()
            await self.refresh()

    async def delete_silence(self, silence_id: str, who: str) -> Silence | None:
        await self.refresh()  # made through another node a moment ago, perhaps
        return await super().delete_silence(silence_id, who)

    async def delete_override(self, scope: str, name: str, who: str) -> bool:
        await self.refresh()
        return await super().delete_override(scope, name, who)

    def _prune(self) -> None:
        for s in self.silences.prune(self.wall_clock()):
            try:
                self.store.delete_silence(s.id)
            except BackendUnavailable:
                pass  # ended anyway; the next prune or node deletes it

    # -- the admin API's shared answers ----------------------------------------------------------

    async def send_test(self, target: str, who: str) -> str:
        channel = self._test_target(target, await self.shared.pending())
        alert_id, did, now = new_id(), new_id(), self.wall_clock()
        row = OutboxRow(did, channel.name, now, 0, now, None,
                        {**test_payload(now, alert_id, "", target), "alertId": alert_id,
                         "deliveryId": did})
        await self.shared.add_external(row)
        log.info("test alert %s for %s requested by %s", did, target, who)
        return did

    async def deliveries(self, target: str | None, limit: int) -> dict[str, Any]:
        """The cluster's: counters of every node's deliveries, the shared outbox, the log."""
        names = [n for n in self.outbox.queues if target in (None, n)]
        counters = await self.shared.counters()
        rows = [r for r in await self.shared.pending() if r.target in names]
        records = await self.shared.deliveries(target, limit)
        targets = []
        for name in names:
            c = counters.get(name, {})
            channel = self.outbox.queues[name].channel
            targets.append({"kind": channel.kind, "target": name, "label": channel.label,
                            **{k: c.get(k, 0) for k in _COUNTERS},
                            "queued": sum(1 for r in rows if r.target == name)})
        return {"targets": targets, "pending": [pending_json(r) for r in rows],
                "log": [_record_json(r) for r in records]}

    # -- transitions (every node marks its own; the alerting node's policy sees all) -------------

    def client_transition(self, event: Event) -> None:
        if event.type == CLIENT_REMOVED:
            return
        if event.type in (CLIENT_CONNECTED, CLIENT_DISCONNECTED):
            until = self.silences.silenced_until(event.client_id, event.data.get("tags") or (),
                                                 event.at)
            if until is not None:
                event.data["silenced"] = True
                event.data["silencedUntil"] = iso(until)

    def _event(self, t: Transition) -> Event:
        """A recorded transition as the policy takes it: the client's current view for the
        text of its alerts, with the transition's own state and times."""
        data = dict(self.client_view(t.client_id) or {"clientId": t.client_id})
        if t.type == CLIENT_DISCONNECTED:
            data.update(status=OFFLINE, offlineSince=iso(t.at))
        elif t.type == CLIENT_CONNECTED:
            data.update(status=ONLINE, onlineSince=iso(t.at))
        data.pop("reason", None)
        if t.reason is not None:
            data["reason"] = t.reason
        if t.previous_status is not None:
            data["previousStatus"] = t.previous_status
        return Event(t.type, t.client_id, t.at, data, t.reason, t.previous_status)

    def _fresh(self, t: Transition) -> bool:
        """Not one the rebuilt memory already holds."""
        seen = self._skip.get(t.client_id)
        if seen is None:
            return True
        if t.type != CLIENT_REMOVED and t.version <= seen:
            return False
        del self._skip[t.client_id]
        return True

    # -- the alerting node's term ----------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._follow_settings)
            await nursery.start(self.shared.lead, self._term)
            task_status.started()

    def _fresh_policy(self) -> AlertPolicy:
        cfg, old = self.config.policy, self.policy
        p = AlertPolicy(cfg.policy(), overrides=self._overrides(), grouping=cfg.grouping(),
                        silences=self.silences)
        p.raised, p.messages, p.deferred = old.raised, old.messages, old.deferred
        p.track_changes()
        return p

    def _fresh_outbox(self, term: AlertTerm) -> Outbox:
        old = self.outbox
        outbox = Outbox(self.store, wall_clock=self.wall_clock,
                        max_age_seconds=lambda: self.config.max_age_seconds,
                        keep_per_target=lambda: self.config.log_per_target,
                        before_attempt=term.settled)
        outbox.set_channels(self.channels)
        for name, q in outbox.queues.items():  # this node's counters go on (metrics)
            before = old.queues.get(name)
            if before is not None:
                for k in _COUNTERS:
                    setattr(q, k, getattr(before, k))
        return outbox

    def _rebuild(self, start: TermStart) -> None:
        """The policy's memory from the clients' states (no complete record of transitions
        since the saved memory, if any): a client whose state differs from the memory's made
        that transition; one offline with no memory is taken as a single node takes it after
        a restart (:meth:`AlertPolicy.load`)."""
        p, now = self.policy, self.wall_clock()
        seen: set[str] = set()
        for c in start.clients or []:
            seen.add(c.client_id)
            known = p.known_status(c.client_id)
            if known is None:
                if c.status == OFFLINE and c.offline_since is not None:
                    p.load(c.client_id, self._view(c), c.status, c.offline_since, None, now)
            elif known != c.status and c.status in (ONLINE, OFFLINE):
                at = c.online_since if c.status == ONLINE else c.offline_since
                data = {**self._view(c), "previousStatus": known}
                p.observe(Event(CLIENT_CONNECTED if c.status == ONLINE else CLIENT_DISCONNECTED,
                                c.client_id, at if at is not None else now, data, None, known))
        for cid in start.states:
            if cid not in seen:
                p.observe(Event(CLIENT_REMOVED, cid, now, {"clientId": cid}))
        self._skip = dict(start.versions)

    async def _term(self, term: AlertTerm) -> None:
        start = await term.start()
        await self.refresh()
        self.terms += 1
        self.policy = self._fresh_policy()
        bad = self.policy.restore(start.states, start.group)
        if bad:
            log.warning("the alert policy's memory of %d clients could not be read; they start "
                        "afresh: %s", len(bad), ", ".join(bad[:5]))
        self._skip = {}
        if start.clients is not None:
            self._rebuild(start)
        outbox = self._fresh_outbox(term)
        self.outbox = outbox
        self.term = term
        outbox.load(start.outbox, why="taken over")
        self._save()
        try:
            async with trio.open_nursery() as nursery:
                self._term_nursery = nursery
                await nursery.start(outbox.run)
                nursery.start_soon(self._ticker)
                nursery.start_soon(self._feed, term)
                nursery.start_soon(self._pick_up)
        finally:
            self.term = None
            self._term_nursery = None
            self._held_notices = []
            idle = self._fresh_outbox(term)
            idle.before_attempt = None
            self.outbox = idle

    def _save(self) -> None:
        """Stage the policy's changed memory with the transitions read so far (after every
        step); the NOTIFICATIONs of the step go out once it is written."""
        term = self.term
        if term is None:
            return
        term.save_policy(*self.policy.take_changes())
        if self._held_notices and self._term_nursery is not None:
            notices, self._held_notices = self._held_notices, []
            self._term_nursery.start_soon(self._publish_when_written, term, notices)

    async def _publish_when_written(self, term: AlertTerm, notices: list[Notice]) -> None:
        await term.settled()
        for notice in notices:
            super()._notice(notice)

    def _notice(self, notice: Notice) -> None:
        if self.term is not None:
            self._held_notices.append(notice)

    def tick(self) -> None:
        if self.term is None:
            return
        super().tick()
        self._save()

    async def _feed(self, term: AlertTerm) -> None:
        """Every transition of the cluster into the policy, in order (with the silences and
        overrides read after them)."""
        while True:
            batch = await term.transitions()
            # The settings as they are now, after these transitions were written: a silence
            # acknowledged before a transition holds for it, whichever node took either.
            await self.refresh()
            for t in batch:
                if self._fresh(t):
                    self.policy.observe(self._event(t))
            self._save()
            self._wake.set()

    async def _pick_up(self) -> None:
        """Deliveries queued through other nodes (test alerts) into this node's queues."""
        while True:
            with trio.move_on_after(PICK_UP_SECONDS):
                await self._outbox_changed.wait()
            self._outbox_changed = trio.Event()
            try:
                rows = await self.shared.pending()
            except BackendUnavailable:
                continue
            known = self.outbox.known_ids()
            fresh = [r for r in rows if r.delivery_id not in known]
            if fresh:
                self.outbox.load(fresh, why="queued through other nodes")
