"""The seams where a backend plugs in: what ``service/``, ``api/`` and ``hub/`` depend on.

Three interfaces, and the values they exchange:

- :class:`PresenceBackend`: who is online. Writes are async and durable on return (or report
  why not); each node keeps a *view* of every client in memory (:class:`PresenceView`, which
  :class:`rpad.core.registry.Registry` implements), from which lists, pushes and metrics are
  read without a round trip.
- :class:`Broker`: topics' sequence numbers under an epoch, their bounded history, and
  delivery to the hubs of every node (through each node's :class:`Delivery`); messages to a
  user; the per-user connection limit.
- :class:`FailureCounter`: failed authentications per address (brute-force protection).
- :class:`AlertStore`: the alerts' durable state — the outbox of deliveries not yet made, the
  delivery log, silences and the admin API's policy overrides.
- :class:`AuditLog` and :class:`TaskStore`: the console's record of who ran what where, and
  batch tasks with their per-client results (writes staged and made durable together, like
  presence writes).

``backend = "local"`` (:mod:`rpad.backend.local`) is one process: the registry in memory,
SQLite, the hub's own delivery. A shared backend implements the same Protocols; only
:mod:`rpad.daemon` chooses and builds one.

Error handling: a write that cannot be made durable is *kept* by the backend and retried, and
reported in :attr:`Applied.error` (:class:`~rpad.core.errors.StorageUnavailable`): the caller
announces its events anyway (the node's view has changed) and does not acknowledge it (503).
Refusals of single items (:class:`~rpad.core.errors.RateLimited`,
:class:`~rpad.core.errors.UnknownClient`) are results, not exceptions, so that one bad item of a
batch refuses only itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, Generic, Protocol, TypeVar

import attrs
import trio

from ..config import HistoryConfig, PresenceConfig
from ..core.errors import StorageUnavailable
from ..core.history import Plan, Series
from ..core.model import Client, Event, HeartbeatOutcome
from ..core.tasks import ResultRecord, TaskRecord
from ..core.validation import Heartbeat, Registration

T = TypeVar("T")

# What one item of a heartbeat batch gives: its outcome, or why it was refused.
BeatResult = HeartbeatOutcome | Exception


@attrs.frozen
class Applied(Generic[T]):
    """What a write did. ``results``: one per item (an outcome, or the refusal as an exception
    value); ``events``: what to announce, in order; ``error``: set when the write was applied
    to the view and is kept, but is not durable yet (do not acknowledge it)."""

    results: list[T]
    events: list[Event]
    error: StorageUnavailable | None = None


class PresenceView(Protocol):
    """A node's in-memory view of every client (reads never wait on a backend)."""

    default_timeout_seconds: float
    min_interval_seconds: float
    grace_until: float
    auto_register: bool
    # New clients beyond this many are refused (FleetFull); None: no cap.
    max_clients: int | None

    @property
    def full(self) -> bool:
        """Whether a new client would be refused."""
        ...

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Client]: ...

    def get(self, client_id: str) -> Client | None: ...

    @property
    def online_count(self) -> int: ...

    @property
    def revision(self) -> int:
        """Grows with every change of any client (the pusher's delta marker)."""
        ...

    @property
    def view_generation(self) -> int:
        """Changes when every client's view changes at once (a new default timeout)."""
        ...

    def view(self, client: Client) -> dict[str, Any]: ...

    def view_json(self, client: Client) -> str: ...

    def servers_json(self) -> str: ...

    def delta_json(self, since: int) -> str | None: ...


