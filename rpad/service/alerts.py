"""Alerts (SPEC §6): webhooks and email when a client goes offline or comes back online.

:class:`Alerts` is the :class:`~rpad.service.presence.AlertSink`. ``client_transition`` is called
synchronously on the heartbeat and sweeper paths; it serializes the alert once and offers it
to each target's bounded queue with ``send_nowait``. It never waits: a full queue drops the
alert and counts the drop. Each target has one worker task that takes alerts off its queue
and delivers them one at a time:

- a webhook POSTs the JSON body with ``X-Rpad-Signature: sha256=<hex HMAC-SHA256 of the body>``
  (when it has a ``secret_file``), waits at most ``timeout_seconds`` for an answer, and retries
  a failed delivery up to ``max_attempts`` times with exponential backoff (1 s, 2 s, 4 s, …, at
  most 60 s). A 2xx answer is a delivery; a 4xx other than 408 and 429 means the receiver
  refused this alert, so it is not retried;
- email goes through ``smtplib`` in a worker thread (``trio.to_thread``), with the same
  retries.

Counters (``delivered``, ``failed``, ``dropped``, ``attempts`` per target, and totals on
:class:`Alerts`) are plain attributes for the metrics exporter.

Resource handling: the workers run in :meth:`Alerts.run`, started in the daemon's nursery and
cancelled with it; alerts still queued at shutdown are counted in the log, not delivered.
:meth:`Alerts.reconfigure` (SIGHUP) keeps the workers of unchanged targets (and their queues),
starts new ones and cancels removed ones.

Error handling: a delivery failure is logged and counted, never raised; a bug in a worker
crashes the nursery like any other.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import smtplib
import ssl
from collections.abc import Awaitable, Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs
import trio

from ..client import httpclient
from ..client.backoff import backoff_delay
from ..config import AlertsConfig, EmailConfig, WebhookConfig
from ..core.jsonenc import dumps_bytes
from ..core.model import CLIENT_CONNECTED, CLIENT_DISCONNECTED, Event
from ..core.times import iso

log = logging.getLogger(__name__)

EVENT_NAMES = {CLIENT_DISCONNECTED: "client.offline", CLIENT_CONNECTED: "client.online"}
SIGNATURE_HEADER = "X-Rpad-Signature"
RETRY_INITIAL_SECONDS = 1.0
RETRY_MAXIMUM_SECONDS = 60.0
EMAIL_QUEUE_SIZE = 100
EMAIL_MAX_ATTEMPTS = 3
# Log a run of drops once, then again every this many drops.
DROP_LOG_EVERY = 100

Sleep = Callable[[float], Awaitable[None]]


@attrs.frozen
class Alert:
    """One transition, serialized once for every target."""

    event: str
    client_id: str
    reason: str | None
    at: str | None
    delivery_id: str
    body: bytes
    client: dict[str, Any]


def make_alert(ev: Event) -> Alert | None:
    name = EVENT_NAMES.get(ev.type)
    if name is None:
        return None
    delivery_id = secrets.token_hex(12)
    at = iso(ev.at)
    payload = {"event": name, "clientId": ev.client_id, "reason": ev.reason, "at": at,
               "deliveryId": delivery_id, "client": ev.data}
    body = dumps_bytes(payload)
    return Alert(name, ev.client_id, ev.reason, at, delivery_id, body, ev.data)


def sign(secret: bytes, body: bytes) -> str:
    """The ``X-Rpad-Signature`` header value for ``body``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def _read_secret(path: str) -> bytes | None:
    if not path:
        return None
    secret = Path(path).read_bytes().strip()
    if not secret:
        raise ValueError(f"{path} is empty")
    return secret


def _retry_delay(attempt: int) -> float:
    return backoff_delay(attempt, initial=RETRY_INITIAL_SECONDS, maximum=RETRY_MAXIMUM_SECONDS,
                         jitter=0.0)


