"""Configuration: one TOML file, loaded with tomllib and structured with cattrs.

Every key has a built-in default, so an empty file (or no file) is a valid configuration.
Unknown keys, wrong types and impossible values are refused with the key's dotted path and the
reason, raised as :class:`ConfigError`.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import re
import socket
import tomllib
import typing
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import attrs
import cattrs
from cattrs.errors import IterableValidationError, IterableValidationNote
from cattrs.gen import make_dict_structure_fn

from .config_alerts import (
    ALERT_SECTIONS,
    AlertsConfig,
    AppriseConfig,
    EmailConfig,
    WebhookConfig,
    validate_alerts,
)

__all__ = ["AlertsConfig", "AppriseConfig", "Config", "ConfigError", "EmailConfig",
           "WebhookConfig", "from_dict", "load", "validate"]

DEFAULT_STATE_DIR = "./rpad-data"
CLIENT_ID_PATTERN = r"[A-Za-z0-9._:-]{1,128}"


class ConfigError(Exception):
    """A configuration that cannot be used. ``str()`` names the key and the reason."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


@attrs.frozen
class HttpConfig:
    listen: str = "127.0.0.1:8000"
    max_body_bytes: int = 64 * 1024
    # Seconds hypercorn waits for in-flight requests at shutdown.
    graceful_timeout_seconds: float = 10.0
    # Answer POST /api/v1/client/heartbeat at the ASGI level, in front of Quart (same code,
    # same answers, several times cheaper). false: every request goes through Quart.
    fast_path: bool = True
    # Reverse proxies (IP addresses) whose X-Forwarded-For/-Host/-Proto headers are believed.
    trusted_proxies: list[str] = attrs.Factory(list)
    # Connections this listener holds at most; at the cap the oldest one that has not sent its
    # request (then the longest-idle keep-alive one) is cut to make room, else the newcomer is
    # refused (503).
    max_connections: int = 1024
    # Connections from one client address (an IPv6 address by its /64; behind a trusted proxy,
    # requests per forwarded address) that have not authenticated and are not idle; beyond it
    # new ones are refused (429).
    max_connections_per_address: int = 32
    # A request head must be complete this long after the connection was accepted, or after the
    # first byte of a later request on a kept-alive connection.
    header_timeout_seconds: float = 10.0
    # An idle connection between requests is closed after this long.
    keep_alive_timeout_seconds: float = 75.0
    # A request body may take this long plus one second per min_body_bytes_per_second received;
    # slower, it is answered 408.
    body_timeout_seconds: float = 10.0
    min_body_bytes_per_second: float = 1024.0
    # The peer must take each 64 KiB of a response within this long, or the connection is cut.
    send_timeout_seconds: float = 30.0
    # SO_REUSEPORT: several rpad processes on one host share the port (the kernel spreads
    # connections over them). Cluster mode only makes sense of it (backend = "redis").
    reuse_port: bool = False


@attrs.frozen
class WebSocketConfig:
    listen: str = "127.0.0.1:8001"
    # The URL dashboards should use to reach the hub, when it is not the same origin's /ws
    # (for example behind a reverse proxy). Empty: the dashboard derives it.
    public_url: str = ""
    allowed_origins: list[str] = attrs.Factory(list)
    max_connections_per_user: int = 5
    ping_interval_seconds: float = 30.0
    pong_timeout_seconds: float = 60.0
    max_message_bytes: int = 64 * 1024
    auth_timeout_seconds: float = 10.0
    queue_size: int = 256
    history_size: int = 1000
    # Connections the hub holds at most (established ones included); beyond, new ones are
    # refused (503).
    max_connections: int = 2048
    # Connections from one client address (behind a trusted proxy: per forwarded address)
    # still handshaking or authenticating; beyond, new ones are refused (429).
    max_connections_per_address: int = 32
    # The handshake (the HTTP upgrade request) must be complete this long after the connection
    # was accepted.
    handshake_timeout_seconds: float = 10.0
    # SO_REUSEPORT, as http.reuse_port.
    reuse_port: bool = False


