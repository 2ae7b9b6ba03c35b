"""Alert channels: how one delivery attempt reaches a webhook, an SMTP server or an Apprise
service. :mod:`rpad.service.outbox` decides when to attempt and what to do with the result.

- :class:`Webhook`: ``POST`` the alert's JSON with ``X-Rpad-Event``, ``X-Rpad-Delivery`` (the
  same on every retry and after a restart, for deduplication) and, with a ``secret_file``,
  ``X-Rpad-Signature: sha256=<hex HMAC-SHA256 of the body>``. 2xx is a delivery; a network
  error, a timeout, 5xx, 408 and 429 are worth retrying; another 4xx is a refusal.
- :class:`Email`: ``smtplib`` in a worker thread; subject and body from templates.
- :class:`AppriseChannel`: Apprise (Slack, Telegram, Discord, Teams, ntfy, Gotify, Pushover,
  Twilio SMS, ...) in a worker thread, never on the event loop; the URLs come from a file
  (their tokens are secrets) and are registered with the log redactor. Apprise answers only
  "sent" or "not sent", so every failure is retried.

Each attempt returns ``(delivered, worth retrying, what happened)``; nothing here raises for a
delivery failure. A worker thread still running when its attempt times out is abandoned (its
result ignored): the next attempt may then deliver the same alert twice, with the same
delivery id.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import smtplib
import ssl
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import trio

from .. import logs
from ..client import httpclient
from ..config import AppriseConfig, EmailConfig, WebhookConfig
from ..core.alert_policy import level_rank
from ..core.alert_text import render
from ..core.jsonenc import dumps_bytes

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Rpad-Signature"
# Apprise knows four message types; rpad's five levels map onto them.
APPRISE_TYPES = {"info": "info", "success": "success", "warning": "warning",
                 "error": "failure", "urgent": "failure"}

Outcome = tuple[bool, bool, str]


def sign(secret: bytes, body: bytes) -> str:
    """The ``X-Rpad-Signature`` header value for ``body``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def read_secret(path: str) -> bytes | None:
    if not path:
        return None
    secret = Path(path).read_bytes().strip()
    if not secret:
        raise ValueError(f"{path} is empty")
    return secret


def _filter_event(payload: dict[str, Any]) -> str:
    return "client." + str(payload.get("kind", ""))


class Channel:
    """A configured target. Subclasses implement :meth:`attempt`."""

    kind = "target"

    def __init__(self, name: str, events: list[str], min_level: str, max_attempts: int,
                 queue_size: int) -> None:
        self.name = name
        self.events = frozenset(events)
        self.min_level = min_level
        self.max_attempts = max_attempts
        self.queue_size = queue_size

    @property
    def label(self) -> str:
        """How logs show the target (never a secret)."""
        return self.name

    def accepts(self, payload: dict[str, Any]) -> bool:
        """The target's filters: its events and minimum level (a test alert always)."""
        if payload.get("kind") == "test":
            return True
        return (_filter_event(payload) in self.events
                and level_rank(str(payload.get("level"))) >= level_rank(self.min_level))

    def same_as(self, other: Channel) -> bool:
        """Configured identically (a reload keeps its worker and queue)."""
        return type(self) is type(other) and self.name == other.name and self._key() == other._key()

    def _key(self) -> Any:
        raise NotImplementedError

    async def attempt(self, payload: dict[str, Any]) -> Outcome:
        raise NotImplementedError


class Webhook(Channel):
    kind = "webhook"

    def __init__(self, cfg: WebhookConfig) -> None:
        super().__init__(cfg.target_name, cfg.events, cfg.min_level, cfg.max_attempts,
                         cfg.queue_size)
        self.config = cfg
        self.secret = read_secret(cfg.secret_file)

    def _key(self) -> Any:
        return (self.config, self.secret)

    @property
    def label(self) -> str:
        # A webhook URL's path and query often carry a token (Slack, Teams, ...): logs show
        # only where it goes.
        parts = urlsplit(self.config.url)
        port = f":{parts.port}" if parts.port else ""
        return f"{self.name} ({parts.scheme}://{parts.hostname}{port}/…)"

    def headers(self, payload: dict[str, Any], body: bytes) -> dict[str, str]:
        h = {"Content-Type": "application/json", "X-Rpad-Event": str(payload.get("event")),
             "X-Rpad-Delivery": str(payload.get("deliveryId"))}
        if self.secret is not None:
            h[SIGNATURE_HEADER] = sign(self.secret, body)
        return h

    async def attempt(self, payload: dict[str, Any]) -> Outcome:
        body = dumps_bytes(payload)
        try:
            resp = await httpclient.request("POST", self.config.url, body=body,
                                            headers=self.headers(payload, body),
                                            timeout_seconds=self.config.timeout_seconds)
        except httpclient.HttpError as exc:
            return False, True, str(exc)
        if 200 <= resp.status < 300:
            return True, False, f"HTTP {resp.status}"
        retry = resp.status >= 500 or resp.status in (408, 429)
        return False, retry, f"HTTP {resp.status}"


