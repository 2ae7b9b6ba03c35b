"""Feeds: what rpad tells dashboards, through the :class:`~rpad.backend.base.Broker`.

Presence events go to ``client_status`` (transitions, status updates, removals) and
``heartbeat``, each message stamped with the time its event happened, all of them at once.
The alert policy (:mod:`rpad.service.alerts`) decides which become a ``NOTIFICATION`` on
``notifications`` (:meth:`Feeds.publish_notice`). The
management API's notifications, broadcasts and app events come through here too, so every
message rpad sends is built in one place.

Resource handling: none (the broker delivers). Error handling: :meth:`Feeds.publish` raises
ValueError/TypeError for data that is not JSON (nothing is published then).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

from ..backend.base import Broker
from ..core.alert_text import Notice
from ..core.jsonenc import dumps
from ..core.model import HEARTBEAT_RECEIVED, Event
from ..core.times import iso
from ..core.topics import (
    NOTIFICATION,
    TOPIC_CLIENT_STATUS,
    TOPIC_HEARTBEAT,
    TOPIC_NOTIFICATIONS,
    TOPIC_SYSTEM,
)


class Feeds:
    def __init__(self, broker: Broker, *, wall_clock: Callable[[], float]) -> None:
        self.broker = broker
        self.wall_clock = wall_clock
        self._notification_ids = itertools.count(1)

    def publish_events(self, events: Sequence[Event]) -> None:
        """Presence events to their topics (never blocks)."""
        broker = self.broker
        for ev in events:
            topic = TOPIC_HEARTBEAT if ev.type == HEARTBEAT_RECEIVED else TOPIC_CLIENT_STATUS
            broker.publish_nowait(topic, ev.type, dumps(ev.data), at=ev.at)

    def publish_notice(self, notice: Notice) -> None:
        """An alert's NOTIFICATION to ``notifications`` (never blocks)."""
        data = self.notification(title=notice.title, message=notice.message,
                                 level=notice.level, auto_close=notice.auto_close,
                                 extra=notice.extra)
        self.broker.publish_nowait(TOPIC_NOTIFICATIONS, NOTIFICATION, dumps(data))

    def notification(self, *, title: str, message: str, level: str = "info",
                     action_url: str | None = None, auto_close: bool | float | None = None,
                     extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """A NOTIFICATION's data, with a fresh id."""
        data: dict[str, Any] = {
            "id": f"{self.broker.epoch}-{next(self._notification_ids)}",
            "title": title, "message": message, "level": level, "actionUrl": action_url,
            "autoClose": auto_close, "timestamp": iso(self.wall_clock()),
        }
        if extra:
            data.update(extra)
        return data

    async def notify(self, *, title: str, message: str, level: str = "info",
                     action_url: str | None = None, auto_close: bool | float | None = None,
                     user_id: str | None = None,
                     topic: str | None = None) -> tuple[dict[str, Any], int]:
        """A NOTIFICATION to one user's connections, to ``topic``, or else to
        ``notifications``. Returns (the notification, connections reached)."""
        data = self.notification(title=title, message=message, level=level,
                                 action_url=action_url, auto_close=auto_close)
        if user_id is not None:
            return data, await self.broker.send_to_user(user_id, NOTIFICATION, dumps(data))
        _, delivered = await self.broker.publish(topic or TOPIC_NOTIFICATIONS, NOTIFICATION,
                                                 dumps(data))
        return data, delivered

    async def publish(self, topic: str, type_: str, data: Any) -> tuple[int, int]:
        """An app event; returns (seq, connections reached)."""
        return await self.broker.publish(topic, type_, dumps(data))

    async def broadcast(self, type_: str, data: Any) -> tuple[int, int]:
        """A message on ``system``, which every connection holds from the start."""
        return await self.broker.publish(TOPIC_SYSTEM, type_, dumps(data))
