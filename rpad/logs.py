"""Logging to stderr: text or JSON lines, syslog priority prefixes under journald, and no
secrets.

* ``format = "text"``: ``2026-01-01T00:00:00.000Z INFO    rpad.daemon: message``.
* ``format = "json"``: one object per line, ``{"ts", "level", "logger", "message"}`` (plus
  ``"exception"`` with the traceback).
* Under journald (``$JOURNAL_STREAM`` names the device and inode of our stderr), each line
  starts with the syslog priority, ``<6>`` for info, so ``journalctl -p warning`` works; the
  text format then leaves the timestamp to the journal.

Redaction: every formatted line, including tracebacks and third-party loggers' lines (Hypercorn,
trio-websocket), passes through :func:`redact`, which removes JWTs, ``token=`` (and similar)
query parameters, ``Authorization: Bearer`` values, ``"token": "…"`` JSON fields and the
literal values registered with :func:`add_secrets` (the daemon registers its signing
secrets). A token never reaches a log line, however it was passed.

Resource handling: :func:`setup` replaces the root logger's handlers with one stderr handler;
calling it again (on reload) swaps the formatter. Error handling: logging never raises into
the daemon (the standard library's handler reports its own errors on stderr).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterable
from typing import Any

REDACTED = "[redacted]"
# Shorter strings are not worth redacting as "secrets" (and would mangle ordinary words).
MIN_SECRET_CHARS = 8

_SYSLOG_PRIORITY = {
    logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7,
}

# A JWT's header is a JSON object, so its base64url encoding starts with "eyJ" ('{"'); the
# signature may be empty (alg none).
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.?[A-Za-z0-9_-]*")
_QUERY_SECRET = re.compile(
    r"(?i)([?&;](?:token|access_token|id_token|jwt|secret|password|key)=)[^&\s\"'#]+")
_BEARER = re.compile(r"(?i)\b(bearer\s+)[^\s\"',]+")
_JSON_SECRET = re.compile(
    r"(?i)([\"'](?:token|access_token|secret|password)[\"']\s*:\s*[\"'])[^\"']*")

_secrets: set[str] = set()


def add_secrets(values: Iterable[str | bytes]) -> None:
    """Register literal secret values (signing keys, passwords) to be redacted from every
    line."""
    for v in values:
        text = v.decode(errors="replace") if isinstance(v, bytes) else v
        text = text.strip()
        if len(text) >= MIN_SECRET_CHARS:
            _secrets.add(text)


def redact(text: str) -> str:
    """``text`` without anything that looks like a token or a registered secret."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    text = _JWT.sub(REDACTED, text)
    text = _QUERY_SECRET.sub(r"\1" + REDACTED, text)
    text = _BEARER.sub(r"\1" + REDACTED, text)
    return _JSON_SECRET.sub(r"\1" + REDACTED, text)


def under_journald() -> bool:
    """True when stderr is connected to the journal (``$JOURNAL_STREAM`` is ``DEV:INODE`` of
    the stream systemd connected)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    dev, sep, ino = stream.partition(":")
    if not sep:
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return f"{st.st_dev}:{st.st_ino}" == f"{dev}:{ino}"


def _utc(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


class TextFormatter(logging.Formatter):
    def __init__(self, journald: bool = False) -> None:
        super().__init__()
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.exc_info:
            msg += "\n" + self.formatException(record.exc_info)
        msg = redact(msg)
        if self.journald:  # the journal adds its own timestamps; every line gets the priority
            prio = _SYSLOG_PRIORITY.get(record.levelno, 6)
            return "\n".join(f"<{prio}>{line}" for line in f"{record.name}: {msg}".splitlines())
        return f"{_utc(record)} {record.levelname:<7} {record.name}: {msg}"


class JsonFormatter(logging.Formatter):
    def __init__(self, journald: bool = False) -> None:
        super().__init__()
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _utc(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        line = json.dumps(entry, ensure_ascii=False)
        if self.journald:
            return f"<{_SYSLOG_PRIORITY.get(record.levelno, 6)}>{line}"
        return line


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler :func:`setup` installed, so a second call replaces only it."""


def setup(level: str = "info", fmt: str = "text") -> None:
    """Log to stderr at ``level`` in ``fmt`` ("text" or "json"). Safe to call again (reload)."""
    journald = under_journald()
    handler = _Handler(sys.stderr)
    handler.setFormatter(JsonFormatter(journald) if fmt == "json" else TextFormatter(journald))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    set_level(level)


def reconfigure(level: str, fmt: str) -> None:
    """Apply a reloaded ``[logging]`` section: the level always; the format only if
    :func:`setup` installed the handler (an embedding application keeps its own)."""
    root = logging.getLogger()
    if any(isinstance(h, _Handler) for h in root.handlers):
        setup(level, fmt)
    else:
        set_level(level)


class _NotRunningOn(logging.Filter):
    """Drops Hypercorn's "Running on http://... (CTRL + C to quit)": `rpad serve` says where it
    listens, once."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Running on ")


_HYPERCORN_FILTER = _NotRunningOn()


def set_level(level: str) -> None:
    logging.getLogger().setLevel(level.upper())
    # Hypercorn's access log is one line per request (and heartbeats are most of them): keep
    # it off; rpad logs what is worth knowing itself.
    logging.getLogger("hypercorn.access").setLevel(logging.WARNING)
    logging.getLogger("hypercorn.error").addFilter(_HYPERCORN_FILTER)  # idempotent
    # trio-websocket's debug lines are per frame.
    logging.getLogger("trio-websocket").setLevel(max(logging.INFO, logging.getLogger().level))
