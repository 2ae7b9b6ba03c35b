"""Who may subscribe to and publish on which topic (SPEC §5).

The built-in topics (:data:`~rpad.core.topics.BUILTIN_TOPICS`) are governed by the role alone;
a token's ``topics`` and ``publish`` globs grant app topics only, whatever they say (``*``,
``**``, ``?*``, ``[a-z]*``, … match no built-in topic):

- **subscribe**: viewers, services and admins may subscribe to every built-in topic but
  ``stats``, which is the admins'; to an app topic with a matching ``topics`` glob (admins to
  any). Agents subscribe to nothing.
- **publish**: ``client_status``, ``heartbeat``, ``servers`` and ``stats`` carry only what rpad
  itself says: nobody publishes there. ``system`` (broadcasts, held by every connection) takes
  only the admin's messages, and ``notifications`` the admin's and the notifications a service
  sends through ``POST /api/v1/websocket/notify`` (which builds their shape itself), so a
  leaked ``publish: ["*"]`` token cannot put a forged system message or notification on every
  dashboard. App topics: from a WebSocket with a matching ``publish`` glob (admins: any), over
  ``POST /api/v1/publish`` and ``notify`` with the service role.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

from .principal import Principal
from .topics import BUILTIN_TOPICS, RPAD_ONLY_TOPICS, TOPIC_NOTIFICATIONS, VIEWER_TOPICS


def _granted(topic: str, globs: Iterable[str]) -> bool:
    """Whether a claim's globs grant ``topic``: never a built-in one."""
    if topic in BUILTIN_TOPICS:
        return False
    return any(fnmatch.fnmatchcase(topic, glob) for glob in globs)


def may_subscribe(p: Principal, topic: str) -> bool:
    if p.role == "agent":
        return False
    if p.is_admin:
        return True
    if topic in BUILTIN_TOPICS:
        return topic in VIEWER_TOPICS
    return _granted(topic, p.topics)


def may_publish_from_websocket(p: Principal, topic: str) -> bool:
    """The WebSocket ``publish`` action."""
    if p.role == "agent" or topic in RPAD_ONLY_TOPICS:
        return False
    if p.is_admin:
        return True
    return _granted(topic, p.publish)


def may_publish_from_api(p: Principal, topic: str) -> bool:
    """``POST /api/v1/publish`` (the route requires the service role or admin)."""
    if topic in RPAD_ONLY_TOPICS:
        return False
    return p.is_admin or topic not in BUILTIN_TOPICS


def may_notify(p: Principal, topic: str | None) -> bool:
    """``POST /api/v1/websocket/notify`` to ``topic`` (None: ``notifications``; the route
    requires the service role or admin)."""
    if topic is None or topic == TOPIC_NOTIFICATIONS:
        return True
    return may_publish_from_api(p, topic)
