"""Periodic tasks of the daemon: the sweeper (and, with the hub, the pusher).

Each runs until cancelled, on ``trio.sleep_until`` deadlines that advance by exactly one
interval, so the cadence does not drift and tests on a fake clock see exact times.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from .presence import Presence

log = logging.getLogger(__name__)


async def run_sweeper(
    presence: Presence,
    interval_seconds: Callable[[], float],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Every ``interval_seconds()`` (re-read each round, so a reload applies), mark clients
    whose last heartbeat is older than their timeout offline."""
    task_status.started()
    deadline = trio.current_time()
    while True:
        deadline += interval_seconds()
        await trio.sleep_until(deadline)
        events = await presence.sweep()
        if events:
            log.debug("sweep marked %d clients offline", len(events))