class PresenceBackend(Protocol):
    """Presence state: the view, durable writes, the sweep, token generations.

    Resource handling: :meth:`run` runs the backend's background work (the local store's
    committer; a shared backend's connections and subscriptions) in the daemon's nursery; it
    calls ``task_status.started()`` once writes can be accepted."""

    @property
    def view(self) -> PresenceView: ...

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None: ...

    def reconfigure(self, cfg: PresenceConfig) -> None:
        """Apply new presence settings (timeouts, minimum interval, registration policy)."""
        ...

    async def heartbeats(self, beats: Sequence[Heartbeat], now: float,
                         peer: str | None) -> Applied[BeatResult]:
        """Apply heartbeats received at ``now`` (the server's clock); durable on return unless
        ``error`` says otherwise."""
        ...

    async def register(self, reg: Registration, now: float) -> Applied[tuple[Client, bool]]:
        """Register or update a client; the one result is (client, created)."""
        ...

    async def remove(self, client_id: str, now: float) -> Applied[Client]:
        """Remove a client (raises UnknownClient if there is none); the one result is it."""
        ...

    async def sweep(self, now: float, *,
                    swept: Callable[[], None] | None = None) -> Applied[Client]:
        """Mark offline every client whose timeout has passed (nobody during the start-up
        grace). With several nodes, one sweeps at a time (a lease); the others get an empty
        result. ``swept()`` is called as soon as the view is marked (before durability, which
        can take a slow disk's fsync): the sweeper may then look for the next deadline while
        this sweep's writes are committed."""
        ...

    def next_deadline(self) -> float | None:
        """The wall-clock time at which the next client could time out, or None (nobody
        online): the sweeper sleeps until then."""
        ...

    async def client(self, client_id: str) -> Client | None:
        """One client's current state, for a query about that client: from the view on one
        node; read from the shared backend (and installed in the view) when several nodes
        share it, so that a change made through any node is seen at once. Falls back to the
        view when the backend cannot be reached."""
        ...

    async def status_history(self, client_id: str,
                             limit: int) -> list[tuple[float, str, str | None]]:
        """(at, status, reason) of the client's transitions, newest first."""
        ...

    def set_capabilities(self, client_id: str, capabilities: dict[str, Any] | None) -> bool:
        """What the client's agent advertises on its control channel, shown in the client
        view (None: no channel). Not durable: a channel lives as long as its connection. False
        if there is no such client."""
        ...

    def token_generation(self, client_id: str) -> int:
        """The client's current agent-token generation (from the node's memory: this is on
        every agent request)."""
        ...

    async def revoke_tokens(self, client_id: str) -> int:
        """Bump the client's generation (revoking its agent tokens); durable on return."""
        ...


@attrs.frozen
class Run:
    """One run of rpad (of the node, locally): when it started, the last time it was known
    alive (updated every few seconds, so a ``kill -9`` leaves a close upper bound), when it
    stopped cleanly (None after a crash, or while running), and the end of its start-up
    grace."""

    started_at: float
    alive_at: float
    stopped_at: float | None
    grace_until: float


class MetricsHistory(Protocol):
    """Each heartbeat's metrics over time, in tiers (:mod:`rpad.core.history`), and rpad's own
    runs (for availability figures).

    Resource handling: :meth:`run` (in the daemon's nursery) records this run, closes the
    buckets of every tier as their time passes, prunes what expired and marks rpad alive; a
    backend writes all of it with its ordinary durable writes (locally: the group commit).
    Error handling: queries raise :class:`~rpad.core.errors.StorageUnavailable` when the
    storage cannot be read; a write that fails is retried with the next one."""

    def record(self, client_id: str, at: float, metrics: dict[str, float]) -> None:
        """A heartbeat's metrics, received at ``at``: staged with the heartbeat's own write
        (never blocks)."""
        ...

    def forget(self, client_id: str) -> None:
        """A removed client: drop what is held in memory for it."""
        ...

    def reconfigure(self, cfg: HistoryConfig) -> None: ...

    def retention(self) -> dict[int, float]:
        """Seconds kept per tier (0: raw samples)."""
        ...

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None: ...

    async def query(self, client_id: str, plan: Plan, names: Sequence[str]) -> Series:
        """The client's metrics on ``plan``'s grid, from ``plan.tier``, buckets not yet
        closed included."""
        ...

    async def runs(self, since: float) -> list[Run]:
        """rpad's runs that ended after ``since`` (or are running), oldest first; the current
        one with ``alive_at`` = now."""
        ...


