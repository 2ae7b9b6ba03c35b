"""Alerts (SPEC §6, issue 14): the alert policy between presence transitions and every channel.

:class:`Alerts` is the :class:`~rpad.service.presence.AlertSink`. ``client_transition`` is
called synchronously on the heartbeat and sweeper paths; it marks the event ``silenced`` (with
``silencedUntil``) when a silence or maintenance window covers the client, and hands the
transition to the policy (:class:`~rpad.core.alert_policy.AlertPolicy`). It never waits. A
task (:meth:`Alerts.run`) sleeps until the policy's next tick — exactly then, or at once when a
transition or a silence change may have brought it forward — and sends what the policy raises:

- to the ``notifications`` topic as a ``NOTIFICATION`` (the dashboards' toasts), filtered by
  ``[alerts.notifications]``;
- to every target that accepts it (its ``events`` and ``min_level``) through the durable
  :class:`~rpad.service.outbox.Outbox`: webhooks, email, Apprise.

It also holds what the admin API changes: silences (``/api/v1/silences``) and policy
overrides per tag and per client (``/api/v1/alerts/policies``), persisted in the
:class:`~rpad.backend.base.AlertStore`; and sends test alerts to configured targets only.

Resource handling: :meth:`run` runs the ticker and the outbox's workers until cancelled;
:meth:`aclose` lets deliveries in flight finish first. Error handling: a delivery failure is
the outbox's business (logged, retried, recorded); bad API input raises
:class:`~rpad.core.errors.ValidationFailed`; a bug in the ticker crashes the nursery like any
other.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import attrs
import trio

from ..backend.base import AlertStore, DeliveryRecord, OutboxRow
from ..config import AlertsConfig
from ..config_alerts import override_problems
from ..core.alert_policy import (
    LEVELS,
    POLICY_FIELDS,
    Alert,
    AlertPolicy,
    Overrides,
    PolicyOverride,
    level_rank,
)
from ..core.alert_text import Notice, notice_for, payload, test_payload
from ..core.errors import Conflict, NotFound, ValidationFailed
from ..core.model import CLIENT_CONNECTED, CLIENT_DISCONNECTED, CLIENT_REMOVED, Client, Event
from ..core.silences import Match, Silence, SilenceBook, parse_silence
from ..core.times import iso, parse_iso
from ..core.validation import Fields, kind_of
from .channels import Channel, build_channels
from .outbox import Outbox, new_id

log = logging.getLogger(__name__)

# Ended silences are let go this often (they no longer silence anything anyway).
PRUNE_INTERVAL_SECONDS = 3600.0
SCOPES = ("tag", "client")


class NoticeSink(Protocol):
    """Where dashboards' notifications go (:class:`~rpad.service.feeds.Feeds`)."""

    def publish_notice(self, notice: Notice) -> None: ...


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w.title() for w in rest)


_OVERRIDE_FIELDS = {_camel(n): n for n in POLICY_FIELDS}


def parse_override(data: Any) -> PolicyOverride:
    """A policy override from a request body (camelCase fields, null or absent: not
    overridden). Raises ValidationFailed naming each bad field."""
    if not isinstance(data, dict):
        raise ValidationFailed([{"field": "(body)", "message": f"must be a JSON object, got {kind_of(data)}"}])
    errors: list[dict[str, str]] = []
    f = Fields(data, "", errors)
    values: dict[str, Any] = {}
    for camel, name in _OVERRIDE_FIELDS.items():
        if name == "offline_level":
            level = f.string(camel, max_chars=16)
            if level is not None and level not in LEVELS:
                f.fail(camel, f"must be one of {', '.join(LEVELS)}")
            values[name] = level
        elif name in ("flap_transitions", "max_reminders"):
            v = f.number(camel, minimum=0)
            if v is not None and v != int(v):
                f.fail(camel, "must be a whole number")
            values[name] = int(v) if v is not None else None
        else:
            values[name] = f.number(camel, minimum=0)
    for k in data:
        if k not in f.seen:
            f.fail(str(k)[:64], f"is not a policy field ({', '.join(_OVERRIDE_FIELDS)})")
    if not errors:
        o = PolicyOverride(**values)
        for problem in override_problems("", o):
            key, _, message = problem.partition(": ")
            f.fail(_camel(key.lstrip(".")), message)
        if not errors and not o.fields():
            f.fail("(body)", "must set at least one policy field")
    if errors:
        raise ValidationFailed(errors)
    return PolicyOverride(**values)