class Email(Channel):
    kind = "email"

    def __init__(self, cfg: EmailConfig) -> None:
        super().__init__(cfg.target_name, cfg.events, cfg.min_level, cfg.max_attempts, 1000)
        self.config = cfg
        self.password = (Path(cfg.password_file).read_text().strip()
                         if cfg.password_file else None)

    def _key(self) -> Any:
        return (self.config, self.password)

    @property
    def label(self) -> str:
        return f"{self.name} ({self.config.host}:{self.config.port})"

    def message(self, payload: dict[str, Any]) -> EmailMessage:
        subject, text = render(payload, self.config.subject_template, self.config.body_template)
        msg = EmailMessage()
        msg["Subject"] = f"[rpad] {subject}"
        msg["From"] = self.config.sender
        msg["To"] = ", ".join(self.config.recipients)
        msg["X-Rpad-Event"] = str(payload.get("event"))
        msg["X-Rpad-Delivery"] = str(payload.get("deliveryId"))
        msg["X-Rpad-Level"] = str(payload.get("level"))
        msg.set_content(text + "\n")
        return msg

    def _send_blocking(self, msg: EmailMessage) -> None:
        cfg = self.config
        with smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout_seconds) as smtp:
            if cfg.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if cfg.username:
                smtp.login(cfg.username, self.password or "")
            smtp.send_message(msg)

    async def attempt(self, payload: dict[str, Any]) -> Outcome:
        msg = self.message(payload)
        try:
            await trio.to_thread.run_sync(self._send_blocking, msg, abandon_on_cancel=True)
        except smtplib.SMTPAuthenticationError as exc:
            return False, False, f"SMTP authentication refused: {exc.smtp_code}"
        except smtplib.SMTPRecipientsRefused as exc:
            return False, False, f"recipients refused: {', '.join(exc.recipients)}"
        except (smtplib.SMTPException, OSError) as exc:
            return False, True, f"{type(exc).__name__}: {exc}"
        return True, False, "sent"


class AppriseChannel(Channel):
    kind = "apprise"

    def __init__(self, cfg: AppriseConfig) -> None:
        super().__init__(cfg.target_name, cfg.events, cfg.min_level, cfg.max_attempts,
                         cfg.queue_size)
        self.config = cfg
        text = Path(cfg.url_file).read_text() if cfg.url_file else cfg.url
        self.urls = [u.strip() for u in text.splitlines() if u.strip() and not u.startswith("#")]
        if not self.urls:
            raise ValueError(f"{cfg.url_file or 'url'} names no Apprise URL")
        if cfg.url_file:
            logs.add_secrets(self.urls)
        import apprise

        self._apprise = apprise
        # Apprise's debug lines show the services' URLs, tokens included: warnings only.
        logging.getLogger("apprise").setLevel(logging.WARNING)
        probe = apprise.Apprise()
        for i, url in enumerate(self.urls):
            if not probe.add(url):
                raise ValueError(f"Apprise does not understand URL number {i + 1} of "
                                 f"{cfg.url_file or 'url'} (see the Apprise wiki for the format)")
        self.services = ", ".join(sorted({u.split(":", 1)[0] for u in self.urls}))

    def _key(self) -> Any:
        return (self.config, tuple(self.urls))

    @property
    def label(self) -> str:
        return f"{self.name} ({self.services}://…)"

    def _notify_blocking(self, title: str, body: str, level: str) -> tuple[bool, str]:
        ap = self._apprise.Apprise()
        for url in self.urls:
            ap.add(url)
        result = ap.notify(body=body, title=title, notify_type=APPRISE_TYPES.get(level, "info"))
        if result:
            return True, "sent"
        return False, "Apprise could not deliver it (its reason is in rpad's log)"

    async def attempt(self, payload: dict[str, Any]) -> Outcome:
        title, body = render(payload, self.config.title_template, self.config.body_template)
        level = str(payload.get("level", "info"))
        with trio.move_on_after(self.config.timeout_seconds):
            ok, what = await trio.to_thread.run_sync(self._notify_blocking, title, body, level,
                                                     abandon_on_cancel=True)
            return ok, not ok, what
        return False, True, f"no answer within {self.config.timeout_seconds:g} s"


def build_channels(webhooks: list[WebhookConfig], email: EmailConfig,
                   apprise: list[AppriseConfig]) -> list[Channel]:
    """Every configured target. Raises OSError/ValueError for an unreadable secret or URL
    file, or a URL Apprise does not understand."""
    out: list[Channel] = [Webhook(w) for w in webhooks]
    if email.enabled:
        out.append(Email(email))
    out.extend(AppriseChannel(a) for a in apprise)
    return out