class _Target:
    """A queue and its worker's counters. Subclasses implement :meth:`attempt`."""

    kind = "target"

    def __init__(self, events: list[str], queue_size: int, max_attempts: int) -> None:
        self.events = frozenset(events)
        self.max_attempts = max_attempts
        self._send, self._receive = trio.open_memory_channel[Alert](queue_size)
        self.cancel_scope = trio.CancelScope()
        self.delivered = 0
        self.failed = 0
        self.dropped = 0
        self.attempts = 0

    @property
    def name(self) -> str:
        raise NotImplementedError

    @property
    def label(self) -> str:
        """How logs name the target (never a secret)."""
        return self.name

    @property
    def queued(self) -> int:
        return self._send.statistics().current_buffer_used

    def offer(self, alert: Alert) -> None:
        if alert.event not in self.events:
            return
        try:
            self._send.send_nowait(alert)
        except trio.WouldBlock:
            self.dropped += 1
            if self.dropped % DROP_LOG_EVERY == 1:
                log.warning("%s %s: queue full, alert dropped (%d dropped so far)",
                            self.kind, self.label, self.dropped)

    async def attempt(self, alert: Alert) -> tuple[bool, bool, str]:
        """One delivery attempt: (delivered, worth retrying, what happened)."""
        raise NotImplementedError

    async def run(self, sleep: Sleep) -> None:
        try:
            with self.cancel_scope:
                async for alert in self._receive:
                    await self.deliver(alert, sleep)
        finally:
            left = self.queued
            if left:
                log.warning("%s %s: %d queued alerts not delivered", self.kind, self.label, left)

    async def deliver(self, alert: Alert, sleep: Sleep) -> bool:
        what = ""
        for n in range(self.max_attempts):
            if n:
                await sleep(_retry_delay(n - 1))
            self.attempts += 1
            ok, retry, what = await self.attempt(alert)
            if ok:
                self.delivered += 1
                log.debug("%s %s: %s for %s delivered", self.kind, self.label, alert.event,
                          alert.client_id)
                return True
            log.info("%s %s: attempt %d of %d for %s %s failed: %s", self.kind, self.label,
                     n + 1, self.max_attempts, alert.event, alert.client_id, what)
            if not retry:
                break
        self.failed += 1
        log.warning("%s %s: gave up on %s for %s: %s", self.kind, self.label, alert.event,
                    alert.client_id, what)
        return False

    def stats(self) -> dict[str, Any]:
        return {"kind": self.kind, "target": self.name, "delivered": self.delivered,
                "failed": self.failed, "dropped": self.dropped, "attempts": self.attempts,
                "queued": self.queued}


class Webhook(_Target):
    kind = "webhook"

    def __init__(self, cfg: WebhookConfig) -> None:
        super().__init__(cfg.events, cfg.queue_size, cfg.max_attempts)
        self.config = cfg
        self.secret = _read_secret(cfg.secret_file)

    @property
    def name(self) -> str:
        return self.config.url

    @property
    def label(self) -> str:
        # A webhook URL's path and query often carry a token (Slack, Teams, ...): logs show
        # only where it goes.
        parts = urlsplit(self.config.url)
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{parts.hostname}{port}/…"

    def headers(self, alert: Alert) -> dict[str, str]:
        h = {"Content-Type": "application/json", "X-Rpad-Event": alert.event,
             "X-Rpad-Delivery": alert.delivery_id}
        if self.secret is not None:
            h[SIGNATURE_HEADER] = sign(self.secret, alert.body)
        return h

    async def attempt(self, alert: Alert) -> tuple[bool, bool, str]:
        try:
            resp = await httpclient.request("POST", self.config.url, body=alert.body,
                                            headers=self.headers(alert),
                                            timeout_seconds=self.config.timeout_seconds)
        except httpclient.HttpError as exc:
            return False, True, str(exc)
        if 200 <= resp.status < 300:
            return True, False, f"HTTP {resp.status}"
        retry = resp.status >= 500 or resp.status in (408, 429)
        return False, retry, f"HTTP {resp.status}"