@attrs.frozen
class PresenceConfig:
    registration: Literal["auto", "manual"] = "auto"
    heartbeat_timeout_seconds: float = 60.0
    check_interval_seconds: float = 30.0
    min_interval_seconds: float = 1.0
    # None: the heartbeat timeout.
    startup_grace_seconds: float | None = None
    # How many status-history entries are kept per client.
    history_per_client: int = 100
    # Clients rpad keeps at most (every SERVER_LIST holds them all); a new one beyond is refused
    # (409 fleet_full). Removing clients makes room.
    max_clients: int = 10_000
    # New clients one token subject may register per minute (its heartbeats for unknown ids
    # when registration is "auto"; administrators are not limited); beyond, 429.
    registrations_per_minute: float = 1000.0

    @property
    def grace_seconds(self) -> float:
        if self.startup_grace_seconds is None:
            return self.heartbeat_timeout_seconds
        return self.startup_grace_seconds


@attrs.frozen
class PushConfig:
    interval_seconds: float = 2.0
    stats_interval_seconds: float = 60.0
    mode: Literal["full", "delta"] = "full"


@attrs.frozen
class HistoryConfig:
    """Metrics history: each tier's retention (0 turns a tier off). Applied by reload."""

    # false: heartbeats' metrics are not recorded (what is stored stays until it expires).
    enabled: bool = True
    # Every heartbeat's metrics as sent (the 1 h charts).
    raw_retention_hours: float = 1.0
    # 1-minute min/avg/max (the 24 h charts).
    minute_retention_hours: float = 25.0
    # 15-minute min/avg/max (the 7 d charts).
    quarter_hour_retention_days: float = 8.0
    # 1-hour min/avg/max (the 30 d charts).
    hour_retention_days: float = 31.0
    # How often expired history is deleted (in steps of a bounded size).
    prune_interval_seconds: float = 60.0

    def retention_seconds(self) -> dict[int, float]:
        """Seconds kept per tier: 0 is the raw samples, else the tier's step in seconds."""
        return {0: self.raw_retention_hours * 3600.0,
                60: self.minute_retention_hours * 3600.0,
                900: self.quarter_hour_retention_days * 86400.0,
                3600: self.hour_retention_days * 86400.0}


@attrs.frozen
class AuthConfig:
    # HS256 secret files. The first one signs tokens minted by `rpad token`; all verify.
    # Empty: `<state_dir>/jwt.secret`, generated on first start.
    secret_file: str = ""
    extra_secret_files: list[str] = attrs.Factory(list)
    # Verification-only public keys (PEM: RSA, EC P-256 or Ed25519) of another token issuer.
    public_key_file: str = ""
    extra_public_key_files: list[str] = attrs.Factory(list)
    issuer: str = ""
    audience: str = ""
    leeway_seconds: float = 30.0
    # Failed authentications from one address before it gets 429 for a while.
    max_failures_per_minute: int = 30


@attrs.frozen
class StorageConfig:
    # Empty: `<state_dir>/rpad.db`.
    path: str = ""
    commit_interval_ms: float = 10.0
    # A batch this large is committed without waiting for the interval.
    max_batch: int = 2000


@attrs.frozen
class MetricsConfig:
    public: bool = False


@attrs.frozen
class LoggingConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"


@attrs.frozen
class ClusterConfig:
    # "local": one node (SQLite). "redis": every node with the same Redis and key_prefix is
    # one service (presence, topics' seq and history, limits, the sweep are shared).
    backend: Literal["local", "redis"] = "local"
    # redis://host:port/db or rediss:// (TLS); a user name may come before the host, never a
    # password (it is read from redis_password_file).
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_password_file: str = ""
    # This node's name in the cluster. Empty: host name and process id.
    node_id: str = ""
    # Every key and the bus channel start with it (several clusters can share one Redis).
    key_prefix: str = "rpad"
    # "strict": refuse to start unless Redis has appendonly yes + appendfsync always (a 2xx
    # is durable). "relaxed": run anyway (warned, and shown in /api/v1/health).
    durability: Literal["strict", "relaxed"] = "strict"

    @property
    def node_name(self) -> str:
        return self.node_id or f"{socket.gethostname()}:{os.getpid()}"


