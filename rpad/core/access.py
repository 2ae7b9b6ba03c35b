"""Who may subscribe to and publish on which topic (SPEC §5).

Agents use neither. Viewers, services and admins may subscribe to the built-in topics
(``stats`` only admins) and to topics matching their token's ``topics`` globs (admins to
anything). Publishing from a WebSocket needs a matching ``publish`` glob (or the admin role);
the topics rpad itself feeds take no outside messages.
"""

from __future__ import annotations

import fnmatch

from .principal import Principal
from .topics import RPAD_ONLY_TOPICS, VIEWER_TOPICS


def may_subscribe(p: Principal, topic: str) -> bool:
    if p.role == "agent":
        return False
    if p.is_admin or topic in VIEWER_TOPICS:
        return True
    return any(fnmatch.fnmatchcase(topic, glob) for glob in p.topics)


def may_publish_from_websocket(p: Principal, topic: str) -> bool:
    if topic in RPAD_ONLY_TOPICS or p.role == "agent":
        return False
    if p.is_admin:
        return True
    return any(fnmatch.fnmatchcase(topic, glob) for glob in p.publish)