class Email(_Target):
    kind = "email"

    def __init__(self, cfg: EmailConfig) -> None:
        super().__init__(cfg.events, EMAIL_QUEUE_SIZE, EMAIL_MAX_ATTEMPTS)
        self.config = cfg
        self.password = (Path(cfg.password_file).read_text().strip()
                         if cfg.password_file else None)

    @property
    def name(self) -> str:
        return f"{self.config.host}:{self.config.port}"

    def message(self, alert: Alert) -> EmailMessage:
        c = alert.client
        label = c.get("name") or alert.client_id
        state = "offline" if alert.event == "client.offline" else "back online"
        msg = EmailMessage()
        msg["Subject"] = f"[rpad] {label} is {state}" + (
            f" ({alert.reason})" if alert.event == "client.offline" and alert.reason else "")
        msg["From"] = self.config.sender
        msg["To"] = ", ".join(self.config.recipients)
        msg["X-Rpad-Event"] = alert.event
        msg["X-Rpad-Delivery"] = alert.delivery_id
        lines = [
            f"Client {alert.client_id} is {state}.",
            "",
            f"Event:           {alert.event}",
            f"Reason:          {alert.reason or '-'}",
            f"At:              {alert.at}",
            f"Name:            {c.get('name') or '-'}",
            f"IP address:      {c.get('ipAddress') or '-'}",
            f"Version:         {c.get('version') or '-'}",
            f"Last heartbeat:  {c.get('lastHeartbeatAt') or '-'}",
        ]
        msg.set_content("\n".join(lines) + "\n")
        return msg

    def _send_blocking(self, msg: EmailMessage) -> None:
        cfg = self.config
        with smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout_seconds) as smtp:
            if cfg.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if cfg.username:
                smtp.login(cfg.username, self.password or "")
            smtp.send_message(msg)

    async def attempt(self, alert: Alert) -> tuple[bool, bool, str]:
        msg = self.message(alert)
        try:
            await trio.to_thread.run_sync(self._send_blocking, msg, abandon_on_cancel=True)
        except smtplib.SMTPAuthenticationError as exc:
            return False, False, f"SMTP authentication refused: {exc.smtp_code}"
        except smtplib.SMTPRecipientsRefused as exc:
            return False, False, f"recipients refused: {', '.join(exc.recipients)}"
        except (smtplib.SMTPException, OSError) as exc:
            return False, True, f"{type(exc).__name__}: {exc}"
        return True, False, "sent"


class Alerts:
    """The alert sink: routes transitions to the configured targets' queues."""

    def __init__(self, cfg: AlertsConfig, *, sleep: Sleep = trio.sleep) -> None:
        self.config = cfg
        self.sleep = sleep
        self.webhooks: list[Webhook] = [Webhook(w) for w in cfg.webhooks]
        self.email: Email | None = Email(cfg.email) if cfg.email.enabled else None
        self._nursery: trio.Nursery | None = None

    @property
    def targets(self) -> list[_Target]:
        out: list[_Target] = list(self.webhooks)
        if self.email is not None:
            out.append(self.email)
        return out

    # Totals for the metrics exporter.
    @property
    def delivered(self) -> int:
        return sum(t.delivered for t in self.targets)

    @property
    def failed(self) -> int:
        return sum(t.failed for t in self.targets)

    @property
    def dropped(self) -> int:
        return sum(t.dropped for t in self.targets)

    def stats(self) -> list[dict[str, Any]]:
        return [t.stats() for t in self.targets]

    def client_transition(self, event: Event) -> None:
        targets = self.targets
        if not targets:
            return
        alert = make_alert(event)
        if alert is None:
            return
        for t in targets:
            t.offer(alert)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run every target's worker until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for t in self.targets:
                nursery.start_soon(t.run, self.sleep)
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None

    def reconfigure(self, cfg: AlertsConfig) -> None:
        """Apply new alert settings (SIGHUP). Unchanged targets keep their queue and worker."""
        try:
            old = list(self.webhooks)
            webhooks: list[Webhook] = []
            for wc in cfg.webhooks:
                secret = _read_secret(wc.secret_file)
                kept = next((w for w in old if w.config == wc and w.secret == secret), None)
                if kept is not None:
                    old.remove(kept)
                webhooks.append(kept if kept is not None else Webhook(wc))
            email = self.email
            if not cfg.email.enabled:
                email = None
            elif email is None or email.config != cfg.email:
                email = Email(cfg.email)
        except (OSError, ValueError) as exc:
            log.error("alerts: keeping the previous targets, cannot apply the new ones: %s", exc)
            return
        removed: list[_Target] = list(old)
        if self.email is not None and email is not self.email:
            removed.append(self.email)
        started: list[_Target] = [t for t in webhooks if t not in self.webhooks]
        if email is not None and email is not self.email:
            started.append(email)
        self.config, self.webhooks, self.email = cfg, webhooks, email
        for t in removed:
            t.cancel_scope.cancel()
        if self._nursery is not None:
            for t in started:
                self._nursery.start_soon(t.run, self.sleep)
        if removed or started:
            log.info("alerts: %d targets started, %d stopped", len(started), len(removed))
