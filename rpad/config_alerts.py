"""The ``[alerts]`` section of the configuration: the policy and its overrides, maintenance
windows, and the targets (webhooks, email, Apprise) with their filters and templates.

The classes are structured by :mod:`rpad.config`'s converter (unknown keys refused);
:func:`validate_alerts` adds the checks of values, each problem named by its dotted key.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Literal, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import attrs

from .core.alert_policy import (
    KINDS,
    LEVELS,
    Grouping,
    Overrides,
    Policy,
    PolicyOverride,
)
from .core.alert_text import template_problems
from .core.silences import MaintenanceWindow, Match, parse_clock, parse_weekdays
from .core.validation import CLIENT_ID_RE, TAG_RE

Level = Literal["info", "success", "warning", "error", "urgent"]
ALL_EVENTS = [f"client.{k}" for k in KINDS]
TARGET_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")


def _all_events() -> list[str]:
    return list(ALL_EVENTS)


@attrs.frozen
class WebhookConfig:
    url: str
    # How the delivery log, the test API and logs name it (default: webhook-<hash of the URL>,
    # stable across restarts, so queued alerts find their target again).
    name: str = ""
    events: list[str] = attrs.Factory(_all_events)
    min_level: Level = "info"
    secret_file: str = ""
    timeout_seconds: float = 5.0
    max_attempts: int = 12
    queue_size: int = 1000

    @property
    def target_name(self) -> str:
        return self.name or "webhook-" + hashlib.sha256(self.url.encode()).hexdigest()[:8]


@attrs.frozen
class EmailConfig:
    enabled: bool = False
    name: str = "email"
    host: str = "127.0.0.1"
    port: int = 25
    starttls: bool = False
    username: str = ""
    password_file: str = ""
    sender: str = "rpad@localhost"
    recipients: list[str] = attrs.Factory(list)
    events: list[str] = attrs.Factory(_all_events)
    min_level: Level = "info"
    timeout_seconds: float = 10.0
    max_attempts: int = 12
    subject_template: str = ""
    body_template: str = ""

    @property
    def target_name(self) -> str:
        return self.name


@attrs.frozen
class AppriseConfig:
    """A chat, SMS or push target through Apprise (https://github.com/caronc/apprise/wiki)."""

    name: str
    # A file holding the Apprise URL (one per line for several services): its tokens are
    # secrets, so they live in a file (mode 0600), not in rpad.toml.
    url_file: str = ""
    # An Apprise URL without a secret (a local ntfy topic, say). One of url_file or url.
    url: str = ""
    events: list[str] = attrs.Factory(_all_events)
    min_level: Level = "info"
    title_template: str = ""
    body_template: str = ""
    timeout_seconds: float = 30.0
    max_attempts: int = 12
    queue_size: int = 1000

    @property
    def target_name(self) -> str:
        return self.name


@attrs.frozen
class NotificationsConfig:
    """The ``notifications`` topic's NOTIFICATIONs, as an alert channel."""

    enabled: bool = True
    events: list[str] = attrs.Factory(_all_events)
    min_level: Level = "info"


@attrs.frozen
class MaintenanceConfig:
    name: str
    days: list[str]
    start: str
    duration_minutes: float
    timezone: str = "UTC"
    client_ids: list[str] = attrs.Factory(list)
    tags: list[str] = attrs.Factory(list)

    def window(self) -> MaintenanceWindow:
        return MaintenanceWindow(self.name, Match(frozenset(self.client_ids), frozenset(self.tags)),
                                 parse_weekdays(self.days), parse_clock(self.start),
                                 self.duration_minutes * 60.0, self.timezone)


_DEFAULT = Policy()
_DEFAULT_LEVEL = cast(Level, _DEFAULT.offline_level)


@attrs.frozen
class PolicyConfig:
    """The default policy (see :class:`rpad.core.alert_policy.Policy`), grouping, and
    overrides per tag and per client (``[alerts.policy.tags.<tag>]``,
    ``[alerts.policy.clients.<clientId>]``)."""

    # The policy's own defaults (rpad.core.alert_state.Policy), written once there.
    alert_after_seconds: float = _DEFAULT.alert_after_seconds
    recover_after_seconds: float = _DEFAULT.recover_after_seconds
    flap_transitions: int = _DEFAULT.flap_transitions
    flap_window_seconds: float = _DEFAULT.flap_window_seconds
    repeat_every_seconds: float = _DEFAULT.repeat_every_seconds
    max_reminders: int = _DEFAULT.max_reminders
    offline_level: Level = _DEFAULT_LEVEL
    group_window_seconds: float = 60.0
    group_threshold: int = 3
    tags: dict[str, PolicyOverride] = attrs.Factory(dict)
    clients: dict[str, PolicyOverride] = attrs.Factory(dict)

    def policy(self) -> Policy:
        return Policy(self.alert_after_seconds, self.recover_after_seconds,
                      self.flap_transitions, self.flap_window_seconds,
                      self.repeat_every_seconds, self.max_reminders, self.offline_level)

    def grouping(self) -> Grouping:
        return Grouping(self.group_window_seconds, self.group_threshold)

    def overrides(self) -> Overrides:
        return Overrides(dict(self.tags), dict(self.clients))


@attrs.frozen
class AlertsConfig:
    policy: PolicyConfig = attrs.Factory(PolicyConfig)
    maintenance: list[MaintenanceConfig] = attrs.Factory(list)
    notifications: NotificationsConfig = attrs.Factory(NotificationsConfig)
    webhooks: list[WebhookConfig] = attrs.Factory(list)
    email: EmailConfig = attrs.Factory(EmailConfig)
    apprise: list[AppriseConfig] = attrs.Factory(list)
    # An alert not delivered within this time is given up (and logged as expired): news that
    # old is no longer news.
    max_age_seconds: float = 6 * 3600.0
    # Finished deliveries kept per target in the delivery log.
    log_per_target: int = 1000


ALERT_SECTIONS: tuple[type, ...] = (
    WebhookConfig, EmailConfig, AppriseConfig, NotificationsConfig, MaintenanceConfig,
    PolicyConfig, PolicyOverride, AlertsConfig)


def override_problems(key: str, o: PolicyOverride) -> list[str]:
    """Impossible values of a policy (or override), each named by ``key.field``."""
    p: list[str] = []
    for name in ("alert_after_seconds", "recover_after_seconds", "flap_window_seconds",
                 "repeat_every_seconds"):
        v = getattr(o, name)
        if v is not None and not 0 <= v <= 366 * 86400:
            p.append(f"{key}.{name}: must be from 0 to 31622400 seconds, got {v}")
    for name in ("flap_transitions", "max_reminders"):
        v = getattr(o, name)
        if v is not None and not 0 <= v <= 1000:
            p.append(f"{key}.{name}: must be from 0 to 1000, got {v}")
    if o.offline_level is not None and o.offline_level not in LEVELS:
        p.append(f"{key}.offline_level: {o.offline_level!r} is not one of {', '.join(LEVELS)}")
    if o.flap_transitions == 1:
        p.append(f"{key}.flap_transitions: 1 would make every transition flapping; use 0 "
                 "(off) or at least 2")
    return p


def _apprise_problems(key: str, ap: AppriseConfig) -> list[str]:
    """URLs Apprise does not understand (never quoting them: they hold tokens)."""
    where = f"{key}.url_file" if ap.url_file else f"{key}.url"
    try:
        text = Path(ap.url_file).read_text() if ap.url_file else ap.url
    except OSError:
        return []  # reported by the readability check
    urls = [u.strip() for u in text.splitlines() if u.strip() and not u.startswith("#")]
    if not urls:
        return [f"{where}: names no Apprise URL"] if (ap.url_file or ap.url) else []
    import apprise  # a large import: only when a target uses it

    out = []
    for i, url in enumerate(urls):
        if not apprise.Apprise().add(url):
            out.append(f"{where}: Apprise does not understand URL number {i + 1} (see "
                       "https://github.com/caronc/apprise/wiki for the formats)")
    return out


def _events(key: str, events: list[str], p: list[str]) -> None:
    for ev in events:
        if ev not in ALL_EVENTS:
            p.append(f"{key}.events: unknown event {ev!r} ({', '.join(ALL_EVENTS)})")


def validate_alerts(a: AlertsConfig, p: list[str], readable: Callable[[str, str, list[str]], None],
                    positive: Callable[[str, float], None]) -> None:
    """Append every problem of the ``[alerts]`` section to ``p``."""
    pc = a.policy
    p.extend(override_problems("alerts.policy", PolicyOverride(**{
        f.name: getattr(pc, f.name) for f in attrs.fields(PolicyOverride)})))
    if pc.flap_transitions and pc.flap_window_seconds <= 0:
        p.append("alerts.policy.flap_window_seconds: must be greater than 0 with flapping on")
    if pc.group_threshold < 0:
        p.append("alerts.policy.group_threshold: must not be negative (0: no grouping)")
    if pc.group_threshold and not 0 < pc.group_window_seconds <= 3600:
        p.append("alerts.policy.group_window_seconds: must be from 0 to 3600 seconds")
    for tag, o in pc.tags.items():
        if not TAG_RE.fullmatch(tag):
            p.append(f"alerts.policy.tags.{tag}: not a tag (1 to 64 printable characters)")
        p.extend(override_problems(f"alerts.policy.tags.{tag}", o))
    for cid, o in pc.clients.items():
        if not CLIENT_ID_RE.fullmatch(cid):
            p.append(f"alerts.policy.clients.{cid}: not a client id")
        p.extend(override_problems(f"alerts.policy.clients.{cid}", o))
    for i, m in enumerate(a.maintenance):
        key = f"alerts.maintenance[{i}]"
        try:
            parse_weekdays(m.days)
        except ValueError as exc:
            p.append(f"{key}.days: {exc}")
        if not m.days:
            p.append(f"{key}.days: name at least one day")
        try:
            parse_clock(m.start)
        except ValueError as exc:
            p.append(f"{key}.start: {exc}")
        if not 0 < m.duration_minutes <= 7 * 24 * 60:
            p.append(f"{key}.duration_minutes: must be more than 0 and at most a week")
        try:
            ZoneInfo(m.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            p.append(f"{key}.timezone: {m.timezone!r} is not a known time zone "
                     "(such as Europe/Berlin)")
        if not m.client_ids and not m.tags:
            p.append(f"{key}: name client_ids or tags")
        for j, t in enumerate(m.tags):
            if not TAG_RE.fullmatch(t) or re.search(r"[*?\[\]]", t):
                p.append(f"{key}.tags[{j}]: not a tag (tags match exactly, no wildcards)")
    notif = a.notifications
    _events("alerts.notifications", notif.events, p)
    names: dict[str, str] = {}

    def target(key: str, name: str, events: list[str], max_attempts: int) -> None:
        if not TARGET_NAME_RE.fullmatch(name):
            p.append(f"{key}.name: {name!r} must be 1 to 64 characters of A-Z a-z 0-9 . _ -")
        elif name in names:
            p.append(f"{key}.name: {name!r} is also the name of {names[name]}")
        names[name] = key
        _events(key, events, p)
        positive(f"{key}.max_attempts", max_attempts)

    for i, hook in enumerate(a.webhooks):
        key = f"alerts.webhooks[{i}]"
        if not re.match(r"https?://", hook.url):
            p.append(f"{key}.url: must start with http:// or https://, got {hook.url!r}")
        target(key, hook.target_name, hook.events, hook.max_attempts)
        positive(f"{key}.timeout_seconds", hook.timeout_seconds)
        positive(f"{key}.queue_size", hook.queue_size)
        readable(f"{key}.secret_file", hook.secret_file, p)
    em = a.email
    if em.enabled:
        target("alerts.email", em.name, em.events, em.max_attempts)
        if not em.recipients:
            p.append("alerts.email.recipients: must name at least one address when email is enabled")
    if not 0 < em.port <= 65535:
        p.append(f"alerts.email.port: must be from 1 to 65535, got {em.port}")
    readable("alerts.email.password_file", em.password_file, p)
    p.extend(f"alerts.email.subject_template: {x}" for x in template_problems(em.subject_template))
    p.extend(f"alerts.email.body_template: {x}" for x in template_problems(em.body_template))
    for i, ap in enumerate(a.apprise):
        key = f"alerts.apprise[{i}]"
        target(key, ap.name, ap.events, ap.max_attempts)
        if bool(ap.url_file) == bool(ap.url):
            p.append(f"{key}: set url_file (the Apprise URL in a file, for URLs with tokens) "
                     "or url, not both")
        readable(f"{key}.url_file", ap.url_file, p)
        p.extend(_apprise_problems(key, ap))
        positive(f"{key}.timeout_seconds", ap.timeout_seconds)
        positive(f"{key}.queue_size", ap.queue_size)
        p.extend(f"{key}.title_template: {x}" for x in template_problems(ap.title_template))
        p.extend(f"{key}.body_template: {x}" for x in template_problems(ap.body_template))
    positive("alerts.max_age_seconds", a.max_age_seconds)
    positive("alerts.log_per_target", a.log_per_target)
