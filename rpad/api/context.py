"""What the HTTP routes are given: the parts they call, built by the daemon."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from ..auth import Authenticator
from ..backend.base import AuditLog
from ..config import Config
from ..service.alerts import Alerts
from ..service.client_history import ClientHistory
from ..service.feeds import Feeds
from ..service.gate import Gate
from ..service.presence import Presence
from ..service.tasks import Tasks


@attrs.define
class ApiContext:
    # The configuration in force (replaced by a reload).
    config: Config
    presence: Presence
    gate: Gate
    auth: Authenticator
    feeds: Feeds
    alerts: Alerts
    epoch: str
    # time.monotonic() at start.
    started_at: float
    # More fields for GET /api/v1/health (the hub's, for one).
    extra_health: Callable[[], dict[str, Any]] = dict
    # Metrics history and availability (None: not served).
    history: ClientHistory | None = None
    # The console's: batch tasks (TASK_UPDATEs published to task.<id> are reported to it), the
    # audit log, the agents' control channels. None: no console routes.
    tasks: Tasks | None = None
    audit: AuditLog | None = None
    agents: Callable[[], list[dict[str, Any]]] | None = None
