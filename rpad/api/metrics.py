"""``GET /metrics``: the Prometheus text exposition (SPEC §3), with ``prometheus_client``.

Most of rpad's numbers already live in plain counters on the parts that own them (the
presence layer counts heartbeats and transitions, the store counts commits, the hub counts
messages). :class:`RpadCollector` reads them at scrape time, so nothing on the hot path pays
for a metrics library, and there is one source of truth per number. Only the commit
histograms are observed as they happen (:class:`CommitHistograms`, which the daemon gives the
store before anything else exists).
Process metrics (CPU, memory, file descriptors, start time) come from prometheus_client's own
collectors.

Every daemon has its own :class:`prometheus_client.CollectorRegistry` (never the global one),
so several daemons in one test process do not collide.

Access: a viewer (or higher) token, unless ``metrics.public = true`` (re-read on every request,
so a reload applies it).

Error handling: a collector that fails is a bug; it raises, the app's error handler logs the
traceback and answers a JSON 500.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from quart import Quart, Response, request

from .. import __version__
from ..core.model import (
    CLIENT_CONNECTED,
    CLIENT_DISCONNECTED,
    CLIENT_REMOVED,
    OFFLINE,
    ONLINE,
    UNKNOWN,
)
from ..core.principal import require_role
from ..service.presence import Presence
from .context import ApiContext
from .openapi import VIEWER_UP, Answer, operation
from .security import request_principal

log = logging.getLogger(__name__)

METRICS_PATH = "/metrics"
NAMESPACE = "rpad"

# Group commits hold from one write to max_batch (2000 by default) writes.
COMMIT_BATCH_SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
# A commit is one fsync: from under a millisecond on SSDs to seconds on a struggling disk.
COMMIT_SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                          1.0, 2.5, 5.0)

# Label values that exist from the start (a counter that is absent until its first increment
# makes rate() and alerts awkward).
HEARTBEAT_RESULTS = ("accepted", "rate_limited", "unknown_client", "fleet_full",
                     "too_many_registrations", "invalid", "unauthorized",
                     "forbidden", "storage_error", "backend_unavailable")
CLIENT_STATUSES = (ONLINE, OFFLINE, UNKNOWN)
TRANSITIONS = {CLIENT_CONNECTED: "online", CLIENT_DISCONNECTED: "offline", CLIENT_REMOVED: "removed"}


class HubStats(Protocol):
    """What the metrics read from the WebSocket hub (:class:`rpad.hub.admin.HubAdmin`)."""

    def metrics_snapshot(self) -> Mapping[str, Any]: ...


class AlertStats(Protocol):
    """What the metrics read from the alerts (:class:`rpad.service.alerts.Alerts`)."""

    def stats(self) -> list[dict[str, Any]]: ...

    def policy_stats(self) -> Mapping[str, Any]:
        """``raised`` (by kind), ``messages``, ``deferred``, ``silences`` (in force)."""
        ...


class ListenerStats(Protocol):
    """What the metrics read from a listener's connection gate
    (:class:`rpad.listeners.ConnectionGate`)."""

    name: str

    def snapshot(self) -> Mapping[str, Any]: ...


class StorageStats(Protocol):
    """What the metrics read from the store (successful and failed group commits)."""

    commits: int
    commit_failures: int


class ClusterStats(Protocol):
    """What the metrics read from a cluster node (:class:`rpad.backend.redis.cluster.RedisCluster`)."""

    def metrics_snapshot(self) -> Mapping[str, Any]: ...


class CommitHistograms:
    """Writes per group commit and the time of each, observed as commits happen."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.batch_size = Histogram(
            "rpad_store_commit_batch_size", "Writes per SQLite group commit.",
            buckets=COMMIT_BATCH_SIZE_BUCKETS, registry=registry)
        self.seconds = Histogram(
            "rpad_store_commit_duration_seconds", "Time of one SQLite group commit (fsync included).",
            buckets=COMMIT_SECONDS_BUCKETS, registry=registry)

    def observe(self, batch_size: int, seconds: float) -> None:
        self.batch_size.observe(batch_size)
        self.seconds.observe(seconds)


class ProcessCollectorAnySubset(ProcessCollector):
    """prometheus_client's process collector, also under systemd's ``ProcSubset=pid``.

    The library reads the boot time from ``/proc/stat``, which ``ProcSubset=pid`` hides; without
    it, it reports nothing at all. The boot time is also "now minus CLOCK_BOOTTIME".
    """

    def _boot_time(self) -> float:
        try:
            btime: float = super()._boot_time()  # type: ignore[no-untyped-call]
            if btime:
                return btime
        except OSError:
            pass
        return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)


