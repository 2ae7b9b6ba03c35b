"""The daemon: the one nursery that owns every task, signals, reload and the shutdown order.

Start-up: open the store and load the registry → bind HTTP (and the WebSocket hub) → start
the sweeper and the committer → READY=1.

Shutdown (SIGTERM/SIGINT or :meth:`Daemon.stop`): Hypercorn stops accepting → the periodic
tasks (sweeper, pushers) are cancelled → the hub stops accepting and closes every connection
with 1001 (a deadline on its handlers) → Hypercorn finishes in-flight requests
(``http.graceful_timeout_seconds``) → alert deliveries in flight finish (at most 5 s; queued
ones stay in the outbox) → the committer is cancelled → the final commit → exit 0.

Error handling: an unexpected exception in any task cancels the whole nursery and propagates
out of :meth:`Daemon.run` (the CLI logs it with its traceback and exits 1, and the service
manager restarts rpad). Nothing is left half-running.
"""

from __future__ import annotations

import logging
import secrets
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio
from hypercorn.config import Config as HyperConfig

from . import __version__, logs
from . import config as config_mod
from .api.app import create_app
from .api.context import ApiContext
from .api.heartbeat import HeartbeatFastPath, ReadBodyFirst
from .api.metrics import Metrics
from .auth import Authenticator, Keys, load_keys
from .backend.base import Broker, PresenceBackend
from .backend.local.alert_store import LocalAlertStore
from .backend.local.broker import LocalBroker
from .backend.local.failures import LocalFailureCounter
from .backend.local.history import LocalHistory
from .backend.local.presence import LocalPresence
from .backend.local.records import LocalAuditLog, LocalTaskStore
from .backend.local.store import Store
from .backend.redis.cluster import RedisCluster
from .backend.redis.failures import RedisFailureCounter
from .config import Config, ConfigError, HttpConfig
from .core.ratelimit import RatePerKey
from .core.registry import Registry
from .httpserve import BodyLimits, RequestGuard, hypercorn_config, serve_http
from .hub.agent_link import AgentLinks
from .hub.codes import HubCounters
from .hub.console_actions import console_actions
from .hub.fanout import Fanout
from .hub.server import Hub
from .hub.windows import WindowPusher
from .listen import reuse_port_socket
from .listeners import ConnectionGate, Limits, ensure_file_limit
from .service.alerts import Alerts
from .service.client_history import ClientHistory
from .service.cluster_alerts import ClusterAlerts
from .service.commands import Commands
from .service.console import Console
from .service.feeds import Feeds
from .service.gate import Gate
from .service.periodic import ServerListPusher, StatsPusher, Sweeper
from .service.presence import Presence
from .service.tasks import Tasks
from .systemd import Notifier, run_watchdog

log = logging.getLogger(__name__)

STATUS_INTERVAL_SECONDS = 10.0


@attrs.define
class Listening:
    """What :meth:`Daemon.run` passes to ``task_status.started``: the bound addresses."""

    http_url: str
    ws_url: str | None