@attrs.frozen
class ConsoleConfig:
    # Agents' control channels, the console (terminal.*) and batch tasks. Whether a host runs
    # commands at all is decided on the host: rpad agent --allow-commands.
    enabled: bool = True
    max_sessions_per_user: int = 4
    # A session that ran nothing for this long is closed.
    idle_timeout_seconds: float = 900.0
    # A session whose user has had no connection to this node for this long is closed.
    detach_grace_seconds: float = 60.0
    # Commands kept per session for terminal.history (with the tail of their output).
    history_size: int = 50
    # A command's time limit when none is asked for, and the most that may be asked (the
    # agent's own maximum applies too).
    command_timeout_seconds: float = 60.0
    max_command_timeout_seconds: float = 3600.0
    # Output of one command (stdout and stderr together); more is cut (truncated: true).
    max_output_bytes: int = 1024 * 1024
    # Output in flight per command between the agent and its reader (credit).
    window_bytes: int = 256 * 1024
    task_default_concurrency: int = 10
    task_max_concurrency: int = 100
    max_running_tasks_per_user: int = 4
    # The tail of each client's output kept in a task's results.
    task_output_tail_bytes: int = 4096
    # Audit records and ended tasks are kept this long.
    retention_days: float = 365.0


@attrs.frozen
class Config:
    state_dir: str = DEFAULT_STATE_DIR
    http: HttpConfig = attrs.Factory(HttpConfig)
    websocket: WebSocketConfig = attrs.Factory(WebSocketConfig)
    presence: PresenceConfig = attrs.Factory(PresenceConfig)
    push: PushConfig = attrs.Factory(PushConfig)
    history: HistoryConfig = attrs.Factory(HistoryConfig)
    auth: AuthConfig = attrs.Factory(AuthConfig)
    storage: StorageConfig = attrs.Factory(StorageConfig)
    alerts: AlertsConfig = attrs.Factory(AlertsConfig)
    metrics: MetricsConfig = attrs.Factory(MetricsConfig)
    logging: LoggingConfig = attrs.Factory(LoggingConfig)
    cluster: ClusterConfig = attrs.Factory(ClusterConfig)
    console: ConsoleConfig = attrs.Factory(ConsoleConfig)

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir)

    @property
    def database_path(self) -> Path:
        return Path(self.storage.path) if self.storage.path else self.state_path / "rpad.db"

    @property
    def secret_path(self) -> Path:
        return Path(self.auth.secret_file) if self.auth.secret_file else self.state_path / "jwt.secret"


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True)

    # Strict scalars: TOML already types its values, so "30" for a number is a mistake, and
    # so is true for a number (bool is an int subclass in Python).
    def _int(value: Any, _: type) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"expected an integer, got {type(value).__name__} {value!r}")
        return value

    def _float(value: Any, _: type) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"expected a number, got {type(value).__name__} {value!r}")
        return float(value)

    def _str(value: Any, _: type) -> str:
        if not isinstance(value, str):
            raise TypeError(f"expected a string, got {type(value).__name__} {value!r}")
        return value

    def _bool(value: Any, _: type) -> bool:
        if not isinstance(value, bool):
            raise TypeError(f"expected true or false, got {type(value).__name__} {value!r}")
        return value

    # A TOML array where an array belongs: cattrs alone would turn the string "abc" into
    # ["a", "b", "c"] and a table into a list of its keys.
    def _list_hook(list_type: Any) -> Callable[[Any, Any], list[Any]]:
        (item_type,) = typing.get_args(list_type) or (Any,)

        def structure(value: Any, _: Any) -> list[Any]:
            if not isinstance(value, list):
                raise TypeError(f"expected an array, got {type(value).__name__} {value!r}")
            items: list[Any] = []
            errors: list[Exception] = []
            for i, item in enumerate(value):
                try:
                    items.append(conv.structure(item, item_type))
                except Exception as exc:  # noqa: BLE001 (noted and re-raised)
                    exc.__notes__ = [*getattr(exc, "__notes__", []), IterableValidationNote(
                        f"Structuring {list_type} @ index {i}", i, item_type)]
                    errors.append(exc)
            if errors:
                raise IterableValidationError(f"While structuring {list_type}", errors, list_type)
            return items

        return structure

    conv.register_structure_hook(int, _int)
    conv.register_structure_hook(float, _float)
    conv.register_structure_hook(str, _str)
    conv.register_structure_hook(bool, _bool)
    conv.register_structure_hook_factory(_is_list_type, _list_hook)
    sections = (Config, HttpConfig, WebSocketConfig, PresenceConfig, PushConfig, HistoryConfig,
                AuthConfig, StorageConfig, MetricsConfig, LoggingConfig, ClusterConfig,
                ConsoleConfig,
                *ALERT_SECTIONS)
    # A factory, so that a section's hook exists before the hook of the table holding it.
    conv.register_structure_hook_factory(lambda t: t in sections, lambda t: _table(t, conv))
    return conv


