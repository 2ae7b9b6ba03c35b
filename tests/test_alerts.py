"""Alerts (SPEC §6) against a real HTTP receiver and a real SMTP listener on loopback.

The retry schedules run on Trio's fake clock with exact times: the receivers here are Trio
servers in the same run, so nothing waits on a thread and the clock only jumps when every task
is really blocked. The end-to-end tests run the real daemon on the real clock.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import h11
import trio

from rpad.config import AlertsConfig, Config, EmailConfig, WebhookConfig
from rpad.core.registry import CLIENT_CONNECTED, CLIENT_DISCONNECTED, CLIENT_STATUS_UPDATE, Event
from rpad.service.alerts import SIGNATURE_HEADER, Alerts, make_alert, sign

from .conftest import Running, start_daemon

E2E_TIMEOUT_SECONDS = 20


# -- a real HTTP receiver ----------------------------------------------------------------------


@attrs.define
class Received:
    at: float
    method: str
    target: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class HttpReceiver:
    """A loopback HTTP server that records every request.

    ``statuses`` are answered in order (then 200); ``stall`` accepts requests and never
    answers. ``answer_headers`` are added to every answer.
    """

    def __init__(self, statuses: list[int] | None = None, *, stall: bool = False,
                 answer_body: bytes = b"{}",
                 answer_headers: list[tuple[str, str]] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.answer_headers = answer_headers or []
        self.stall = stall
        self.answer_body = answer_body
        self.requests: list[Received] = []
        self.port = 0
        self._changed = trio.Event()

    async def serve(self, port: int = 0, *,
                    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, listeners)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def wait_for(self, n: int) -> list[Received]:
        while len(self.requests) < n:
            await self._changed.wait()
        return self.requests

    async def _handle(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        method = target = ""
        headers: dict[str, str] = {}
        body = b""
        try:
            while True:
                ev = conn.next_event()
                if ev is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    conn.receive_data(data)
                    if not data and conn.their_state is not h11.DONE:
                        return
                    continue
                if isinstance(ev, h11.Request):
                    method, target = ev.method.decode(), ev.target.decode()
                    headers = {k.decode().lower(): v.decode() for k, v in ev.headers}
                elif isinstance(ev, h11.Data):
                    body += bytes(ev.data)
                elif isinstance(ev, h11.EndOfMessage):
                    break
            self.requests.append(Received(trio.current_time(), method, target, headers, body))
            self._changed.set()
            self._changed = trio.Event()
            if self.stall:
                await trio.sleep_forever()
            status = self.statuses.pop(0) if self.statuses else 200
            out = conn.send(h11.Response(status_code=status, headers=[
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(self.answer_body))), *self.answer_headers]))
            out += conn.send(h11.Data(data=self.answer_body)) + conn.send(h11.EndOfMessage())
            await stream.send_all(out)
        except (trio.BrokenResourceError, h11.ProtocolError):
            pass
        finally:
            await stream.aclose()


@asynccontextmanager
async def daemon_running(cfg: Config, **kwargs: Any) -> AsyncIterator[Running]:
    """The real daemon for the body of the ``async with``; stopped (and its HTTP client
    closed) however the body ends."""
    async with trio.open_nursery() as nursery:
        rpad = await start_daemon(nursery, cfg, **kwargs)
        try:
            yield rpad
        finally:
            await rpad.http.aclose()
            rpad.daemon.stop()


def free_port() -> int:
    """A loopback port that nothing listens on (bound once, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# -- a real SMTP listener ----------------------------------------------------------------------


@attrs.define
class Mail:
    sender: str
    recipients: list[str]
    data: bytes


class SmtpListener:
    """Just enough SMTP (RFC 5321) for smtplib: EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT."""

    def __init__(self) -> None:
        self.mails: list[Mail] = []
        self.port = 0
        self._changed = trio.Event()

    async def serve(self, port: int = 0, *,
                    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, listeners)

    async def wait_for(self, n: int) -> list[Mail]:
        while len(self.mails) < n:
            await self._changed.wait()
        return self.mails

    async def _handle(self, stream: trio.SocketStream) -> None:
        buf = bytearray()

        async def line() -> bytes:
            while b"\r\n" not in buf:
                data = await stream.receive_some(65536)
                if not data:
                    raise EOFError
                buf.extend(data)
            i = buf.index(b"\r\n")
            out = bytes(buf[:i])
            del buf[: i + 2]
            return out

        sender, rcpts = "", list[str]()
        try:
            await stream.send_all(b"220 test ESMTP\r\n")
            while True:
                cmd = (await line()).decode()
                verb = cmd[:4].upper()
                if verb == "EHLO":
                    await stream.send_all(b"250-test\r\n250 8BITMIME\r\n")
                elif verb == "HELO":
                    await stream.send_all(b"250 test\r\n")
                elif verb == "MAIL":
                    sender, rcpts = cmd.split(":", 1)[1].strip().strip("<>"), []
                    await stream.send_all(b"250 OK\r\n")
                elif verb == "RCPT":
                    rcpts.append(cmd.split(":", 1)[1].strip().strip("<>"))
                    await stream.send_all(b"250 OK\r\n")
                elif verb == "DATA":
                    await stream.send_all(b"354 go ahead\r\n")
                    lines = []
                    while (ln := await line()) != b".":
                        lines.append(ln[1:] if ln.startswith(b"..") else ln)
                    self.mails.append(Mail(sender, rcpts, b"\r\n".join(lines)))
                    self._changed.set()
                    self._changed = trio.Event()
                    await stream.send_all(b"250 queued\r\n")
                elif verb == "QUIT":
                    await stream.send_all(b"221 bye\r\n")
                    return
                else:
                    await stream.send_all(b"250 OK\r\n")
        except (EOFError, trio.BrokenResourceError):
            pass
        finally:
            await stream.aclose()


# -- helpers -----------------------------------------------------------------------------------


def transition(type_: str = CLIENT_DISCONNECTED, client_id: str = "robot-1",
               reason: str | None = "timeout", at: float = 1767225600.0) -> Event:
    data = {"clientId": client_id, "name": "Robot one", "status": "offline",
            "ipAddress": "10.0.0.7", "version": "2.1.0", "lastHeartbeatAt": None}
    return Event(type_, client_id, at, data, reason)


def alerts_with(*webhooks: WebhookConfig, email: EmailConfig | None = None) -> Alerts:
    return Alerts(AlertsConfig(webhooks=list(webhooks), email=email or EmailConfig()))


# -- the alert itself --------------------------------------------------------------------------


def test_alert_payload_and_signature() -> None:
    alert = make_alert(transition())
    assert alert is not None
    body = json.loads(alert.body)
    assert body["event"] == "client.offline"
    assert body["clientId"] == "robot-1"
    assert body["reason"] == "timeout"
    assert body["at"] == "2026-01-01T00:00:00.000Z"
    assert body["deliveryId"] == alert.delivery_id
    assert body["client"]["ipAddress"] == "10.0.0.7"
    expected = hmac.new(b"s3cret", alert.body, hashlib.sha256).hexdigest()
    assert sign(b"s3cret", alert.body) == f"sha256={expected}"
    online = make_alert(transition(CLIENT_CONNECTED, reason="heartbeat"))
    assert online is not None and online.event == "client.online"
    assert make_alert(transition(CLIENT_STATUS_UPDATE)) is None


# -- webhook retries on the fake clock ---------------------------------------------------------


async def test_failing_receiver_is_retried_with_exponential_backoff(autojump_clock: Any) -> None:
    receiver = HttpReceiver(statuses=[503, 500, 502])
    async with trio.open_nursery() as nursery:
        await nursery.start(receiver.serve)
        alerts = alerts_with(WebhookConfig(url=receiver.url, max_attempts=5))
        await nursery.start(alerts.run)
        start = trio.current_time()
        alerts.client_transition(transition())
        reqs = await receiver.wait_for(4)
        times = [r.at - start for r in reqs]
        # First attempt at once, then 1 s, 2 s and 4 s later.
        assert times == [0.0, 1.0, 3.0, 7.0]
        assert {r.json()["deliveryId"] for r in reqs} == {reqs[0].json()["deliveryId"]}
        hook = alerts.webhooks[0]
        with trio.fail_after(1):
            while hook.delivered != 1:
                await trio.sleep(0.001)
        assert (hook.attempts, hook.failed, hook.dropped) == (4, 0, 0)
        nursery.cancel_scope.cancel()


async def test_receiver_down_then_up_gets_the_alert(autojump_clock: Any) -> None:
    port = free_port()
    receiver = HttpReceiver()
    async with trio.open_nursery() as nursery:
        alerts = alerts_with(WebhookConfig(url=f"http://127.0.0.1:{port}/hook", max_attempts=4))
        await nursery.start(alerts.run)
        start = trio.current_time()
        alerts.client_transition(transition())
        hook = alerts.webhooks[0]
        # Attempts at 0 s and 1 s are refused; the receiver comes up at 2 s; the third attempt
        # (at 1 + 2 = 3 s) is delivered.
        await trio.sleep_until(start + 2.0)
        assert hook.attempts == 2 and hook.delivered == 0
        await nursery.start(receiver.serve, port)
        reqs = await receiver.wait_for(1)
        assert reqs[0].at - start == 3.0
        with trio.fail_after(1):
            while hook.delivered != 1:
                await trio.sleep(0.001)
        assert (hook.attempts, hook.failed) == (3, 0)
        nursery.cancel_scope.cancel()


async def test_slow_receiver_times_out_retries_and_gives_up(autojump_clock: Any) -> None:
    receiver = HttpReceiver(stall=True)
    async with trio.open_nursery() as nursery:
        await nursery.start(receiver.serve)
        alerts = alerts_with(WebhookConfig(url=receiver.url, timeout_seconds=5, max_attempts=3))
        await nursery.start(alerts.run)
        start = trio.current_time()
        alerts.client_transition(transition())
        reqs = await receiver.wait_for(3)
        # Each attempt waits 5 s for an answer, then 1 s, then 2 s of backoff.
        assert [r.at - start for r in reqs] == [0.0, 6.0, 13.0]
        hook = alerts.webhooks[0]
        # The last attempt times out at 13 + 5 = 18 s: then it gives up.
        await trio.sleep_until(start + 17.999)
        assert (hook.attempts, hook.delivered, hook.failed) == (3, 0, 0)
        await trio.sleep_until(start + 18.001)
        assert (hook.attempts, hook.delivered, hook.failed) == (3, 0, 1)
        nursery.cancel_scope.cancel()


async def test_refusal_4xx_is_not_retried(autojump_clock: Any) -> None:
    receiver = HttpReceiver(statuses=[400])
    async with trio.open_nursery() as nursery:
        await nursery.start(receiver.serve)
        alerts = alerts_with(WebhookConfig(url=receiver.url, max_attempts=5))
        await nursery.start(alerts.run)
        alerts.client_transition(transition())
        await receiver.wait_for(1)
        await trio.sleep(120)
        hook = alerts.webhooks[0]
        assert (len(receiver.requests), hook.attempts, hook.failed) == (1, 1, 1)
        nursery.cancel_scope.cancel()


async def test_only_subscribed_events_are_sent(autojump_clock: Any) -> None:
    receiver = HttpReceiver()
    async with trio.open_nursery() as nursery:
        await nursery.start(receiver.serve)
        alerts = alerts_with(WebhookConfig(url=receiver.url, events=["client.online"]))
        await nursery.start(alerts.run)
        alerts.client_transition(transition(CLIENT_DISCONNECTED))
        alerts.client_transition(transition(CLIENT_STATUS_UPDATE))
        alerts.client_transition(transition(CLIENT_CONNECTED, reason="heartbeat"))
        reqs = await receiver.wait_for(1)
        await trio.sleep(60)
        assert [r.json()["event"] for r in reqs] == ["client.online"]
        assert reqs[0].headers["x-rpad-event"] == "client.online"
        assert SIGNATURE_HEADER.lower() not in reqs[0].headers  # no secret_file: unsigned
        nursery.cancel_scope.cancel()


async def test_full_queue_drops_and_counts(autojump_clock: Any) -> None:
    receiver = HttpReceiver(stall=True)
    async with trio.open_nursery() as nursery:
        await nursery.start(receiver.serve)
        alerts = alerts_with(WebhookConfig(url=receiver.url, queue_size=3, timeout_seconds=30,
                                           max_attempts=1))
        await nursery.start(alerts.run)
        alerts.client_transition(transition(client_id="c0"))
        await receiver.wait_for(1)  # the worker is now stuck on c0
        for i in range(1, 11):
            alerts.client_transition(transition(client_id=f"c{i}"))  # never blocks
        hook = alerts.webhooks[0]
        assert (hook.queued, hook.dropped) == (3, 7)
        assert alerts.dropped == 7
        nursery.cancel_scope.cancel()


async def test_reconfigure_keeps_unchanged_targets_and_starts_new_ones(
        autojump_clock: Any, tmp_path: Path) -> None:
    a, b = HttpReceiver(), HttpReceiver()
    async with trio.open_nursery() as nursery:
        await nursery.start(a.serve)
        await nursery.start(b.serve)
        hook_a = WebhookConfig(url=a.url)
        alerts = alerts_with(hook_a)
        await nursery.start(alerts.run)
        kept = alerts.webhooks[0]
        alerts.reconfigure(AlertsConfig(webhooks=[hook_a, WebhookConfig(url=b.url)]))
        assert alerts.webhooks[0] is kept and len(alerts.webhooks) == 2
        alerts.client_transition(transition())
        await a.wait_for(1)
        await b.wait_for(1)
        # Removing a target cancels its worker; an unreadable secret keeps the old targets.
        alerts.reconfigure(AlertsConfig(webhooks=[WebhookConfig(url=b.url)]))
        assert [w.config.url for w in alerts.webhooks] == [b.url]
        alerts.reconfigure(AlertsConfig(webhooks=[WebhookConfig(
            url=a.url, secret_file=str(tmp_path / "missing"))]))
        assert [w.config.url for w in alerts.webhooks] == [b.url]
        alerts.client_transition(transition())
        await b.wait_for(2)
        await trio.sleep(10)
        assert len(a.requests) == 1
        nursery.cancel_scope.cancel()


# -- end to end: the real daemon ---------------------------------------------------------------


async def test_daemon_signs_webhooks_for_offline_and_online(
        make_config: Callable[..., Config], tmp_path: Path) -> None:
    secret_file = tmp_path / "hook.secret"
    secret_file.write_text("correct horse battery staple\n")
    receiver = HttpReceiver()
    with trio.fail_after(E2E_TIMEOUT_SECONDS):
        async with trio.open_nursery() as nursery:
            await nursery.start(receiver.serve)
            cfg = make_config(presence={"min_interval_seconds": 0},
                              alerts={"webhooks": [{"url": receiver.url,
                                                    "secret_file": str(secret_file)}]})
            async with daemon_running(cfg) as rpad:
                assert (await rpad.heartbeat("robot-9", version="1.0")).status_code == 200
                assert (await rpad.heartbeat("robot-9", status="offline")).status_code == 200
                assert (await rpad.heartbeat("robot-9")).status_code == 200
                reqs = await receiver.wait_for(3)
                assert [r.json()["event"] for r in reqs] == [
                    "client.online", "client.offline", "client.online"]
                for r in reqs:
                    assert r.method == "POST" and r.target == "/hook"
                    assert r.headers["content-type"] == "application/json"
                    expected = hmac.new(b"correct horse battery staple", r.body,
                                        hashlib.sha256).hexdigest()
                    assert hmac.compare_digest(r.headers["x-rpad-signature"], f"sha256={expected}")
                    assert r.headers["x-rpad-delivery"] == r.json()["deliveryId"]
                offline = reqs[1].json()
                assert offline["clientId"] == "robot-9"
                assert offline["reason"] == "agent_shutdown"
                assert offline["client"]["status"] == "offline"
                assert offline["client"]["version"] == "1.0"
                assert rpad.daemon.alerts is not None
                with trio.fail_after(5):
                    while rpad.daemon.alerts.delivered != 3:
                        await trio.sleep(0.01)
            nursery.cancel_scope.cancel()


async def test_stalled_receiver_never_delays_heartbeats(
        make_config: Callable[..., Config]) -> None:
    receiver = HttpReceiver(stall=True)
    with trio.fail_after(E2E_TIMEOUT_SECONDS):
        async with trio.open_nursery() as nursery:
            await nursery.start(receiver.serve)
            # A receiver that never answers, with a 60 s timeout: if delivery were on the
            # heartbeat path, the heartbeats below could not finish inside fail_after.
            cfg = make_config(presence={"min_interval_seconds": 0},
                              alerts={"webhooks": [{"url": receiver.url, "queue_size": 2,
                                                    "timeout_seconds": 60,
                                                    "max_attempts": 1}]})
            async with daemon_running(cfg) as rpad:
                assert (await rpad.heartbeat("first")).status_code == 200
                await receiver.wait_for(1)
                with trio.fail_after(10):
                    for i in range(5):
                        for status in ("online", "offline"):
                            resp = await rpad.heartbeat(f"c{i}", status=status)
                            assert resp.status_code == 200
                alerts = rpad.daemon.alerts
                assert alerts is not None
                hook = alerts.webhooks[0]
                # 10 transitions while the worker is stuck on the first: 2 queued, 8 dropped.
                assert (hook.queued, hook.dropped, hook.delivered) == (2, 8, 0)
            nursery.cancel_scope.cancel()


async def test_daemon_sends_email_over_smtp(make_config: Callable[..., Config]) -> None:
    smtp = SmtpListener()
    with trio.fail_after(E2E_TIMEOUT_SECONDS):
        async with trio.open_nursery() as nursery:
            await nursery.start(smtp.serve)
            cfg = make_config(
                presence={"min_interval_seconds": 0},
                alerts={"email": {"enabled": True, "host": "127.0.0.1", "port": smtp.port,
                                  "sender": "rpad@example.test",
                                  "recipients": ["ops@example.test", "oncall@example.test"],
                                  "events": ["client.offline"]}})
            async with daemon_running(cfg) as rpad:
                await rpad.heartbeat("robot-7", name="Packing robot", version="3.2")
                await rpad.heartbeat("robot-7", status="offline")
                mails = await smtp.wait_for(1)
                mail = mails[0]
                assert mail.sender == "rpad@example.test"
                assert mail.recipients == ["ops@example.test", "oncall@example.test"]
                text = mail.data.decode()
                assert "Subject: [rpad] Packing robot is offline (agent_shutdown)" in text
                assert "Client robot-7 is offline." in text
                assert "Version:         3.2" in text
                assert "X-Rpad-Event: client.offline" in text
                alerts = rpad.daemon.alerts
                assert alerts is not None and alerts.email is not None
                with trio.fail_after(5):
                    while alerts.email.delivered != 1:
                        await trio.sleep(0.01)
            nursery.cancel_scope.cancel()


async def test_email_retried_when_smtp_server_is_down() -> None:
    port = free_port()
    smtp = SmtpListener()
    with trio.fail_after(E2E_TIMEOUT_SECONDS):
        async with trio.open_nursery() as nursery:
            alerts = alerts_with(email=EmailConfig(enabled=True, host="127.0.0.1", port=port,
                                                   recipients=["ops@example.test"],
                                                   timeout_seconds=5))
            await nursery.start(alerts.run)
            alerts.client_transition(transition())
            email = alerts.email
            assert email is not None
            while email.attempts < 1:
                await trio.sleep(0.01)
            assert email.delivered == 0
            await nursery.start(smtp.serve, port)
            mails = await smtp.wait_for(1)
            assert "Subject: [rpad] Robot one is offline (timeout)" in mails[0].data.decode()
            while email.delivered != 1:
                await trio.sleep(0.01)
            assert email.attempts == 2 and email.failed == 0
            nursery.cancel_scope.cancel()


def test_logs_name_a_webhook_without_its_path_or_query() -> None:
    from rpad.config import WebhookConfig
    from rpad.service.alerts import Webhook

    hook = Webhook(WebhookConfig(url="https://hooks.example.com:8443/services/T0/SECRET?token=abc"))
    assert hook.label == "https://hooks.example.com:8443/…"
    assert "SECRET" not in hook.label and "abc" not in hook.label