class Metrics:
    """The daemon's metrics registry (its own, never prometheus_client's global one).

    The daemon builds it before the store (which reports to :attr:`commits`), then calls
    :meth:`collect` once the other parts exist."""

    def __init__(self, *, epoch: str, reloads: Callable[[], Mapping[str, int]] = dict) -> None:
        self.epoch = epoch
        self.reloads = reloads
        self.registry = CollectorRegistry(auto_describe=True)
        self.commits = CommitHistograms(self.registry)
        ProcessCollectorAnySubset(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)

    def collect(self, presence: Presence, *, storage: StorageStats | None = None,
                hub: HubStats | None = None, alerts: AlertStats | None = None,
                listeners: Iterable[ListenerStats] = (),
                cluster: ClusterStats | None = None) -> None:
        """Read these parts' counters at every scrape from now on."""
        self.registry.register(RpadCollector(self, presence, storage, hub, alerts,
                                             tuple(listeners), cluster))

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition in the format the scraper asked for (Prometheus text 0.0.4 by
        default, OpenMetrics if the ``Accept`` header prefers it)."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


def _counter(name: str, doc: str, label: str, values: Mapping[str, int],
             always: Iterable[str] = ()) -> CounterMetricFamily:
    fam = CounterMetricFamily(name, doc, labels=[label])
    merged = {k: 0 for k in always}
    merged.update(values)
    for key in sorted(merged):
        fam.add_metric([key], merged[key])
    return fam


class RpadCollector(Collector):
    """Reads the daemon's own counters at scrape time."""

    def __init__(self, metrics: Metrics, presence: Presence, storage: StorageStats | None,
                 hub: HubStats | None, alerts: AlertStats | None,
                 listeners: tuple[ListenerStats, ...] = (),
                 cluster: ClusterStats | None = None) -> None:
        self.cluster = cluster
        self.m = metrics
        self.presence = presence
        self.storage = storage
        self.hub = hub
        self.alerts = alerts
        self.listeners = listeners

    def collect(self) -> Iterable[Metric]:
        m = self.m
        info = GaugeMetricFamily("rpad_info", "rpad's version and this run's epoch.",
                                 labels=["version", "epoch"])
        info.add_metric([__version__, m.epoch], 1)
        yield info
        yield _counter("rpad_config_reloads", "SIGHUP reloads by result (applied or refused).",
                       "result", m.reloads(), ("applied", "refused"))

        # -- presence --------------------------------------------------------------------------
        p = self.presence
        yield _counter("rpad_heartbeats", "Heartbeats that reached the presence layer, by result.",
                       "result", p.heartbeats_by_result, HEARTBEAT_RESULTS)
        by_status = {s: 0 for s in CLIENT_STATUSES}
        for client in p.view:
            by_status[client.status] = by_status.get(client.status, 0) + 1
        clients = GaugeMetricFamily("rpad_clients", "Known clients by presence status.",
                                    labels=["status"])
        for status in sorted(by_status):
            clients.add_metric([status], by_status[status])
        yield clients
        if p.view.max_clients is not None:
            yield GaugeMetricFamily("rpad_clients_max",
                                    "presence.max_clients: new clients beyond it are refused.",
                                    value=p.view.max_clients)
        yield _counter("rpad_registrations_refused",
                       "New clients refused: the fleet at presence.max_clients (fleet_full), or "
                       "a token subject over presence.registrations_per_minute "
                       "(too_many_registrations).", "reason", p.registrations_refused)
        yield _counter("rpad_client_transitions",
                       "Presence transitions: went online, went offline, removed.", "to",
                       {TRANSITIONS.get(k, k.lower()): v for k, v in p.transitions.items()},
                       TRANSITIONS.values())

        # -- store -----------------------------------------------------------------------------
        s = self.storage
        if s is not None:
            yield CounterMetricFamily("rpad_store_commits", "Successful SQLite group commits.",
                                      value=s.commits)
            yield CounterMetricFamily("rpad_store_commit_failures",
                                      "Failed SQLite group commits (retried with the next batch).",
                                      value=s.commit_failures)

        if self.cluster is not None:
            yield from _cluster_families(self.cluster.metrics_snapshot())

        # -- listeners, hub and alerts ---------------------------------------------------------
        if self.listeners:
            yield from _listener_families(self.listeners)
        if self.hub is not None:
            yield from _hub_families(self.hub.metrics_snapshot())
        if self.alerts is not None:
            yield from _alert_families(self.alerts.stats())
            yield from _policy_families(self.alerts.policy_stats())