def _is_list_type(t: Any) -> bool:
    return typing.get_origin(t) is list


def _table(cls: type[Any], conv: cattrs.Converter) -> Callable[[Any, Any], Any]:
    """The structure hook of a config section: a TOML table with only the known keys."""
    fields = make_dict_structure_fn(cls, conv, _cattrs_forbid_extra_keys=True)

    def structure(value: Any, _: Any) -> Any:
        if not isinstance(value, dict):
            raise TypeError(f"expected a table, got {type(value).__name__} {value!r}")
        return fields(value, cls)

    return structure


_converter = _make_converter()


def _path_of(path: str) -> str:
    # cattrs paths look like "$.presence.heartbeat_timeout_seconds" or "$.alerts.webhooks[0].url"
    return path.removeprefix("$").removeprefix(".") or "(top level)"


def _describe(exc: BaseException, path: str) -> str:
    if isinstance(exc, cattrs.ForbiddenExtraKeysError):
        prefix = _path_of(path)
        names = [k if prefix == "(top level)" else f"{prefix}.{k}" for k in sorted(exc.extra_fields)]
        return f"{', '.join(names)}: unknown key"
    if isinstance(exc, KeyError):
        return f"{_path_of(path)}: required key missing"
    literal = re.match(r"(.*) not in literal typing.Literal\[(.*)\]", str(exc))
    if literal:
        choices = literal.group(2).replace("'", "")
        return f"{_path_of(path)}: {literal.group(1)!r} is not one of {choices}"
    return f"{_path_of(path)}: {exc}"


def _collect(exc: BaseException, path: str, out: list[str]) -> None:
    if isinstance(exc, cattrs.ForbiddenExtraKeysError):
        out.append(_describe(exc, path))
    elif isinstance(exc, cattrs.ClassValidationError | cattrs.IterableValidationError):
        if isinstance(exc, cattrs.ClassValidationError):
            pairs = exc.group_exceptions()
            for sub, note in pairs[0]:
                _collect(sub, f"{path}.{note.name}", out)
            for sub in pairs[1]:
                _collect(sub, path, out)
        else:
            ipairs = exc.group_exceptions()
            for sub, inote in ipairs[0]:
                _collect(sub, f"{path}[{inote.index}]", out)
            for sub in ipairs[1]:
                _collect(sub, path, out)
    elif isinstance(exc, ExceptionGroup):
        for sub in exc.exceptions:
            _collect(sub, path, out)
    else:
        out.append(_describe(exc, path))


def _check_listen(key: str, value: str, problems: list[str]) -> None:
    try:
        parse_listen(value)
    except ValueError as exc:
        problems.append(f"{key}: {exc}")