def _override_json(o: PolicyOverride | None) -> dict[str, Any]:
    return {_camel(k): v for k, v in (o.fields() if o else {}).items()}


class Alerts:
    def __init__(self, cfg: AlertsConfig, store: AlertStore, notices: NoticeSink | None, *,
                 wall_clock: Callable[[], float],
                 client_view: Callable[[str], dict[str, Any] | None] = lambda _cid: None) -> None:
        self.config = cfg
        # A client's current full view (a single client's alert carries it as ``client``).
        self.client_view = client_view
        self.store = store
        self.notices = notices
        self.wall_clock = wall_clock
        self.silences = SilenceBook(windows=[m.window() for m in cfg.maintenance])
        self.api_overrides: dict[tuple[str, str], PolicyOverride] = {}
        self.policy = AlertPolicy(cfg.policy.policy(), overrides=self._overrides(),
                                  grouping=cfg.policy.grouping(), silences=self.silences)
        self.outbox = Outbox(store, wall_clock=wall_clock,
                             max_age_seconds=lambda: self.config.max_age_seconds,
                             keep_per_target=lambda: self.config.log_per_target)
        self.outbox.set_channels(build_channels(cfg.webhooks, cfg.email, cfg.apprise))
        self._wake = trio.Event()
        self.notifications_sent = 0

    # -- policy overrides ----------------------------------------------------------------------

    def _overrides(self) -> Overrides:
        """The config's overrides with the admin API's on top (field by field)."""
        tags = dict(self.config.policy.tags)
        clients = dict(self.config.policy.clients)
        for (scope, name), o in self.api_overrides.items():
            table = tags if scope == "tag" else clients
            base = table.get(name)
            table[name] = attrs.evolve(base, **o.fields()) if base is not None else o
        return Overrides(tags, clients)

    def _apply_policy(self) -> None:
        cfg = self.config.policy
        self.policy.reconfigure(cfg.policy(), self._overrides(), cfg.grouping(), self.wall_clock())
        self._wake.set()

    async def set_override(self, scope: str, name: str, o: PolicyOverride, who: str) -> None:
        self.store.put_override(scope, name, _override_json(o))
        self.api_overrides[(scope, name)] = o
        self._apply_policy()
        log.info("alert policy override for %s %s set by %s: %s", scope, name, who, o.fields())
        await self.store.durable()

    async def delete_override(self, scope: str, name: str, who: str) -> bool:
        if (scope, name) not in self.api_overrides:
            return False
        self.store.delete_override(scope, name)
        del self.api_overrides[(scope, name)]
        self._apply_policy()
        log.info("alert policy override for %s %s removed by %s", scope, name, who)
        await self.store.durable()
        return True

    def policies_json(self) -> dict[str, Any]:
        cfg = self.config.policy
        out: dict[str, Any] = {
            "default": {_camel(k): v for k, v in attrs.asdict(cfg.policy()).items()},
            "grouping": {"groupWindowSeconds": cfg.group_window_seconds,
                         "groupThreshold": cfg.group_threshold}}
        for scope, table in (("tag", cfg.tags), ("client", cfg.clients)):
            names = set(table) | {n for s, n in self.api_overrides if s == scope}
            out[scope + "s"] = {n: {"config": _override_json(table.get(n)),
                                    "api": _override_json(self.api_overrides.get((scope, n)))}
                                for n in sorted(names)}
        return out

    # -- silences ------------------------------------------------------------------------------

    async def add_silence(self, data: Any, who: str) -> Silence:
        now = self.wall_clock()
        silence = parse_silence(data, now=now, silence_id=new_id()[:16], principal=who)
        body = silence.to_json(now)
        body.pop("active")
        self.store.put_silence(silence.id, silence.ends_at, body)
        self.silences.add(silence)
        self._wake.set()
        log.info("silence %s created by %s (%s) until %s: %s", silence.id, who,
                 silence.created_by, iso(silence.ends_at), silence.match.to_json())
        self._tell_dashboards("silence.created", silence)
        await self.store.durable()
        return silence

    def _tell_dashboards(self, event: str, s: Silence) -> None:
        """Who silenced what, until when, and why: a NOTIFICATION (the dashboards show it and
        refresh their list of silences)."""
        if self.notices is None or not self.config.notifications.enabled:
            return
        m = s.match
        what = ", ".join([*sorted(m.client_ids), *(f"tag {t}" for t in sorted(m.tags))])
        if event == "silence.created":
            title, text = "Silenced", f"{what} until {iso(s.ends_at)} by {s.created_by}: {s.comment}"
        else:
            title, text = "Silence ended", f"{what} (was until {iso(s.ends_at)})"
        self.notices.publish_notice(Notice(title, text, "info", True,
                                           {"event": event, "silenceId": s.id}))

    async def delete_silence(self, silence_id: str, who: str) -> Silence | None:
        if silence_id not in self.silences.silences:
            return None
        self.store.delete_silence(silence_id)
        silence = self.silences.remove(silence_id)
        assert silence is not None
        self._wake.set()
        log.info("silence %s deleted by %s", silence_id, who)
        self._tell_dashboards("silence.deleted", silence)
        await self.store.durable()
        return silence

    def silences_json(self) -> list[dict[str, Any]]:
        return self.silences.active_json(self.wall_clock())

    async def refresh(self) -> None:
        """Bring silences and overrides up to date before the API reads them (one node: they
        are; see :class:`~rpad.service.cluster_alerts.ClusterAlerts`)."""

    # -- start ---------------------------------------------------------------------------------

    async def load(self, clients: Iterable[Client], view: Callable[[Client], dict[str, Any]]) -> None:
        """At start: the outbox, silences and API overrides from the store, and every client's
        state for the policy (see :meth:`AlertPolicy.load`)."""
        state = await self.store.load()
        now = self.wall_clock()
        for body in state.silences:
            s = silence_of(body)
            if s.ends_at > now:
                self.silences.add(s)
            else:
                self.store.delete_silence(s.id)
        for scope, name, fields in state.overrides:
            self.api_overrides[(scope, name)] = override_of(fields)
        self.policy.reconfigure(self.config.policy.policy(), self._overrides(),
                                self.config.policy.grouping(), now)
        self.outbox.load(state.outbox)
        for c in clients:
            if c.status == "offline" and c.offline_since is not None:
                self.policy.load(c.client_id, view(c), c.status, c.offline_since, None, now)

    # -- transitions and ticks -----------------------------------------------------------------

    def client_transition(self, event: Event) -> None:
        if event.type not in (CLIENT_CONNECTED, CLIENT_DISCONNECTED, CLIENT_REMOVED):
            return
        if event.type != CLIENT_REMOVED:
            until = self.policy.silenced_until(event.client_id, event.data.get("tags") or (),
                                               event.at)
            if until is not None:
                event.data["silenced"] = True
                event.data["silencedUntil"] = iso(until)
        self.policy.observe(event)
        self._wake.set()

    def _send(self, alert: Alert) -> None:
        alert_id = new_id()
        body = payload(alert, alert_id, "")
        if not alert.grouped:
            current = self.client_view(alert.items[0].client_id)
            if current is not None:
                body["client"] = current
        self.outbox.enqueue(body, alert_id=alert_id)
        nc = self.config.notifications
        if (self.notices is not None and nc.enabled and alert.filter_event in nc.events
                and level_rank(alert.level) >= level_rank(nc.min_level)):
            self._notice(notice_for(alert, now=self.wall_clock()))
            self.notifications_sent += 1
        names = ", ".join(i.client_id for i in alert.items[:5])
        more = f" and {len(alert.items) - 5} more" if len(alert.items) > 5 else ""
        log.info("alert %s (%s): %s%s", alert.event, alert.level, names, more)

    def _notice(self, notice: Notice) -> None:
        """An alert's NOTIFICATION to the dashboards."""
        if self.notices is not None:
            self.notices.publish_notice(notice)

    def tick(self) -> None:
        """Send every alert due now."""
        for alert in self.policy.tick(self.wall_clock()):
            self._send(alert)

    async def _ticker(self) -> None:
        next_prune = trio.current_time() + PRUNE_INTERVAL_SECONDS
        while True:
            self._wake = trio.Event()
            self.tick()
            at = self.policy.next_tick()
            deadline = next_prune
            if at is not None:
                deadline = min(deadline, trio.current_time() + max(0.0, at - self.wall_clock()))
            with trio.move_on_at(deadline):
                await self._wake.wait()
            if trio.current_time() >= next_prune:
                next_prune = trio.current_time() + PRUNE_INTERVAL_SECONDS
                self._prune()

    def _prune(self) -> None:
        """Let ended silences go."""
        for s in self.silences.prune(self.wall_clock()):
            self.outbox.stage(lambda s=s: self.store.delete_silence(s.id))  # type: ignore[misc]

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The ticker and the outbox's workers, until cancelled."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.outbox.run)
            nursery.start_soon(self._ticker)
            task_status.started()

    async def aclose(self) -> None:
        await self.outbox.aclose()

    # -- targets -------------------------------------------------------------------------------

    @property
    def channels(self) -> list[Channel]:
        return [q.channel for q in self.outbox.queues.values()]

    def _test_target(self, target: str, queued: Iterable[OutboxRow]) -> Channel:
        """The configured target of that name, with no test queued for it. Raises NotFound
        (``unknown_target``) for a name that is not a configured target, Conflict
        (``test_pending``) while an earlier test for it is still queued."""
        q = self.outbox.queues.get(target)
        if q is None:
            names = ", ".join(sorted(self.outbox.queues)) or "none are configured"
            raise NotFound("unknown_target",
                           f"no alert target of this name is configured ({names})")
        if any(r.target == target and r.payload.get("kind") == "test" for r in queued):
            raise Conflict("test_pending", "a test alert for this target is still queued; see "
                                           "GET /api/v1/alerts/deliveries")
        return q.channel

    async def send_test(self, target: str, who: str) -> str:
        """Queue a test alert for a configured target; returns its delivery id (errors: see
        :meth:`_test_target`)."""
        q = self.outbox.queues.get(target)
        self._test_target(target, q.pending if q is not None else ())
        assert q is not None
        alert_id = new_id()
        rows = self.outbox.enqueue(test_payload(self.wall_clock(), alert_id, "", target),
                                   [q.channel], alert_id=alert_id)
        if not rows:
            raise ValidationFailed([{"field": "target", "message": "its queue is full"}])
        log.info("test alert %s for %s requested by %s", rows[0].delivery_id, target, who)
        return rows[0].delivery_id

    async def deliveries(self, target: str | None, limit: int) -> dict[str, Any]:
        queues = [q for q in self.outbox.queues.values() if target in (None, q.name)]
        await self.store.durable()  # what has finished so far is in the log
        records = await self.store.deliveries(target, limit)
        return {"targets": [{**q.stats(), "label": q.channel.label} for q in queues],
                "pending": [p for q in queues for p in q.pending_json()],
                "log": [_record_json(r) for r in records]}

    def stats(self) -> list[dict[str, Any]]:
        return [q.stats() for q in self.outbox.queues.values()]

    def policy_stats(self) -> dict[str, Any]:
        p = self.policy
        active = sum(1 for s in self.silences_json() if s["active"])
        return {"raised": dict(p.raised), "messages": p.messages, "deferred": p.deferred,
                "silences": active}

    @property
    def delivered(self) -> int:
        return sum(q.delivered for q in self.outbox.queues.values())

    @property
    def failed(self) -> int:
        return sum(q.failed for q in self.outbox.queues.values())

    @property
    def dropped(self) -> int:
        return sum(q.dropped for q in self.outbox.queues.values())

    def reconfigure(self, cfg: AlertsConfig) -> None:
        """Apply new alert settings (SIGHUP): targets, policy, maintenance windows. A target
        whose secret or URL file cannot be read keeps the previous targets."""
        try:
            channels = build_channels(cfg.webhooks, cfg.email, cfg.apprise)
        except (OSError, ValueError) as exc:
            log.error("alerts: keeping the previous targets, cannot apply the new ones: %s", exc)
            channels = None
        self.config = cfg
        if channels is not None:
            self.outbox.set_channels(channels)
        self.silences.set_windows([m.window() for m in cfg.maintenance])
        self._apply_policy()


def _match(m: dict[str, Any]) -> Match:
    return Match(frozenset(m.get("clientIds") or ()), frozenset(m.get("tags") or ()))


def silence_of(body: dict[str, Any]) -> Silence:
    """A silence from its stored JSON (:meth:`Silence.to_json` without ``active``)."""
    return Silence(body["id"], _match(body["match"]), parse_iso(body["startsAt"]),
                   parse_iso(body["endsAt"]), body["comment"], body["createdBy"],
                   parse_iso(body["createdAt"]))


def override_of(fields: dict[str, Any]) -> PolicyOverride:
    """An override from its stored JSON (camelCase fields; unknown ones are ignored)."""
    return PolicyOverride(**{_OVERRIDE_FIELDS[k]: v for k, v in fields.items()
                             if k in _OVERRIDE_FIELDS})


def _record_json(r: DeliveryRecord) -> dict[str, Any]:
    return {"deliveryId": r.delivery_id, "target": r.target, "event": r.event, "level": r.level,
            "clients": r.clients, "createdAt": iso(r.created_at),
            "finishedAt": iso(r.finished_at), "attempts": r.attempts, "outcome": r.outcome,
            "detail": r.detail}