def _policy_families(p: Mapping[str, Any]) -> Iterable[Metric]:
    yield _counter("rpad_alerts_raised", "Alerts the policy raised, by kind (a client in a "
                   "grouped alert counts once).", "kind", p.get("raised", {}),
                   ("offline", "online", "reminder", "flapping"))
    yield CounterMetricFamily("rpad_alert_messages", "Alert messages sent to the targets (a "
                              "grouped alert is one).", value=p.get("messages", 0))
    yield CounterMetricFamily("rpad_alerts_deferred", "Alerts held back by a silence or "
                              "maintenance window until its end.", value=p.get("deferred", 0))
    yield GaugeMetricFamily("rpad_silences_active", "Silences and maintenance windows in "
                            "force now.", value=p.get("silences", 0))


def _listener_families(gates: Iterable[ListenerStats]) -> Iterable[Metric]:
    """From each gate's snapshot: ``phases`` ({phase: n}), ``limits`` (max_connections,
    max_connections_per_address), ``accepted``, ``refused`` ({reason: n}), ``cut``
    ({reason: n})."""
    open_ = GaugeMetricFamily("rpad_listener_connections",
                              "Open connections by listener and phase (pending: request head or "
                              "handshake not complete; busy; idle: keep-alive; established: an "
                              "authenticated WebSocket).", labels=["listener", "phase"])
    cap = GaugeMetricFamily("rpad_listener_max_connections",
                            "The listener's cap on open connections.", labels=["listener"])
    accepted = CounterMetricFamily("rpad_listener_connections_accepted",
                                   "Connections admitted by the listener.", labels=["listener"])
    refused = CounterMetricFamily(
        "rpad_listener_connections_refused",
        "Connections (and requests forwarded by a trusted proxy) refused: over the per-address "
        "cap (429) or the listener's cap (503).", labels=["listener", "reason"])
    cut = CounterMetricFamily(
        "rpad_listener_connections_cut",
        "Connections cut by rpad: evicted to make room, request head or handshake too late, "
        "a peer that stopped reading, a body too slow (408).", labels=["listener", "reason"])
    outside = GaugeMetricFamily("rpad_listener_connections_outside_cap",
                                "Established connections bounded by the fleet instead of the "
                                "listener's cap (agents' control channels).", labels=["listener"])
    for gate in gates:
        snap = gate.snapshot()
        outside.add_metric([gate.name], snap.get("outside_cap", 0))
        for phase, n in snap["phases"].items():
            open_.add_metric([gate.name, phase], n)
        cap.add_metric([gate.name], snap["limits"]["max_connections"])
        accepted.add_metric([gate.name], snap["accepted"])
        for reason, n in sorted(snap["refused"].items()):
            refused.add_metric([gate.name, reason], n)
        for reason, n in sorted(snap["cut"].items()):
            cut.add_metric([gate.name, reason], n)
    yield from (open_, cap, outside, accepted, refused, cut)
def _cluster_families(snap: Mapping[str, Any]) -> Iterable[Metric]:
    """A cluster node's figures (:meth:`RedisCluster.metrics_snapshot`)."""
    yield GaugeMetricFamily("rpad_cluster_backend_up",
                            "1 while Redis is reachable from this node, 0 while degraded.",
                            value=1 if snap["up"] else 0)
    yield GaugeMetricFamily("rpad_cluster_view_stale_seconds",
                            "How long this node's view has not been kept current (Redis "
                            "unreachable); 0 when current.", value=snap["stale_seconds"])
    yield GaugeMetricFamily("rpad_cluster_backend_durable",
                            "1 when Redis has AOF with appendfsync always.",
                            value=1 if snap["durable"] else 0)
    yield GaugeMetricFamily("rpad_cluster_sweep_lease",
                            "1 while this node holds the sweep lease.",
                            value=1 if snap["sweep_lease"] else 0)
    yield GaugeMetricFamily("rpad_cluster_alert_lease",
                            "1 while this node holds the alert lease (it runs the alert policy "
                            "and delivers for the cluster).",
                            value=1 if snap["alert_lease"] else 0)
    yield CounterMetricFamily("rpad_cluster_alert_writes_refused",
                              "Steps of this node as the alerting node that Redis refused "
                              "because another node held the alert lease by then.",
                              value=snap["alert_writes_refused"])
    yield CounterMetricFamily("rpad_cluster_redis_round_trips",
                              "Round trips to Redis (a pipelined batch is one).",
                              value=snap["round_trips"])
    yield CounterMetricFamily("rpad_cluster_redis_failures",
                              "Requests to Redis that failed because it was unreachable.",
                              value=snap["failures"])
    yield CounterMetricFamily("rpad_cluster_heartbeat_groups",
                              "Round trips that carried heartbeats (grouped).",
                              value=snap["heartbeat_groups"])
    yield CounterMetricFamily("rpad_cluster_heartbeats_sent",
                              "Heartbeats sent to Redis.", value=snap["heartbeats_sent"])
    yield CounterMetricFamily("rpad_cluster_seq_gaps_filled",
                              "Topic messages the bus lost and this node read from history.",
                              value=snap["gaps_filled"])