def parse_listen(value: str) -> tuple[str, int]:
    """``"127.0.0.1:8000"`` or ``"[::1]:8000"`` → (host, port)."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not re.fullmatch(r"[A-Za-z0-9.-]+", host):
            raise ValueError(f"{host!r} is not an IP address or host name") from None
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"port {port_text!r} is not a number from 0 to 65535")
    return host, int(port_text)


NAME_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


@attrs.frozen
class RedisEndpoint:
    host: str
    port: int
    db: int
    tls: bool
    username: str | None


def parse_redis_url(url: str) -> RedisEndpoint:
    """``redis://[user@]host[:port][/db]`` or ``rediss://`` (TLS). Raises ValueError. A
    password in the URL is refused: it belongs in ``cluster.redis_password_file``."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"must start with redis:// or rediss://, got {url!r}")
    if parts.password is not None:
        raise ValueError("must not contain a password; put it in cluster.redis_password_file")
    if not parts.hostname:
        raise ValueError(f"has no host: {url!r}")
    try:
        port = parts.port or 6379
    except ValueError:
        raise ValueError(f"has a bad port: {url!r}") from None
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ValueError(f"the database must be a number, got {path!r}")
    if parts.query or parts.fragment:
        raise ValueError("must not have a query or a fragment")
    return RedisEndpoint(parts.hostname, port, int(path or 0), parts.scheme == "rediss",
                         urllib.parse.unquote(parts.username) if parts.username else None)


def _readable(key: str, path: str, problems: list[str]) -> None:
    if not path:
        return
    try:
        with open(path, "rb") as f:
            if not f.read(1):
                problems.append(f"{key}: {path} is empty")
    except OSError as exc:
        problems.append(f"{key}: cannot read {path}: {exc.strerror or exc}")