@attrs.frozen
class Replay:
    """A subscriber's catch-up: the topic's current ``seq``, the messages after ``since`` (whole
    envelopes, in order), and whether they are all that was missed."""

    seq: int
    texts: list[str]
    recovered: bool


class Delivery(Protocol):
    """This node's hub, as a broker sees it (:class:`rpad.hub.fanout.Fanout`). Never blocks."""

    def deliver(self, topic: str, type_: str, text: str) -> int:
        """Hand an envelope to the topic's local subscribers; returns how many."""
        ...

    def deliver_to_user(self, user_id: str, text: str) -> int: ...

    def subscribers(self, topic: str) -> int: ...

    def disconnect_user(self, user_id: str, reason: str) -> int: ...

    def user_connections(self, user_id: str) -> int: ...


class Broker(Protocol):
    """Topics' seq (under :attr:`epoch`), bounded history, delivery to every node's hub.

    ``publish_nowait`` is for rpad's own events: it never blocks (a remote broker queues the
    message in an outbox that its :meth:`run` task drains; the local one publishes at once).
    ``publish`` is for callers that need the seq (the publish API, WebSocket ``publish``)."""

    epoch: str

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None: ...

    def reconfigure(self, *, history_size: int) -> None: ...

    def publish_nowait(self, topic: str, type_: str, data_json: str, *,
                       at: float | None = None) -> None: ...

    async def publish(self, topic: str, type_: str, data_json: str, *,
                      at: float | None = None) -> tuple[int, int]:
        """Returns (seq, connections reached)."""
        ...

    async def replay(self, topic: str, since: int | None) -> Replay: ...

    def topic_seq(self, topic: str) -> int: ...

    async def send_to_user(self, user_id: str, type_: str, data_json: str) -> int:
        """To every connection of the user on every node (``topic`` and ``seq`` null)."""
        ...

    async def disconnect_user(self, user_id: str, reason: str) -> int: ...

    async def claim_connection(self, user_id: str, connection_id: str, limit: int) -> bool:
        """Count a new connection of ``user_id`` against ``limit`` (cluster-wide for a shared
        broker); False when the user has ``limit`` already."""
        ...

    def release_connection(self, user_id: str, connection_id: str) -> None: ...

    def stats(self) -> dict[str, int]:
        """``messagesPublished`` and ``topics`` (topics with a seq or history)."""
        ...


class FailureCounter(Protocol):
    """Failed authentications per address. Both methods are on every request's path and never
    wait: a shared counter keeps the blocked addresses in memory and reports failures in the
    background."""

    max_per_window: int

    def blocked(self, peer: str) -> float | None:
        """Seconds until ``peer`` may try again, or None if it may now."""
        ...

    def failed(self, peer: str) -> None: ...


@attrs.define
class OutboxRow:
    """A delivery waiting in the outbox: one alert for one target."""

    delivery_id: str
    target: str
    created_at: float
    attempts: int
    next_attempt_at: float
    last_error: str | None
    # The alert's JSON payload (rpad.core.alert_text.payload), the webhook body as sent.
    payload: dict[str, Any]


@attrs.frozen
class DeliveryRecord:
    """A finished delivery, for the delivery log."""

    delivery_id: str
    target: str
    event: str
    level: str
    clients: str
    created_at: float
    finished_at: float
    attempts: int
    # delivered | failed (given up: refused, or max_attempts) | expired (max_age) | dropped
    # (the target's queue was full) | orphaned (its target is no longer configured)
    outcome: str
    detail: str | None