def _hub_families(snap: Mapping[str, Any]) -> Iterable[Metric]:
    """Hub snapshot keys: ``connections`` (int), ``subscribers`` ({topic: n}), ``sent``,
    ``conflated``, ``dropped`` (ints, messages), ``disconnects`` ({reason: n})."""
    yield GaugeMetricFamily("rpad_websocket_connections", "Open WebSocket connections.",
                            value=snap.get("connections", 0))
    subs = GaugeMetricFamily("rpad_websocket_subscribers", "WebSocket subscriptions by topic.",
                             labels=["topic"])
    for topic, n in sorted(snap.get("subscribers", {}).items()):
        subs.add_metric([topic], n)
    yield subs
    yield CounterMetricFamily("rpad_websocket_messages_sent",
                              "Messages queued to WebSocket connections.",
                              value=snap.get("sent", 0))
    yield CounterMetricFamily("rpad_websocket_messages_conflated",
                              "Stale SERVER_LIST/STATS_UPDATE messages replaced by a newer one.",
                              value=snap.get("conflated", 0))
    yield CounterMetricFamily("rpad_websocket_messages_dropped",
                              "Messages not delivered because the connection was closed as a slow consumer.",
                              value=snap.get("dropped", 0))
    yield _counter("rpad_websocket_disconnects",
                   "WebSocket connections closed by rpad, by reason.", "reason",
                   snap.get("disconnects", {}), ("slow_consumer", "keepalive_timeout"))


def _alert_target(name: str) -> str:
    """A webhook URL without path and query (they can carry credentials); an email target's
    name as it is."""
    parts = urlsplit(name)
    if parts.scheme and parts.hostname:
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{parts.hostname}{port}"
    return name


def _alert_families(targets: Iterable[Mapping[str, Any]]) -> Iterable[Metric]:
    """From :meth:`rpad.alerts.Alerts.stats`: one mapping per target with ``kind``,
    ``target``, ``delivered``, ``failed``, ``dropped``, ``queued``."""
    totals: dict[tuple[str, str], dict[str, int]] = {}
    for t in targets:
        key = (str(t.get("kind", "")), _alert_target(str(t.get("target", ""))))
        acc = totals.setdefault(key, {"delivered": 0, "failed": 0, "dropped": 0, "queued": 0})
        for field in acc:
            acc[field] += int(t.get(field, 0))
    for field, name, doc, family in (
        ("delivered", "rpad_alert_deliveries", "Alerts delivered (webhook 2xx, mail accepted).",
         CounterMetricFamily),
        ("failed", "rpad_alert_failures", "Alerts given up on after every attempt failed.",
         CounterMetricFamily),
        ("dropped", "rpad_alert_dropped", "Alerts dropped because the target's queue was full.",
         CounterMetricFamily),
        ("queued", "rpad_alert_queued", "Alerts waiting in the target's queue.",
         GaugeMetricFamily),
    ):
        fam = family(name, doc, labels=["kind", "target"])
        for (kind, target), acc in sorted(totals.items()):
            fam.add_metric([kind, target], acc[field])
        yield fam


def add_route(app: Quart, ctx: ApiContext, metrics: Metrics) -> None:
    """Register ``GET /metrics`` on the app (errors go through the app's JSON handler)."""

    @app.get(METRICS_PATH)
    @operation("Prometheus metrics", tag="service", roles=VIEWER_UP,
               description="The Prometheus text exposition (OpenMetrics when `Accept` asks "
                           "for it). No token is needed when `metrics.public = true`.",
               answer=Answer(200, "the metrics", {"type": "string"},
                             content_type="text/plain; version=0.0.4; charset=utf-8"))
    async def metrics_endpoint() -> Response:
        if not ctx.config.metrics.public:
            require_role(request_principal(ctx), "viewer")
        body, content_type = metrics.render(request.headers.get("Accept"))
        return Response(body, status=200, content_type=content_type)