def validate(cfg: Config) -> None:
    """Refuse impossible values. Raises ConfigError naming every problem found."""
    p: list[str] = []

    def positive(key: str, value: float) -> None:
        if not value > 0:
            p.append(f"{key}: must be greater than 0, got {value}")

    _check_listen("http.listen", cfg.http.listen, p)
    _check_listen("websocket.listen", cfg.websocket.listen, p)
    positive("http.max_body_bytes", cfg.http.max_body_bytes)
    for i, proxy in enumerate(cfg.http.trusted_proxies):
        try:
            ipaddress.ip_address(proxy)
        except ValueError:
            p.append(f"http.trusted_proxies[{i}]: {proxy!r} is not an IP address")
    if cfg.http.graceful_timeout_seconds < 0:
        p.append("http.graceful_timeout_seconds: must not be negative")
    for key in ("max_connections", "max_connections_per_address", "header_timeout_seconds",
                "keep_alive_timeout_seconds", "body_timeout_seconds", "min_body_bytes_per_second",
                "send_timeout_seconds"):
        positive(f"http.{key}", getattr(cfg.http, key))
    ws = cfg.websocket
    for key in ("max_connections_per_user", "ping_interval_seconds", "pong_timeout_seconds",
                "max_message_bytes", "auth_timeout_seconds", "queue_size", "history_size",
                "max_connections", "max_connections_per_address", "handshake_timeout_seconds"):
        positive(f"websocket.{key}", getattr(ws, key))
    if ws.public_url and not re.match(r"wss?://", ws.public_url):
        p.append(f"websocket.public_url: must start with ws:// or wss://, got {ws.public_url!r}")
    pr = cfg.presence
    positive("presence.heartbeat_timeout_seconds", pr.heartbeat_timeout_seconds)
    positive("presence.check_interval_seconds", pr.check_interval_seconds)
    if pr.min_interval_seconds < 0:
        p.append(f"presence.min_interval_seconds: must not be negative, got {pr.min_interval_seconds}")
    if pr.check_interval_seconds > pr.heartbeat_timeout_seconds > 0:
        p.append(
            "presence.check_interval_seconds: must not be longer than "
            f"presence.heartbeat_timeout_seconds ({pr.check_interval_seconds} > "
            f"{pr.heartbeat_timeout_seconds})"
        )
    if pr.startup_grace_seconds is not None and pr.startup_grace_seconds < 0:
        p.append("presence.startup_grace_seconds: must not be negative")
    positive("presence.history_per_client", pr.history_per_client)
    positive("presence.max_clients", pr.max_clients)
    positive("presence.registrations_per_minute", pr.registrations_per_minute)
    positive("push.interval_seconds", cfg.push.interval_seconds)
    positive("push.stats_interval_seconds", cfg.push.stats_interval_seconds)
    h = cfg.history
    for key in ("raw_retention_hours", "minute_retention_hours", "quarter_hour_retention_days",
                "hour_retention_days"):
        value = getattr(h, key)
        if not 0 <= value <= 3660:
            p.append(f"history.{key}: must be from 0 to 3660, got {value}")
    positive("history.prune_interval_seconds", h.prune_interval_seconds)
    if cfg.auth.leeway_seconds < 0:
        p.append("auth.leeway_seconds: must not be negative")
    positive("auth.max_failures_per_minute", cfg.auth.max_failures_per_minute)
    _readable("auth.secret_file", cfg.auth.secret_file, p)
    for i, f in enumerate(cfg.auth.extra_secret_files):
        _readable(f"auth.extra_secret_files[{i}]", f, p)
    _readable("auth.public_key_file", cfg.auth.public_key_file, p)
    for i, f in enumerate(cfg.auth.extra_public_key_files):
        _readable(f"auth.extra_public_key_files[{i}]", f, p)
    if cfg.storage.commit_interval_ms < 0:  # 0: commit as soon as anything is staged
        p.append("storage.commit_interval_ms: must not be negative")
    positive("storage.max_batch", cfg.storage.max_batch)
    validate_alerts(cfg.alerts, p, _readable, positive)
    cl = cfg.cluster
    if cl.backend == "redis" and importlib.util.find_spec("glide") is None:
        p.append("cluster.backend: \"redis\" needs the valkey-glide package: "
                 "pip install 'rpad[cluster]'")
    try:
        parse_redis_url(cl.redis_url)
    except ValueError as exc:
        p.append(f"cluster.redis_url: {exc}")
    _readable("cluster.redis_password_file", cl.redis_password_file, p)
    if cl.node_id and not re.fullmatch(r"[A-Za-z0-9_.:-]{1,128}", cl.node_id):
        p.append(f"cluster.node_id: {cl.node_id!r} must be 1 to 128 of A-Z a-z 0-9 _ . : -")
    if not NAME_RE.fullmatch(cl.key_prefix):
        p.append(f"cluster.key_prefix: {cl.key_prefix!r} must be 1 to 64 of A-Z a-z 0-9 _ . : -")
    if cl.backend == "local" and (cfg.http.reuse_port or ws.reuse_port):
        which = "http.reuse_port" if cfg.http.reuse_port else "websocket.reuse_port"
        p.append(f"{which}: processes sharing a port must share their state: it needs "
                 'cluster.backend = "redis"')
    co = cfg.console
    for key in ("max_sessions_per_user", "idle_timeout_seconds", "detach_grace_seconds",
                "history_size", "command_timeout_seconds", "max_command_timeout_seconds",
                "max_output_bytes", "task_default_concurrency", "task_max_concurrency",
                "max_running_tasks_per_user", "retention_days"):
        positive(f"console.{key}", getattr(co, key))
    if co.window_bytes < 1024:
        p.append(f"console.window_bytes: must be at least 1024, got {co.window_bytes}")
    if co.task_output_tail_bytes < 0:
        p.append("console.task_output_tail_bytes: must not be negative")
    if co.command_timeout_seconds > co.max_command_timeout_seconds > 0:
        p.append("console.command_timeout_seconds: must not be longer than "
                 f"console.max_command_timeout_seconds ({co.command_timeout_seconds} > "
                 f"{co.max_command_timeout_seconds})")
    if p:
        raise ConfigError(p)


def from_dict(data: dict[str, Any]) -> Config:
    try:
        cfg = _converter.structure(data, Config)
    except Exception as exc:  # noqa: BLE001 - cattrs raises validation groups and plain errors alike
        problems: list[str] = []
        _collect(exc, "$", problems)
        raise ConfigError(problems) from None
    validate(cfg)
    return cfg


def load(path: str | os.PathLike[str] | None) -> Config:
    """Load and validate a config file; ``None`` gives the built-in defaults.

    Under systemd (``$STATE_DIRECTORY`` set) the default state directory is that one.
    """
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except OSError as exc:
            raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
    if "state_dir" not in data and os.environ.get("STATE_DIRECTORY"):
        data["state_dir"] = os.environ["STATE_DIRECTORY"].split(":")[0]
    return from_dict(data)