@attrs.frozen
class AlertState:
    """What :meth:`AlertStore.load` finds at start."""

    outbox: list[OutboxRow]
    # Silences as their JSON bodies (rpad.core.silences.Silence.to_json without "active").
    silences: list[dict[str, Any]]
    # (scope "tag" | "client", name, {field: value})
    overrides: list[tuple[str, str, dict[str, Any]]]


class AlertStore(Protocol):
    """The alerts' durable state. Writes are staged (never block; they share the presence
    writes' group commit, so a heartbeat costs no extra fsync) and raise
    :class:`~rpad.core.errors.StorageUnavailable` only when the store is closed;
    :meth:`durable` waits for them. With several nodes, see :class:`SharedAlertStore`."""

    async def load(self) -> AlertState: ...

    def add_delivery(self, row: OutboxRow) -> None: ...

    def update_delivery(self, row: OutboxRow) -> None: ...

    def finish_delivery(self, record: DeliveryRecord, keep_per_target: int) -> None:
        """Remove the delivery from the outbox and log how it ended (keeping the newest
        ``keep_per_target`` records of its target)."""
        ...

    async def deliveries(self, target: str | None, limit: int) -> list[DeliveryRecord]:
        """The delivery log, newest first."""
        ...

    def put_silence(self, silence_id: str, ends_at: float, body: dict[str, Any]) -> None: ...

    def delete_silence(self, silence_id: str) -> None: ...

    def put_override(self, scope: str, name: str, fields: dict[str, Any]) -> None: ...

    def delete_override(self, scope: str, name: str) -> None: ...

    async def durable(self) -> None:
        """Wait until every write staged so far is committed (raises StorageUnavailable)."""
        ...


@attrs.frozen
class AuditRecord:
    """The start of something audited: a console ``session``, a ``command`` (of a session or
    a task), a ``task``, or a ``denied`` attempt. ``ref`` names it for :meth:`AuditLog.end`."""

    ref: str
    kind: str
    at: float
    user_id: str
    role: str
    address: str | None
    client_id: str | None
    status: str
    session_id: str | None = None
    task_id: str | None = None
    command: str | None = None
    detail: str | None = None


@attrs.frozen
class AuditQuery:
    client_id: str | None = None
    user_id: str | None = None
    kind: str | None = None
    status: str | None = None
    session_id: str | None = None
    task_id: str | None = None
    since: float | None = None
    until: float | None = None
    limit: int = 100
    offset: int = 0


class AuditLog(Protocol):
    """Who did what where with the console. Writes are staged (never wait);
    :meth:`durable` waits until everything staged so far is stored."""

    def begin(self, rec: AuditRecord) -> None: ...

    def end(self, ref: str, *, at: float, status: str, exit_code: int | None = None,
            output_bytes: int | None = None, truncated: bool | None = None,
            detail: str | None = None) -> None: ...

    async def durable(self) -> None:
        """Raises StorageUnavailable when the log cannot be made durable."""
        ...

    async def query(self, q: AuditQuery) -> tuple[list[dict[str, Any]], int]:
        """Matching records, newest first, and how many match in all."""
        ...

    def prune(self, before: float) -> None:
        """Forget records that started before ``before`` (retention)."""
        ...


class TaskStore(Protocol):
    """Batch tasks and their per-client results."""

    def put_task(self, task: TaskRecord) -> None: ...

    def put_result(self, task_id: str, position: int, result: ResultRecord) -> None: ...

    def put_published(self, task: TaskRecord) -> None:
        """A task another system reports (keeps its first ``created_at``)."""
        ...

    async def durable(self) -> None: ...

    async def get_task(self, task_id: str) -> tuple[TaskRecord, list[ResultRecord]] | None: ...

    async def list_tasks(self, *, created_by: str | None, status: str | None, limit: int,
                         offset: int) -> tuple[list[TaskRecord], int]: ...

    async def interrupt_running(self, now: float) -> int:
        """Mark the tasks (and their clients) a previous run left pending or running as
        ``interrupted``; how many tasks. Durable on return."""
        ...

    def prune(self, before: float) -> None:
        """Forget tasks that ended before ``before``."""
        ...