class Daemon:
    def __init__(
        self,
        config: Config,
        *,
        config_path: str | None = None,
        wall_clock: Callable[[], float] = time.time,
        handle_signals: bool = False,
        notifier: Notifier | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.wall_clock = wall_clock
        self.handle_signals = handle_signals
        self.notifier = notifier or Notifier()
        self.epoch = secrets.token_hex(8)
        self._stop = trio.Event()
        self.http_url = ""
        self.ws_url: str | None = None
        # The parts, built by run() (None until then).
        self.store: Store | None = None
        self.backend: PresenceBackend | None = None
        self.cluster: RedisCluster | None = None
        self.presence: Presence | None = None
        self.auth: Authenticator | None = None
        self.alerts: Alerts | None = None
        self.hub: Hub | None = None
        self.metrics: Metrics | None = None
        self.reloads = 0
        self.reload_results: dict[str, int] = {}
        self.app: Any = None
        self.api: ApiContext
        self.broker: Broker
        self.feeds: Feeds
        self.failures: LocalFailureCounter | RedisFailureCounter
        self.server_list: ServerListPusher
        self.stats_pusher: StatsPusher
        # The listeners' connection gates (rpad.listeners), and Hypercorn's settings.
        self.http_gate = ConnectionGate("http", http_limits(config.http),
                                        config.http.trusted_proxies)
        self.ws_gate: ConnectionGate | None = None
        self.hyper: HyperConfig | None = None
        # Metrics history (local backend only; None in cluster mode).
        self.history: LocalHistory | None = None
        self.windows: WindowPusher
        self.sweeper: Sweeper
        self.agents: AgentLinks
        self.console: Console
        self.tasks: Tasks

    def stop(self) -> None:
        """Begin the graceful shutdown."""
        self._stop.set()

    # -- building the parts --------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[Listening] = trio.TASK_STATUS_IGNORED) -> None:
        cfg = self.config
        log.info("rpad %s starting (epoch %s, config %s)", __version__, self.epoch,
                 self.config_path or "built-in defaults")
        keys = load_keys(cfg)
        logs.add_secrets(keys.secrets)
        self.metrics = Metrics(epoch=self.epoch, reloads=lambda: self.reload_results)
        # SQLite: the whole state with the local backend; in cluster mode Redis holds the
        # state (alerts included) and the database is only opened (to say if it holds alerts
        # queued by an earlier version, which queued them per node).
        store = Store(cfg.database_path, commit_interval_ms=cfg.storage.commit_interval_ms,
                      max_batch=cfg.storage.max_batch,
                      history_per_client=cfg.presence.history_per_client,
                      on_commit=self.metrics.commits.observe)
        loaded = await trio.to_thread.run_sync(store.open)
        self.store = store
        try:
            if cfg.cluster.backend == "redis":
                await self._run_redis(store, keys, task_status)
            else:
                await self._run_local(store, loaded, keys, task_status)
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(store.close)
            self.notifier.close()
            log.info("rpad stopped")

    def _registry(self, grace_until: float = 0.0) -> Registry:
        cfg = self.config
        return Registry(
            default_timeout_seconds=cfg.presence.heartbeat_timeout_seconds,
            min_interval_seconds=cfg.presence.min_interval_seconds,
            auto_register=cfg.presence.registration == "auto",
            grace_until=grace_until,
            max_clients=cfg.presence.max_clients,
        )

    async def _run_local(self, store: Store, loaded: Any, keys: Keys,
                         task_status: trio.TaskStatus[Listening]) -> None:
        """backend = "local": the registry in memory, durable in SQLite, this node alone."""
        cfg = self.config
        registry = self._registry(self.wall_clock() + cfg.presence.grace_seconds
                                  if loaded.clients else 0.0)
        registry.load(loaded.clients)
        history = self.history = LocalHistory(store, cfg.history, meta=loaded.meta,
                                              wall_clock=self.wall_clock,
                                              grace_until=registry.grace_until)
        backend = self.backend = LocalPresence(registry, store, loaded.gens,
                                               history=self.history)
        self.failures = LocalFailureCounter(cfg.auth.max_failures_per_minute)

        def make_broker(fanout: Fanout) -> Broker:
            return LocalBroker(fanout, epoch=self.epoch, history_size=cfg.websocket.history_size,
                               wall_clock=self.wall_clock)

        self._build(keys, store, backend, registry, make_broker)
        view = backend.view
        log.info("loaded %d clients (%d online) from %s", len(view), view.online_count,
                 store.path)
        assert self.presence is not None
        self.presence.check_fleet()
        if view.grace_until:
            log.info("startup grace: nobody is marked offline for %.0f s", cfg.presence.grace_seconds)

        async def run_backend(task_status: trio.TaskStatus[None]) -> None:
            async with trio.open_nursery() as nursery:
                await nursery.start(backend.run)
                await nursery.start(history.run)
                await nursery.start(self.broker.run)
                task_status.started()

        await self._serve(run_backend, task_status)

    async def _run_redis(self, store: Store, keys: Keys,
                         task_status: trio.TaskStatus[Listening]) -> None:
        """backend = "redis": one node of a cluster sharing presence, topics and limits."""
        cfg = self.config
        cluster = self.cluster = RedisCluster(cfg, self._registry(), epoch=self.epoch,
                                              wall_clock=self.wall_clock)
        left = (await LocalAlertStore(store).load()).outbox
        if left:
            log.warning("%d alert deliveries are queued in this node's SQLite outbox (%s) by an "
                        "earlier version of rpad, which queued alerts per node in cluster mode; "
                        "they are not delivered: alerts are now queued in Redis for the whole "
                        "cluster", len(left), store.path)
        self.backend = cluster.presence
        self.failures = cluster.failures
        self._build(keys, store, cluster.presence, cluster.presence.registry,
                    cluster.make_broker, cluster=cluster)
        assert self.hub is not None
        hub = self.hub
        cluster.nodes.answer = hub.admin.answer
        cluster.presence.on_lease = self.sweeper.poke  # the new holder sweeps who is due
        cluster.tell_dashboards(hub.fanout, self.feeds.notification)

        async def run_backend(task_status: trio.TaskStatus[None]) -> None:
            # The node's SQLite store still keeps what is per node (the alerts' state, the
            # console's audit log and tasks): its committer runs beside the cluster's parts.
            async with trio.open_nursery() as nursery:
                await nursery.start(store.run_committer)
                await nursery.start(cluster.run)
                task_status.started()

        await self._serve(run_backend, task_status)

    def _build(self, keys: Keys, store: Store, backend: PresenceBackend, registry: Registry,
               make_broker: Callable[[Fanout], Broker], *,
               cluster: RedisCluster | None = None) -> None:
        """Every part above the backend, each given what it needs through its constructor, in
        dependency order."""
        cfg = self.config
        assert self.metrics is not None
        self.auth = Authenticator(keys, issuer=cfg.auth.issuer, audience=cfg.auth.audience,
                                  leeway_seconds=cfg.auth.leeway_seconds,
                                  token_generation=backend.token_generation,
                                  clock=self.wall_clock)
        gate = Gate(self.auth, self.failures)
        counters = HubCounters()
        fanout = Fanout(counters, wall_clock=self.wall_clock)
        self.broker = make_broker(fanout)
        feeds = self.feeds = Feeds(self.broker, wall_clock=self.wall_clock)

        def client_view(cid: str) -> dict[str, Any] | None:
            c = registry.get(cid)
            return registry.view(c) if c is not None else None

        if cluster is None:
            self.alerts = Alerts(cfg.alerts, LocalAlertStore(store), feeds,
                                 wall_clock=self.wall_clock, client_view=client_view)
        else:  # one alerting node for the cluster, its state shared in Redis
            self.alerts = ClusterAlerts(cfg.alerts, cluster.alerts, feeds,
                                        wall_clock=self.wall_clock, client_view=client_view)
        self.presence = Presence(backend, feeds, self.alerts, wall_clock=self.wall_clock,
                                 registrations=RatePerKey(cfg.presence.registrations_per_minute))
        self.windows = WindowPusher(fanout, registry, lambda: self.config.push.interval_seconds)
        self.sweeper = Sweeper(self.presence, lambda: self.config.presence.check_interval_seconds,
                               wall_clock=self.wall_clock)
        self.presence.on_deadline_change = self.sweeper.poke
        # The console: agents' control channels, terminal.* actions, batch tasks, the audit log.
        audit = LocalAuditLog(store)
        agents = self.agents = AgentLinks(
            config=cfg.websocket, counters=counters, wall_clock=self.wall_clock,
            set_capabilities=backend.set_capabilities,
            token_generation=backend.token_generation,
            enabled=lambda: self.config.console.enabled)
        commands = agents.commands = Commands(
            agents, wall_clock=self.wall_clock,
            window_bytes=lambda: self.config.console.window_bytes)
        self.console = Console(commands, self.broker, registry, audit,
                               lambda: self.config.console, wall_clock=self.wall_clock,
                               user_connected=lambda user: fanout.user_connections(user) > 0)
        self.tasks = Tasks(commands, self.broker, registry, LocalTaskStore(store), audit,
                           lambda: self.config.console, wall_clock=self.wall_clock)
        hub = self.hub = Hub(cfg.websocket, gate=gate, broker=self.broker, fanout=fanout,
                             counters=counters, wall_clock=self.wall_clock,
                             trusted_proxies=frozenset(cfg.http.trusted_proxies),
                             actions={"subscribe": self.windows.on_subscribe,
                                      **console_actions(self.console)},
                             cluster=cluster.nodes if cluster is not None else None,
                             agents=agents)
        self.ws_gate = hub.listener_gate
        # Agents' control channels: one per client (two while one replaces another).
        hub.listener_gate.outside_cap = 2 * cfg.presence.max_clients if cfg.console.enabled else 0
        # The state topics exist before the hub accepts anyone.
        self.server_list = ServerListPusher(fanout, backend.view,
                                            lambda: self.config.push.interval_seconds,
                                            mode=lambda: self.config.push.mode)
        self.stats_pusher = StatsPusher(fanout, hub.admin.stats,
                                        lambda: self.config.push.stats_interval_seconds)
        self.metrics.collect(self.presence, storage=store, hub=hub.admin, alerts=self.alerts,
                             listeners=(self.http_gate, hub.listener_gate), cluster=cluster)

        def extra_health() -> dict[str, Any]:
            body: dict[str, Any] = {"websocket": hub.admin.health()}
            if cluster is not None:
                body.update(cluster.health())
            return body

        self.api = ApiContext(config=cfg, presence=self.presence, gate=gate, auth=self.auth,
                              feeds=feeds, alerts=self.alerts, epoch=self.epoch,
                              started_at=time.monotonic(), extra_health=extra_health,
                              history=(ClientHistory(backend, self.history,
                                                     wall_clock=self.wall_clock)
                                       if self.history is not None else None),
                              tasks=self.tasks, audit=audit, agents=agents.views)
        self.app = create_app(self.api, hub=hub, metrics=self.metrics,
                               ws_url=lambda: self.ws_url)

    async def _serve(self, run_backend: Callable[..., Awaitable[None]],
                     task_status: trio.TaskStatus[Listening]) -> None:
        """Start the backend, then HTTP, the hub and the periodic tasks; run until stopped."""
        cfg = self.config
        assert self.presence is not None and self.hub is not None and self.alerts is not None
        presence, hub, alerts = self.presence, self.hub, self.alerts

        agents = cfg.presence.max_clients if cfg.console.enabled else 0
        ensure_file_limit(cfg.http.max_connections + cfg.websocket.max_connections + agents,
                          "http.max_connections + websocket.max_connections"
                          + (" + presence.max_clients (agents' control channels)"
                             if agents else ""))
        async with trio.open_nursery() as nursery:
            await nursery.start(run_backend)  # the view is loaded once it has started
            view = presence.view
            await alerts.load(list(view), view.view)
            # Batch tasks: stopped before the hub closes the agents' channels, so that a task
            # running at shutdown is recorded as interrupted (not as failed on every client).
            tasks_scope = trio.CancelScope()

            async def run_tasks(task_status: trio.TaskStatus[None]) -> None:
                with tasks_scope:
                    await self.tasks.run(task_status=task_status)

            await nursery.start(run_tasks)
            async with trio.open_nursery() as services:
                http_done = trio.Event()

                async def run_http(task_status: trio.TaskStatus[list[str]]) -> None:
                    try:
                        asgi: Any = (HeartbeatFastPath(self.app, self.api) if cfg.http.fast_path
                                     else self.app)
                        asgi = ReadBodyFirst(asgi, lambda: self.config.http.max_body_bytes)
                        asgi = RequestGuard(asgi, self.http_gate, lambda: BodyLimits(
                            self.config.http.body_timeout_seconds,
                            self.config.http.min_body_bytes_per_second))
                        self.hyper = hypercorn_config(
                            cfg.http.listen,
                            graceful_timeout_seconds=cfg.http.graceful_timeout_seconds,
                            keep_alive_timeout_seconds=cfg.http.keep_alive_timeout_seconds)
                        if cfg.http.reuse_port:  # several processes share the port
                            # Hypercorn takes the socket over by its file descriptor.
                            self.hyper.bind = [
                                f"fd://{reuse_port_socket(cfg.http.listen).detach()}"]
                        await serve_http(asgi, self.hyper, self.http_gate,
                                         send_timeout=lambda: self.config.http.send_timeout_seconds,
                                         shutdown_trigger=self._stop.wait,
                                         task_status=task_status)
                    finally:
                        http_done.set()

                binds = await services.start(run_http)
                self.http_url = binds[0]
                self.ws_url = await services.start(hub.run)
                # The periodic tasks, in one scope so that shutdown can stop them first.
                periodic = trio.CancelScope()

                async def run_periodic() -> None:
                    with periodic:
                        async with trio.open_nursery() as tasks:
                            await tasks.start(self.sweeper.run)
                            await tasks.start(self.server_list.run)
                            await tasks.start(self.windows.run)
                            await tasks.start(self.stats_pusher.run)
                            await tasks.start(self.console.run)

                services.start_soon(run_periodic)
                await services.start(alerts.run)
                if self.handle_signals:
                    services.start_soon(self._handle_signals)
                wd = self.notifier.watchdog_seconds
                if wd is not None and self.notifier.enabled:
                    services.start_soon(run_watchdog, self.notifier, wd)
                if self.notifier.enabled:
                    services.start_soon(self._report_status)
                # Where it listens is printed once by `rpad serve` (rpad.cli), not logged again.
                self.notifier.ready(self._status_line())
                task_status.started(Listening(self.http_url, self.ws_url))

                await self._stop.wait()
                log.info("shutting down: finishing in-flight requests")
                self.notifier.stopping()
                # HTTP stops accepting at once (its shutdown trigger); then: the periodic tasks
                # stop, the hub stops accepting and closes its connections with 1001 (with a
                # deadline), hypercorn's drain ends, and the store's final commit follows.
                periodic.cancel()
                tasks_scope.cancel()
                await hub.aclose()
                await http_done.wait()
                # Alert deliveries in flight finish (briefly) so that their outcome is
                # recorded in the final commit; the rest stay queued for the next start.
                await alerts.aclose()
                services.cancel_scope.cancel()
            nursery.cancel_scope.cancel()

    # -- signals and reload --------------------------------------------------------------------

    async def _handle_signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    await self.reload()
                else:
                    log.info("received %s", signal.Signals(signum).name)
                    self.stop()

    async def reload(self) -> bool:
        """Re-read the config file (SIGHUP) and apply what can change while running: timeouts,
        intervals, limits, keys (rotation: open connections stay), log level and format,
        commit batching, metrics access. Settings that need a restart (:data:`RESTART_KEYS`)
        keep their running values and are logged as such.

        Error handling: an invalid file (or an unreadable key) is refused with the reason in
        the log, the old config stays in force, and this returns False. systemd hears
        RELOADING=1 before and READY=1 after, either way.
        """
        self.notifier.reloading()
        where = self.config_path or "built-in defaults"
        log.info("reloading configuration from %s", where)
        old = self.config
        try:
            loaded = await trio.to_thread.run_sync(config_mod.load, self.config_path)
            new = _keep_restart_keys(old, loaded)
            keys = await trio.to_thread.run_sync(load_keys, new)
        except (ConfigError, ValueError, OSError) as exc:
            problems = exc.problems if isinstance(exc, ConfigError) else [str(exc)]
            log.error("reload refused, the running configuration stays in force: %s",
                      "; ".join(problems))
            self.reload_results["refused"] = self.reload_results.get("refused", 0) + 1
            self.notifier.ready(self._status_line())
            return False
        logs.add_secrets(keys.secrets)
        self._apply(new, keys)
        changed = _changed_keys(old, new)
        self.reloads += 1
        self.reload_results["applied"] = self.reload_results.get("applied", 0) + 1
        log.info("configuration reloaded from %s: %s", where,
                 ", ".join(changed) if changed else "no changes")
        self.notifier.ready(self._status_line())
        return True

    def _apply(self, new: Config, keys: Keys) -> None:
        """Put a validated config into force (no I/O, cannot fail halfway)."""
        assert self.backend is not None and self.auth is not None
        self.config = new
        self.api.config = new
        self.app.config["MAX_CONTENT_LENGTH"] = new.http.max_body_bytes
        self.failures.max_per_window = new.auth.max_failures_per_minute
        self.backend.reconfigure(new.presence)
        if self.history is not None:
            self.history.reconfigure(new.history)
        self.sweeper.poke()  # new timeouts: new deadlines
        if self.presence is not None:
            if self.presence.registrations is not None:
                self.presence.registrations.per_minute = new.presence.registrations_per_minute
            self.presence.check_fleet()
        # The sweeper and the pushers re-read their intervals from self.config every round.
        if self.store is not None:
            self.store.reconfigure(commit_interval_ms=new.storage.commit_interval_ms,
                                   max_batch=new.storage.max_batch,
                                   history_per_client=new.presence.history_per_client)
        self.auth.reconfigure(keys, issuer=new.auth.issuer, audience=new.auth.audience,
                              leeway_seconds=new.auth.leeway_seconds)
        logs.reconfigure(new.logging.level, new.logging.format)
        if self.alerts is not None:
            self.alerts.reconfigure(new.alerts)
        if self.hub is not None:
            self.hub.reconfigure(new.websocket, frozenset(new.http.trusted_proxies))
            self.hub.listener_gate.outside_cap = (2 * new.presence.max_clients
                                                  if new.console.enabled else 0)
            self.agents.config = new.websocket
        # Caps apply to the next connection, timeouts to the next deadline.
        self.http_gate.limits = http_limits(new.http)
        self.http_gate.trusted_proxies = frozenset(new.http.trusted_proxies)
        if self.hyper is not None:
            self.hyper.keep_alive_timeout = new.http.keep_alive_timeout_seconds

    def _status_line(self) -> str:
        if self.presence is None:
            return "starting"
        view = self.presence.view
        line = f"{view.online_count} of {len(view)} clients online"
        if self.hub is not None:
            n = len(self.hub.fanout.connections)
            line += f", {n} WebSocket connection{'' if n == 1 else 's'}"
        return line

    async def _report_status(self) -> None:
        """STATUS= for `systemctl status`, checked every STATUS_INTERVAL_SECONDS and sent when
        it changed."""
        deadline = trio.current_time()
        while True:
            deadline += STATUS_INTERVAL_SECONDS
            await trio.sleep_until(deadline)
            self.notifier.status(self._status_line())


# Settings bound at start-up: a reload keeps their running values and says so.
RESTART_KEYS = ("state_dir", "http.listen", "http.graceful_timeout_seconds", "http.fast_path",
                "http.reuse_port", "websocket.listen", "websocket.max_message_bytes",
                "websocket.handshake_timeout_seconds", "websocket.reuse_port", "storage.path",
                "cluster.backend", "cluster.redis_url", "cluster.redis_password_file",
                "cluster.node_id", "cluster.key_prefix", "cluster.durability")


def http_limits(http: HttpConfig) -> Limits:
    """The HTTP listener's caps: agents open a connection per heartbeat, so at the cap the
    oldest connection that has not sent its request (then the longest-idle one) makes room."""
    return Limits(max_connections=http.max_connections,
                  max_connections_per_address=http.max_connections_per_address,
                  head_timeout_seconds=http.header_timeout_seconds, evict=True,
                  idle_timeout_seconds=http.keep_alive_timeout_seconds)


def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _with(cfg: Any, dotted: str, value: Any) -> Any:
    head, _, rest = dotted.partition(".")
    if not rest:
        return attrs.evolve(cfg, **{head: value})
    return attrs.evolve(cfg, **{head: _with(getattr(cfg, head), rest, value)})


def _keep_restart_keys(old: Config, new: Config) -> Config:
    for key in RESTART_KEYS:
        try:
            before, after = _get(old, key), _get(new, key)
        except AttributeError:  # a key this version of the config does not have
            continue
        if before != after:
            log.warning("reload: %s changed (%r -> %r) but needs a restart; still using %r",
                        key, before, after, before)
            new = _with(new, key, before)
    return new


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if attrs.has(type(value)):
        out: dict[str, Any] = {}
        for field in attrs.fields(type(value)):
            out.update(_flatten(getattr(value, field.name), f"{prefix}{field.name}."))
        return out
    return {prefix.rstrip("."): value}


def _changed_keys(old: Config, new: Config) -> list[str]:
    """Dotted names of the settings that differ, with old and new values for numbers, booleans
    and choices (never for strings and lists: URLs can carry credentials)."""
    a, b = _flatten(old), _flatten(new)
    out = []
    for key in sorted(a.keys() | b.keys()):
        if a.get(key) == b.get(key):
            continue
        va, vb = a.get(key), b.get(key)
        if key == "logging.level" or (isinstance(va, int | float | bool | None)
                                      and isinstance(vb, int | float | bool | None)):
            out.append(f"{key} {va} -> {vb}")
        else:
            out.append(key)
    return out
