"""systemd integration without a dependency: sd_notify datagrams and the watchdog.

The protocol is one ``AF_UNIX`` datagram of newline-separated ``KEY=value`` lines sent to
``$NOTIFY_SOCKET``, a filesystem path or, when it starts with ``@``, an abstract socket (the
``@`` stands for the leading NUL byte). The watchdog wants ``WATCHDOG=1`` at least every
``$WATCHDOG_USEC`` microseconds (we send at half that), if ``$WATCHDOG_PID`` is unset or ours.

What rpad sends and when (SPEC §7):

* ``READY=1`` once the store is loaded and both listeners are bound, with a ``STATUS=`` line;
* ``STATUS=…`` whenever the one-line summary (clients online, connections) changes;
* ``WATCHDOG=1`` from the event loop, so that a wedged loop stops the pings and systemd
  restarts the service;
* ``RELOADING=1`` with ``MONOTONIC_USEC=`` (CLOCK_MONOTONIC, as systemd requires) on SIGHUP,
  then ``READY=1`` when the reload is done or refused;
* ``STOPPING=1`` when the graceful shutdown begins.

Outside systemd (no ``$NOTIFY_SOCKET``) every call does nothing.

Resource handling: one non-blocking datagram socket, opened on first use and closed by
:meth:`Notifier.close` (idempotent). Error handling: a failed send is logged (once, until a
send succeeds again) and otherwise ignored: systemd going away must not take the daemon with
it.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

import trio

log = logging.getLogger(__name__)

USEC_PER_SECOND = 1_000_000


def watchdog_interval_seconds(environ: Mapping[str, str] | None = None) -> float | None:
    """Half of ``$WATCHDOG_USEC`` in seconds (if the watchdog is meant for this process),
    else None."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None
    return int(usec) / USEC_PER_SECOND / 2


def socket_address(address: str) -> str | bytes:
    """``$NOTIFY_SOCKET`` → what ``sendto`` wants: ``@name`` is the abstract socket
    ``\\0name``."""
    if address.startswith("@"):
        return b"\0" + address[1:].encode()
    return address


class Notifier:
    """Sends sd_notify messages.

    ``address`` and ``watchdog_seconds`` default to what the environment says
    (``$NOTIFY_SOCKET``; half of ``$WATCHDOG_USEC``); tests pass their own.
    """

    def __init__(self, address: str | None = None, *,
                 watchdog_seconds: float | None = None,
                 environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = address if address is not None else env.get("NOTIFY_SOCKET", "")
        self.watchdog_seconds = (watchdog_seconds if watchdog_seconds is not None
                                 else watchdog_interval_seconds(env))
        self._sock: socket.socket | None = None
        self._failing = False
        self._last_status: str | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def notify(self, *lines: str) -> bool:
        """Send ``KEY=value`` lines in one datagram. Returns whether it was sent; never
        raises."""
        if not self.address:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto("\n".join(lines).encode(), socket_address(self.address))
        except OSError as exc:
            if not self._failing:
                log.warning("sd_notify to %s failed: %s", self.address, exc)
            self._failing = True
            return False
        if self._failing:
            log.info("sd_notify to %s works again", self.address)
            self._failing = False
        return True

    def ready(self, status: str = "") -> None:
        self._last_status = status or self._last_status
        self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> None:
        """Send ``STATUS=text`` if it differs from the last one sent."""
        if text == self._last_status:
            return
        self._last_status = text
        self.notify(f"STATUS={text}")

    def reloading(self) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


async def run_watchdog(notifier: Notifier, interval_seconds: float) -> None:
    """Send WATCHDOG=1 from the event loop now and then every ``interval_seconds``, on fixed
    deadlines (no drift), until cancelled. If the loop wedges, the pings stop and systemd
    restarts the service."""
    deadline = trio.current_time()
    while True:
        notifier.watchdog()
        deadline += interval_seconds
        await trio.sleep_until(deadline)