@attrs.frozen
class Transition:
    """A presence transition as a shared backend recorded it, for the alerting node: every
    node's, in the order they happened to each client. ``type`` is CLIENT_CONNECTED,
    CLIENT_DISCONNECTED or CLIENT_REMOVED; ``version``: the client's version after it (a
    removed client starts again from 1)."""

    client_id: str
    type: str
    at: float
    reason: str | None
    previous_status: str | None
    version: int


@attrs.frozen
class TermStart:
    """What a node finds when its term as the alerting node begins.

    ``outbox``: the deliveries not yet made, in order; ``states``/``group``: the alert
    policy's memory as the previous alerting node last saved it (the JSON of
    :mod:`rpad.core.alert_state`). When every transition since then is still recorded,
    ``clients`` is None and :meth:`AlertTerm.transitions` starts with the first one the
    memory has not seen. Otherwise (the first term ever, or a record that was trimmed) the
    transitions start from now, and ``clients`` is every client as the view had it then, each
    at ``versions[client_id]``: rebuild from those, and skip a transition of a client at or
    below its version there."""

    outbox: list[OutboxRow]
    states: dict[str, dict[str, Any]]
    group: dict[str, Any] | None
    clients: list[Client] | None
    versions: dict[str, int]


class AlertTerm(Protocol):
    """This node's term as the cluster's alerting node, while it holds the alert lease.
    Everything it stages (deliveries, the policy's memory) is written only while the lease is
    still held with this term's token (fenced); a write that is refused ends the term."""

    token: int

    async def start(self) -> TermStart: ...

    async def transitions(self) -> list[Transition]:
        """The next transitions of the cluster (waits until there are some); each client's in
        the order they happened."""
        ...

    def save_policy(self, states: Mapping[str, dict[str, Any] | None],
                    group: dict[str, Any] | None) -> None:
        """Stage the policy's changed memory (None: forget that client) with how far the
        transitions have been read, in the same atomic write as everything staged before."""
        ...

    async def settled(self) -> None:
        """Wait until everything staged so far is written (through a backend outage); never
        returns if the write was refused (the term is ending)."""
        ...


class SharedAlertStore(AlertStore, Protocol):
    """An :class:`AlertStore` that several nodes share (cluster mode). Every node reads and
    writes silences, overrides and test deliveries (any node's admin API answers the same);
    one node at a time, the holder of the alert lease, runs the policy and delivers
    (:meth:`lead`). :meth:`durable` raises
    :class:`~rpad.core.errors.BackendUnavailable` while the backend cannot be reached."""

    @property
    def holder(self) -> str | None:
        """The node that holds the alert lease, as last seen."""
        ...

    def on_changed(self, callback: Callable[[str], None]) -> None:
        """``callback(kind)`` when another node changed ``silences``, ``overrides`` or the
        ``outbox``, and for all three when the backend is back after an outage."""
        ...

    async def settings(self) -> AlertState:
        """Silences and overrides as the backend has them now (the outbox left empty)."""
        ...

    async def pending(self) -> list[OutboxRow]:
        """The deliveries not yet made, in order."""
        ...

    async def counters(self) -> dict[str, dict[str, int]]:
        """Per target: delivered, failed, expired, dropped, orphaned, attempts (all nodes)."""
        ...

    async def add_external(self, row: OutboxRow) -> None:
        """Queue a delivery from any node (a test alert): durable on return; the alerting
        node is told."""
        ...

    async def lead(self, term: Callable[[AlertTerm], Awaitable[None]], *,
                   task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep trying to hold the alert lease; while held, run ``term(...)``, cancelled when
        the lease is lost. At the end, write what is staged and give the lease back."""
        ...
