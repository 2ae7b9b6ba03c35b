"""rpad's connection to Redis: commands, Lua scripts, one Pub/Sub channel, health.

The client is valkey-glide (its Rust core keeps the connections, reconnects with backoff and
restores the subscription after a reconnect; under Trio it wakes the caller through a pipe
that a Trio task reads). Two glide clients: one for commands (pipelined, multiplexed: every
task shares it) and one subscribed to the cluster's bus channel.

:class:`Link` knows whether Redis is reachable (:attr:`Link.up`). Any command that fails
because Redis cannot be reached, or refuses writes for now (loading its AOF, read-only, out
of disk), marks it down and raises :class:`~rpad.core.errors.BackendUnavailable`; a probe
(PING every :data:`PROBE_INTERVAL_SECONDS`, and the server's ``run_id``) notices when it is
back, and a restart of Redis that happened between two probes. Recovery runs the callbacks
registered with :meth:`Link.on_recovered` (the backends reload what they may have missed).
While Redis is down one line is logged every :data:`LOG_EVERY_SECONDS`.

Durability (a 2xx means durable): at connect, Redis must run with ``appendonly yes`` and
``appendfsync always``, or rpad refuses to start (:class:`DurabilityRefused`), unless
``cluster.durability = "relaxed"`` (then it warns, and ``/api/v1/health`` says so).

Resource handling: :meth:`Link.run` connects (retrying with backoff until Redis answers),
calls ``task_status.started()``, then runs the probe and the bus reader until cancelled, and
closes both clients. Error handling: commands raise BackendUnavailable (nothing else is
expected from Redis; a script error is a bug and propagates).
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import attrs
import trio

from ...config import parse_redis_url
from ...core.errors import BackendUnavailable
from .scripts import SCRIPTS, Script

log = logging.getLogger(__name__)

PROBE_INTERVAL_SECONDS = 1.0
# A probe (INFO, then a message to ourselves that must come back on the bus) must be done
# within this, or Redis (or the bus) counts as unreachable: a restarted Redis is noticed within
# about PROBE_INTERVAL_SECONDS + PROBE_TIMEOUT_SECONDS, even while the client's requests wait
# for its reconnection.
PROBE_TIMEOUT_SECONDS = 2.0
LOG_EVERY_SECONDS = 30.0
REQUEST_TIMEOUT_MS = 2000
CONNECT_BACKOFF_MAX_SECONDS = 5.0
RETRY_AFTER_SECONDS = 5.0
# Errors Redis answers while it cannot take writes for now (not bugs).
_TRANSIENT = ("LOADING", "READONLY", "MISCONF", "BUSY", "TRYAGAIN", "CLUSTERDOWN",
              "MASTERDOWN", "NOREPLICAS")

Handler = Callable[[list[str]], None]


class DurabilityRefused(Exception):
    """Redis cannot make a write durable before it answers, and durability is "strict"."""


@attrs.frozen
class RedisSettings:
    url: str
    password: str | None
    node_id: str
    key_prefix: str
    durability: str = "strict"
    request_timeout_ms: int = REQUEST_TIMEOUT_MS


def _unavailable(exc: BaseException) -> bool:
    from glide import ClosingError, ConnectionError, RequestError, TimeoutError

    if isinstance(exc, ClosingError | ConnectionError | TimeoutError):
        return True
    return isinstance(exc, RequestError) and any(word in str(exc) for word in _TRANSIENT)


def _noscript(result: Any) -> bool:
    return isinstance(result, Exception) and "NoScript" in str(result)


def text(x: Any) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


class Link:
    """One node's connection to Redis. ``wall_clock`` is the daemon's."""

    def __init__(self, settings: RedisSettings, *,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.endpoint = parse_redis_url(settings.url)
        self.wall_clock = wall_clock
        self.up = False
        self.durable = False  # AOF with appendfsync always, checked at connect
        self.redis_version = ""
        self.round_trips = 0
        self.failures = 0
        self.down_since: float | None = None  # trio time
        self._run_id: str | None = None
        self._client: Any = None
        self._bus: Any = None
        self._handlers: dict[str, Handler] = {"z": self._on_echo}
        self._recovered: list[Callable[[], Awaitable[None]]] = []
        self._state: list[Callable[[bool], None]] = []
        self._closing = False
        self._logged_at = -math.inf
        self._wake_probe = trio.Event()
        self._echoes: dict[str, trio.Event] = {}

    # -- wiring ----------------------------------------------------------------------------------

    def on_message(self, kind: str, handler: Handler) -> None:
        """Call ``handler(fields)`` for every bus message of ``kind`` (in bus order)."""
        self._handlers[kind] = handler

    def on_recovered(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Await ``callback()`` after Redis was unreachable (or restarted) and is back."""
        self._recovered.append(callback)

    def on_state(self, callback: Callable[[bool], None]) -> None:
        """``callback(up)`` whenever Redis becomes unreachable (False) or is back (True)."""
        self._state.append(callback)

    def _tell(self, up: bool) -> None:
        for callback in self._state:
            callback(up)

    # -- commands --------------------------------------------------------------------------------

    def _fail(self, exc: BaseException) -> BackendUnavailable:
        self.failures += 1
        self._mark_down(str(exc))
        return BackendUnavailable(f"Redis is unavailable: {exc}", RETRY_AFTER_SECONDS)

    def _require(self) -> Any:
        if self._client is None:
            raise BackendUnavailable("Redis is not connected yet", RETRY_AFTER_SECONDS)
        return self._client

    async def call(self, *args: str | bytes) -> Any:
        """One command, one round trip."""
        client = self._require()
        try:
            self.round_trips += 1
            return await client.custom_command(list(args))
        except Exception as exc:
            if _unavailable(exc):
                raise self._fail(exc) from None
            raise

    async def batch(self, commands: Sequence[Sequence[str | bytes]]) -> list[Any]:
        """Several commands in one round trip (pipelined, in order; not a transaction).
        Returns their results; a command's error is its result (an exception value), except
        NOSCRIPT (the scripts are loaded again and those commands retried)."""
        from glide import Batch

        client = self._require()
        if not commands:
            return []
        b = Batch(is_atomic=False)
        for cmd in commands:
            b.custom_command(list(cmd))
        try:
            self.round_trips += 1
            results = list(await client.exec(b, raise_on_error=False) or [])
        except Exception as exc:
            if _unavailable(exc):
                raise self._fail(exc) from None
            raise
        for r in results:
            if isinstance(r, Exception) and _unavailable(r):
                raise self._fail(r)
        missing = [i for i, r in enumerate(results) if _noscript(r)]
        if missing:  # Redis restarted (or SCRIPT FLUSH): load them and run those again
            await self.load_scripts()
            again = await self.batch([commands[i] for i in missing])
            for i, r in zip(missing, again, strict=True):
                results[i] = r
        return results

    @staticmethod
    def script_command(script: Script, keys: Sequence[str], args: Sequence[str | bytes]
                       ) -> list[str | bytes]:
        return ["EVALSHA", script.sha, str(len(keys)), *keys, *args]

    async def script(self, script: Script, keys: Sequence[str],
                     args: Sequence[str | bytes]) -> Any:
        """Run one script (one round trip); a script's error raises it."""
        (result,) = await self.batch([self.script_command(script, keys, args)])
        if isinstance(result, Exception):
            raise result
        return result

    async def load_scripts(self) -> None:
        await self.batch([["SCRIPT", "LOAD", s.source] for s in SCRIPTS.values()])

    # -- connecting ------------------------------------------------------------------------------

    def _config(self, subscribe: bool) -> Any:
        from glide import (
            BackoffStrategy,
            GlideClientConfiguration,
            NodeAddress,
            ServerCredentials,
        )

        e, s = self.endpoint, self.settings
        subs = None
        if subscribe:
            subs = GlideClientConfiguration.PubSubSubscriptions(
                channels_and_patterns={
                    GlideClientConfiguration.PubSubChannelModes.Exact: {self.bus_channel}},
                callback=None, context=None)
        credentials = (ServerCredentials(password=s.password, username=e.username)
                       if s.password is not None else None)
        return GlideClientConfiguration(
            [NodeAddress(e.host, e.port)], use_tls=e.tls, credentials=credentials,
            database_id=e.db, request_timeout=s.request_timeout_ms,
            client_name=f"rpad:{s.node_id}"[:64].replace(" ", "_"),
            # Retries 50 ms apart, doubling up to 1.6 s, then every 1.6 s: back soon after Redis.
            reconnect_strategy=BackoffStrategy(num_of_retries=5, factor=50, exponent_base=2),
            pubsub_subscriptions=subs)

    @property
    def bus_channel(self) -> str:
        return f"{self.settings.key_prefix}:bus"

    async def _connect(self) -> None:
        from glide import GlideClient, Logger, LogLevel

        Logger.set_logger_config(LogLevel.OFF)  # we log what matters ourselves, at our pace
        client = await GlideClient.create(self._config(False))
        try:
            bus = await GlideClient.create(self._config(True))
        except BaseException:
            with trio.CancelScope(shield=True):
                await client.close()
            raise
        self._client, self._bus = client, bus
        await self._check_durability()
        await self.load_scripts()
        self._run_id = await self._server_run_id()
        self.up = True

    async def _check_durability(self) -> None:
        info = text(await self.call("INFO", "server"))
        self.redis_version = _info_field(info, "redis_version") or "?"
        try:
            aof = _config_value(await self.call("CONFIG", "GET", "appendonly"))
            fsync = _config_value(await self.call("CONFIG", "GET", "appendfsync"))
        except BackendUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001 - CONFIG renamed or refused (managed Redis)
            aof, fsync = None, None
            why = f"cannot read its configuration (CONFIG GET: {exc})"
        else:
            why = f"appendonly {aof}, appendfsync {fsync}"
        self.durable = aof == "yes" and fsync == "always"
        if self.durable:
            log.info("Redis %s at %s:%d: AOF with appendfsync always (writes durable before "
                     "rpad answers)", self.redis_version, self.endpoint.host, self.endpoint.port)
            return
        message = (f"Redis {self.redis_version} at {self.endpoint.host}:{self.endpoint.port} "
                   f"does not make writes durable before answering ({why}); rpad needs "
                   "appendonly yes and appendfsync always")
        if self.settings.durability != "relaxed":
            raise DurabilityRefused(message + ' (or cluster.durability = "relaxed")')
        log.warning("%s; running anyway because cluster.durability = \"relaxed\": an "
                    "acknowledged heartbeat can be lost if Redis crashes", message)

    async def _server_run_id(self) -> str | None:
        return _info_field(text(await self.call("INFO", "server")), "run_id")

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect (retrying), then probe and read the bus until cancelled."""
        delay = 0.1
        try:
            while True:
                try:
                    await self._connect()
                    break
                except DurabilityRefused:
                    raise
                except Exception as exc:
                    if not _unavailable(exc) and not isinstance(exc, BackendUnavailable):
                        raise
                    await self._close()
                    self._mark_down(str(exc))
                    await trio.sleep(delay * (0.5 + random.random()))
                    delay = min(delay * 2, CONNECT_BACKOFF_MAX_SECONDS)
            if self.down_since is not None:
                log.info("Redis is reachable after %.1f s", trio.current_time() - self.down_since)
                self.down_since = None
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read_bus)
                task_status.started()
                await self._probe()
        finally:
            self._closing = True
            with trio.CancelScope(shield=True):
                await self._close()

    async def _close(self) -> None:
        for client in (self._client, self._bus):
            if client is not None:
                try:
                    await client.close()
                except Exception:  # noqa: BLE001, S110 - closing a broken client: nothing to do
                    pass
        self._client = self._bus = None

    # -- health ----------------------------------------------------------------------------------

    def _mark_down(self, why: str) -> None:
        if self._closing:
            return
        now = trio.current_time()
        if self.up or self.down_since is None:
            was_up = self.up
            self.up = False
            self.down_since = now
            self._logged_at = now
            log.warning("Redis is unreachable (%s); writes answer 503 and reads are served "
                        "from this node's last view until it is back", why)
            self._wake_probe.set()
            if was_up:
                self._tell(False)
        elif now - self._logged_at >= LOG_EVERY_SECONDS:
            self._logged_at = now
            log.warning("Redis still unreachable after %.0f s (%d failed requests): %s",
                        now - self.down_since, self.failures, why)

    def _on_echo(self, fields: list[str]) -> None:
        if fields[0] == self.settings.node_id:
            event = self._echoes.pop(fields[1], None)
            if event is not None:
                event.set()

    async def bus_sync(self) -> None:
        """Publish a message to ourselves and wait until the bus brings it back: the bus is
        subscribed and everything published before is here. Raises BackendUnavailable."""
        token = f"{random.getrandbits(64):x}"
        event = self._echoes[token] = trio.Event()
        try:
            await self.publish("z", self.settings.node_id, token)
            await event.wait()
        finally:
            self._echoes.pop(token, None)

    async def _probe(self) -> None:
        while True:
            with trio.move_on_after(PROBE_INTERVAL_SECONDS):
                await self._wake_probe.wait()
            self._wake_probe = trio.Event()
            run_id = None
            try:
                with trio.move_on_after(PROBE_TIMEOUT_SECONDS):
                    run_id = await self._server_run_id()
                    await self.bus_sync()
            except BackendUnavailable:
                continue
            if run_id is None:
                self._fail(Exception(f"no answer to the probe, or no echo on the bus, within "
                                     f"{PROBE_TIMEOUT_SECONDS:g} s"))
                continue
            restarted = self._run_id is not None and run_id != self._run_id
            self._run_id = run_id
            was_down = not self.up
            if not was_down and not restarted:
                continue
            if restarted and self.up:
                log.warning("Redis restarted (new run_id) since the last probe")
            try:
                await self.load_scripts()
                for callback in self._recovered:
                    await callback()
            except BackendUnavailable:
                continue
            if self.down_since is not None:
                log.info("Redis is back after %.1f s", trio.current_time() - self.down_since)
            self.up = True
            self.down_since = None
            if was_down:
                self._tell(True)

    # -- the bus ---------------------------------------------------------------------------------

    async def _read_bus(self) -> None:
        bus = self._bus
        while True:
            msg = await bus.get_pubsub_message()
            parts = text(msg.message).split("\n")
            handler = self._handlers.get(parts[0])
            if handler is not None:
                handler(parts[1:])

    async def publish(self, *parts: str) -> None:
        await self.call("PUBLISH", self.bus_channel, "\n".join(parts))


def _info_field(info: str, name: str) -> str | None:
    for line in info.splitlines():
        key, sep, value = line.partition(":")
        if sep and key == name:
            return value.strip()
    return None


def _config_value(reply: Any) -> str | None:
    """CONFIG GET's answer (a map under RESP3, a flat list under RESP2) → the one value."""
    if isinstance(reply, dict):
        values = list(reply.values())
    else:
        values = list(reply)[1::2]
    return text(values[0]) if values else None
