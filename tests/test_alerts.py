"""Alert delivery (SPEC §6, issue 14) against real receivers on loopback: an HTTP server for
webhooks and for Apprise's JSON target, an SMTP listener for email; the outbox in real
SQLite, across a restart.

The retry schedules run on Trio's fake clock with exact times: the receivers here are Trio
servers in the same run, and the outbox never waits on its commits, so the clock only jumps
when every task is really blocked. The end-to-end tests run the real daemon on the real clock.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from email import message_from_bytes
from email import policy as email_policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import attrs
import h11
import trio

from rpad.backend.local.alert_store import LocalAlertStore
from rpad.backend.local.store import Store
from rpad.config import AlertsConfig, AppriseConfig, Config, EmailConfig, WebhookConfig
from rpad.config_alerts import PolicyConfig
from rpad.core.alert_policy import Alert, AlertItem
from rpad.core.alert_text import payload
from rpad.core.registry import CLIENT_CONNECTED, CLIENT_DISCONNECTED, CLIENT_STATUS_UPDATE, Event
from rpad.service.alerts import Alerts
from rpad.service.channels import SIGNATURE_HEADER, Webhook, sign

from .conftest import Running, fake_wall_clock, start_daemon

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

# Delivery mechanics without the policy's grouping and flapping (tests/test_alert_policy.py
# has those): one alert per transition.
PLAIN = PolicyConfig(group_threshold=0, flap_transitions=0)


def transition(type_: str = CLIENT_DISCONNECTED, client_id: str = "robot-1",
               reason: str | None = "timeout") -> Event:
    """A transition happening now (on the fake wall clock)."""
    data = {"clientId": client_id, "name": "Robot one", "status": "offline", "tags": [],
            "ipAddress": "10.0.0.7", "version": "2.1.0", "lastHeartbeatAt": None}
    previous = "online" if type_ == CLIENT_DISCONNECTED else "offline"
    return Event(type_, client_id, fake_wall_clock()(), data, reason, previous)


def alerts_config(*webhooks: WebhookConfig, email: EmailConfig | None = None,
                  apprise: list[AppriseConfig] | None = None,
                  policy: PolicyConfig = PLAIN) -> AlertsConfig:
    return AlertsConfig(policy=policy, webhooks=list(webhooks), email=email or EmailConfig(),
                        apprise=apprise or [])


async def start_alerts(nursery: trio.Nursery, state: Path, cfg: AlertsConfig) -> Alerts:
    """The alert service on a real store (in ``state``), running in ``nursery``."""
    store = Store(state / "rpad.db", commit_interval_ms=0)
    await trio.to_thread.run_sync(store.open)
    nursery.start_soon(store.run_committer)
    alerts = Alerts(cfg, LocalAlertStore(store), None, wall_clock=fake_wall_clock())
    await alerts.load([], dict)
    await nursery.start(alerts.run)
    return alerts


def queue(alerts: Alerts, i: int = 0) -> Any:
    return list(alerts.outbox.queues.values())[i]


async def until(condition: Callable[[], bool]) -> None:
    with trio.fail_after(600):
        while not condition():
            await trio.sleep(0.001)


# -- the payload -------------------------------------------------------------------------------


def test_alert_payload_and_signature() -> None:
    ev = Event(CLIENT_DISCONNECTED, "robot-1", 1767225600.0, {"clientId": "robot-1"}, "timeout")
    item = AlertItem("robot-1", ev.data, 1767225600.0, "timeout")
    body = payload(Alert("offline", "warning", 1767225600.0, (item,)), "a1", "d1")
    assert body == {"event": "client.offline", "kind": "offline", "level": "warning",
                    "at": "2026-01-01T00:00:00.000Z", "alertId": "a1", "deliveryId": "d1",
                    "clientId": "robot-1", "reason": "timeout",
                    "since": "2026-01-01T00:00:00.000Z", "client": ev.data}
    raw = json.dumps(body).encode()
    expected = hmac.new(b"s3cret", raw, hashlib.sha256).hexdigest()
    assert sign(b"s3cret", raw) == f"sha256={expected}"
    group = payload(Alert("offline", "error", 1767225600.0, (item, item), grouped=True), "a", "d")
    assert (group["event"], group["count"], group["clients"][0]["clientId"]) == (
        "clients.offline", 2, "robot-1")


# -- webhook retries on the fake clock ---------------------------------------------------------


async def test_failing_receiver_is_retried_with_exponential_backoff(
        autojump_clock: Any, tmp_path: Path) -> None:
    receiver = HttpReceiver(statuses=[503, 500, 502])
    async with trio.open_nursery() as nursery:
        await nursery.start(receiver.serve)
        alerts = await start_alerts(nursery, tmp_path, alerts_config(
            WebhookConfig(url=receiver.url, max_attempts=5)))
        start = trio.current_time()
        alerts.client_transition(transition())
        reqs = await receiver.wait_for(4)
        times = [r.at - start for r in reqs]
        # First attempt at once, then 1 s, 2 s and 4 s later.
        assert times == [0.0, 1.0, 3.0, 7.0]
        assert {r.json()["deliveryId"] for r in reqs} == {reqs[0].json()["deliveryId"]}
        hook = queue(alerts)
        await until(lambda: hook.delivered == 1)
        assert (hook.attempts, hook.failed, hook.dropped) == (4, 0, 0)
        log = (await alerts.deliveries(None, 10))["log"]
        assert [(r["outcome"], r["attempts"], r["clients"]) for r in log] == [
            ("delivered", 4, "robot-1")]
        nursery.cancel_scope.cancel()


async def test_receiver_down_then_up_gets_the_alert(autojump_clock: Any, tmp_path: Path) -> None:
    port = free_port()
    receiver = HttpReceiver()
    async with trio.open_nursery() as nursery:
        alerts = await start_alerts(nursery, tmp_path, alerts_config(
            WebhookConfig(url=f"http://127.0.0.1:{port}/hook", max_attempts=4)))
        start = trio.current_time()
        alerts.client_transition(transition())
        hook = queue(alerts)
        # Attempts at 0 s and 1 s are refused; the receiver comes up at 2 s; the third attempt
        # (at 1 + 2 = 3 s) is delivered.
        await trio.sleep_until(start + 2.0)
        assert hook.attempts == 2 and hook.delivered == 0
        pending = hook.pending_json()  # (no commit to wait for: the clock stands still)
        assert [(p["attempts"], p["outcome"]) for p in pending] == [(2, "pending")]
        assert f"cannot reach 127.0.0.1:{port}" in pending[0]["lastError"]
        await nursery.start(receiver.serve, port)
        reqs = await receiver.wait_for(1)
        assert reqs[0].at - start == 3.0
        await until(lambda: hook.delivered == 1)
        assert (hook.attempts, hook.failed) == (3, 0)
        nursery.cancel_scope.cancel()


async def test_slow_receiver_times_out_retries_and_gives_up(
        autojump_clock: Any, tmp_path: Path) -> None:
    receiver = HttpReceiver(stall=True)
    async with trio.open_nursery() as nursery:
        await nursery.start(receiver.serve)
        alerts = await start_alerts(nursery, tmp_path, alerts_config(
            WebhookConfig(url=receiver.url, timeout_seconds=5, max_attempts=3)))
        start = trio.current_time()
        alerts.client_transition(transition())
        reqs = await receiver.wait_for(3)
        # Each attempt waits 5 s for an answer, then 1 s, then 2 s of backoff.
        assert [r.at - start for r in reqs] == [0.0, 6.0, 13.0]
        hook = queue(alerts)
        # The last attempt times out at 13 + 5 = 18 s: then it gives up.
        await trio.sleep_until(start + 17.999)
        assert (hook.attempts, hook.delivered, hook.failed) == (3, 0, 0)
        await trio.sleep_until(start + 18.001)
        assert (hook.attempts, hook.delivered, hook.failed) == (3, 0, 1)
        nursery.cancel_scope.cancel()


async def test_an_alert_older_than_max_age_is_given_up(autojump_clock: Any, tmp_path: Path) -> None:
    port = free_port()  # nobody listens: every attempt fails
    async with trio.open_nursery() as nursery:
        cfg = attrs.evolve(alerts_config(WebhookConfig(url=f"http://127.0.0.1:{port}/h",
                                                       max_attempts=100)),
                           max_age_seconds=60.0)
        alerts = await start_alerts(nursery, tmp_path, cfg)
        alerts.client_transition(transition())
        hook = queue(alerts)
        await trio.sleep(600)
        # Attempts at 0, 1, 3, 7, 15, 31 s; the next would be at 63 s, past the age of 60.
        assert (hook.attempts, hook.expired, hook.queued) == (6, 1, 0)
        log = (await alerts.deliveries(None, 10))["log"]
        assert [(r["outcome"], r["attempts"]) for r in log] == [("expired", 6)]
        nursery.cancel_scope.cancel()


async def test_refusal_4xx_is_not_retried(autojump_clock: Any, tmp_path: Path) -> None:
    receiver = HttpReceiver(statuses=[400])
    async with trio.open_nursery() as nursery:
        await nursery.start(receiver.serve)
        alerts = await start_alerts(nursery, tmp_path, alerts_config(
            WebhookConfig(url=receiver.url, max_attempts=5)))
        alerts.client_transition(transition())
        await receiver.wait_for(1)
        await trio.sleep(120)
        hook = queue(alerts)
        assert (len(receiver.requests), hook.attempts, hook.failed) == (1, 1, 1)
        nursery.cancel_scope.cancel()


async def test_event_filters_and_minimum_level(autojump_clock: Any, tmp_path: Path) -> None:
    online_only, warnings = HttpReceiver(), HttpReceiver()
    async with trio.open_nursery() as nursery:
        await nursery.start(online_only.serve)
        await nursery.start(warnings.serve)
        alerts = await start_alerts(nursery, tmp_path, alerts_config(
            WebhookConfig(url=online_only.url, name="online-only", events=["client.online"]),
            WebhookConfig(url=warnings.url, name="warnings", min_level="warning")))
        alerts.client_transition(transition(CLIENT_DISCONNECTED))
        alerts.client_transition(transition(CLIENT_STATUS_UPDATE))
        await trio.sleep(1)  # the offline alert goes out, then it is back
        alerts.client_transition(transition(CLIENT_CONNECTED, reason="heartbeat"))
        reqs = await online_only.wait_for(1)
        await trio.sleep(60)
        assert [r.json()["event"] for r in reqs] == ["client.online"]
        assert reqs[0].headers["x-rpad-event"] == "client.online"
        assert SIGNATURE_HEADER.lower() not in reqs[0].headers  # no secret_file: unsigned
        # The recovery is a "success", below "warning": only the offline alert.
        assert [r.json()["event"] for r in warnings.requests] == ["client.offline"]
        nursery.cancel_scope.cancel()


async def test_full_queue_drops_and_counts(autojump_clock: Any, tmp_path: Path) -> None:
    receiver = HttpReceiver(stall=True)
    async with trio.open_nursery() as nursery:
        await nursery.start(receiver.serve)
        alerts = await start_alerts(nursery, tmp_path, alerts_config(WebhookConfig(
            url=receiver.url, queue_size=3, timeout_seconds=30, max_attempts=1)))
        alerts.client_transition(transition(client_id="c0"))
        await receiver.wait_for(1)  # the worker is now stuck on c0 (still queued)
        for i in range(1, 11):
            alerts.client_transition(transition(client_id=f"c{i}"))  # never blocks
        await trio.sleep(0.001)
        hook = queue(alerts)
        assert (hook.queued, hook.dropped) == (3, 8)
        assert alerts.dropped == 8
        log = (await alerts.deliveries(None, 100))["log"]
        assert sorted(r["clients"] for r in log if r["outcome"] == "dropped") == sorted(
            f"c{i}" for i in range(3, 11))
        nursery.cancel_scope.cancel()


async def test_reconfigure_keeps_unchanged_targets_and_starts_new_ones(
        autojump_clock: Any, tmp_path: Path) -> None:
    a, b = HttpReceiver(), HttpReceiver()
    async with trio.open_nursery() as nursery:
        await nursery.start(a.serve)
        await nursery.start(b.serve)
        hook_a = WebhookConfig(url=a.url)
        alerts = await start_alerts(nursery, tmp_path, alerts_config(hook_a))
        kept = queue(alerts)
        alerts.reconfigure(alerts_config(hook_a, WebhookConfig(url=b.url)))
        assert queue(alerts) is kept and len(alerts.outbox.queues) == 2
        alerts.client_transition(transition())
        await a.wait_for(1)
        await b.wait_for(1)
        # Removing a target cancels its worker; an unreadable secret keeps the old targets.
        alerts.reconfigure(alerts_config(WebhookConfig(url=b.url)))
        assert [q.channel.config.url for q in alerts.outbox.queues.values()] == [b.url]
        alerts.reconfigure(alerts_config(WebhookConfig(
            url=a.url, secret_file=str(tmp_path / "missing"))))
        assert [q.channel.config.url for q in alerts.outbox.queues.values()] == [b.url]
        alerts.client_transition(transition(CLIENT_CONNECTED, reason="heartbeat"))
        await b.wait_for(2)
        await trio.sleep(10)
        assert len(a.requests) == 1
        nursery.cancel_scope.cancel()


# -- the outbox across a restart ---------------------------------------------------------------


async def test_queued_alerts_survive_a_restart_and_are_delivered_once_each(
        autojump_clock: Any, tmp_path: Path) -> None:
    port = free_port()
    cfg = alerts_config(WebhookConfig(url=f"http://127.0.0.1:{port}/hook", name="ops"))
    async with trio.open_nursery() as nursery:
        alerts = await start_alerts(nursery, tmp_path, cfg)
        for i in range(3):
            alerts.client_transition(transition(client_id=f"r{i}"))
        await trio.sleep(2.5)  # attempts at 0, 1 s: refused (nobody listens)
        pending = queue(alerts).pending_json()
        assert [p["attempts"] for p in pending] == [2, 0, 0]
        ids = [p["deliveryId"] for p in pending]
        await alerts.aclose()
        nursery.cancel_scope.cancel()
    await trio.to_thread.run_sync(alerts.store.store.close)  # type: ignore[attr-defined]
    store_path = tmp_path / "rpad.db"
    assert store_path.exists()
    receiver = HttpReceiver(statuses=[503])  # the first after the restart fails once more
    async with trio.open_nursery() as nursery:
        await nursery.start(receiver.serve, port)
        alerts = await start_alerts(nursery, tmp_path, cfg)
        reqs = await receiver.wait_for(4)
        hook = queue(alerts)
        await until(lambda: hook.delivered == 3)
        await trio.sleep(30)
        # r0's delivery went on from its third attempt; each id was accepted exactly once.
        assert [r.json()["deliveryId"] for r in receiver.requests] == [ids[0], ids[0], ids[1],
                                                                        ids[2]]
        assert [r.json()["clientId"] for r in reqs] == ["r0", "r0", "r1", "r2"]
        log = (await alerts.deliveries("ops", 10))["log"]
        assert sorted((r["deliveryId"], r["outcome"], r["attempts"]) for r in log) == sorted(
            [(ids[0], "delivered", 4), (ids[1], "delivered", 1), (ids[2], "delivered", 1)])
        nursery.cancel_scope.cancel()


# -- Apprise against a real HTTP receiver ------------------------------------------------------


async def test_apprise_json_target_from_a_url_file(tmp_path: Path) -> None:
    receiver = HttpReceiver()
    url_file = tmp_path / "chat.url"
    with trio.fail_after(E2E_TIMEOUT_SECONDS):
        async with trio.open_nursery() as nursery:
            await nursery.start(receiver.serve)
            url_file.write_text(f"json://127.0.0.1:{receiver.port}/notify/abc123secret\n")
            alerts = await start_alerts(nursery, tmp_path, alerts_config(apprise=[AppriseConfig(
                name="chat", url_file=str(url_file), min_level="warning",
                title_template="[$level] $name", body_template="$clientId: $why")]))
            assert queue(alerts).channel.label == "chat (json://…)"
            alerts.client_transition(transition())
            await trio.sleep(0.1)
            alerts.client_transition(transition(CLIENT_CONNECTED, reason="heartbeat"))
            reqs = await receiver.wait_for(1)
            body = reqs[0].json()
            assert reqs[0].target == "/notify/abc123secret"
            assert (body["title"], body["message"], body["type"]) == (
                "[warning] Robot one", "robot-1: no heartbeat within its timeout", "warning")
            hook = queue(alerts)
            await until(lambda: hook.delivered == 1)
            await trio.sleep(1)
            assert len(receiver.requests) == 1  # the recovery (success) is below warning
            nursery.cancel_scope.cancel()


async def test_apprise_failure_is_retried(tmp_path: Path) -> None:
    receiver = HttpReceiver(statuses=[500])
    with trio.fail_after(E2E_TIMEOUT_SECONDS):
        async with trio.open_nursery() as nursery:
            await nursery.start(receiver.serve)
            alerts = await start_alerts(nursery, tmp_path, alerts_config(apprise=[AppriseConfig(
                name="push", url=f"json://127.0.0.1:{receiver.port}/")]))
            alerts.client_transition(transition())
            reqs = await receiver.wait_for(2)
            assert reqs[0].json()["title"] == reqs[1].json()["title"] == "Robot one is offline"
            hook = queue(alerts)
            await until(lambda: hook.delivered == 1)
            assert hook.attempts == 2
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
                # A client heard from for the first time is no alert; going down and coming
                # back are.
                assert (await rpad.heartbeat("robot-9", version="1.0")).status_code == 200
                assert (await rpad.heartbeat("robot-9", status="offline")).status_code == 200
                assert (await rpad.heartbeat("robot-9")).status_code == 200
                reqs = await receiver.wait_for(2)
                assert [r.json()["event"] for r in reqs] == ["client.offline", "client.online"]
                for r in reqs:
                    assert r.method == "POST" and r.target == "/hook"
                    assert r.headers["content-type"] == "application/json"
                    expected = hmac.new(b"correct horse battery staple", r.body,
                                        hashlib.sha256).hexdigest()
                    assert hmac.compare_digest(r.headers["x-rpad-signature"], f"sha256={expected}")
                    assert r.headers["x-rpad-delivery"] == r.json()["deliveryId"]
                offline = reqs[0].json()
                assert offline["clientId"] == "robot-9"
                assert offline["reason"] == "agent_shutdown"
                assert offline["level"] == "warning"
                assert offline["client"]["status"] == "offline"
                assert offline["client"]["version"] == "1.0"
                assert reqs[1].json()["level"] == "success"
                assert rpad.daemon.alerts is not None
                await until(lambda: rpad.daemon.alerts.delivered == 2)  # type: ignore[union-attr]
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
                              alerts={"policy": {"group_threshold": 0, "flap_transitions": 0},
                                      "webhooks": [{"url": receiver.url, "queue_size": 2,
                                                    "timeout_seconds": 60,
                                                    "max_attempts": 1}]})
            async with daemon_running(cfg) as rpad:
                await rpad.heartbeat("first")
                assert (await rpad.heartbeat("first", status="offline")).status_code == 200
                await receiver.wait_for(1)
                with trio.fail_after(10):
                    for i in range(10):
                        for status in ("online", "offline"):
                            resp = await rpad.heartbeat(f"c{i}", status=status)
                            assert resp.status_code == 200
                alerts = rpad.daemon.alerts
                assert alerts is not None
                hook = queue(alerts)
                # 10 offline alerts while the worker is stuck on the first one (which stays
                # in the queue until its attempt ends): 1 more queued, 9 dropped.
                await until(lambda: hook.dropped + hook.queued == 11)
                assert (hook.queued, hook.dropped, hook.delivered) == (2, 9, 0)
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
                msg = message_from_bytes(mail.data, policy=email_policy.default)
                assert isinstance(msg, EmailMessage)
                assert msg["Subject"] == "[rpad] Packing robot is offline"
                assert (msg["X-Rpad-Event"], msg["X-Rpad-Level"]) == ("client.offline", "warning")
                text = msg.get_content()
                assert "Packing robot (robot-7) went offline at 20" in text
                assert ": its agent shut down." in text
                assert "Address: 127.0.0.1. Version: 3.2." in text
                alerts = rpad.daemon.alerts
                assert alerts is not None
                await until(lambda: queue(alerts).delivered == 1)
            nursery.cancel_scope.cancel()


async def test_email_retried_when_smtp_server_is_down(tmp_path: Path) -> None:
    port = free_port()
    smtp = SmtpListener()
    with trio.fail_after(E2E_TIMEOUT_SECONDS):
        async with trio.open_nursery() as nursery:
            alerts = await start_alerts(nursery, tmp_path, alerts_config(email=EmailConfig(
                enabled=True, host="127.0.0.1", port=port, recipients=["ops@example.test"],
                timeout_seconds=5)))
            alerts.client_transition(transition())
            email = queue(alerts)
            await until(lambda: email.attempts >= 1 and email.in_flight is None)  # refused
            assert email.delivered == 0
            await nursery.start(smtp.serve, port)
            mails = await smtp.wait_for(1)
            msg = message_from_bytes(mails[0].data, policy=email_policy.default)
            assert msg["Subject"] == "[rpad] Robot one is offline"
            await until(lambda: email.delivered == 1)
            assert email.attempts == 2 and email.failed == 0
            nursery.cancel_scope.cancel()


def test_logs_name_a_webhook_without_its_path_or_query() -> None:
    hook = Webhook(WebhookConfig(url="https://hooks.example.com:8443/services/T0/SECRET?token=abc"))
    assert hook.label.startswith("webhook-")
    assert hook.label.endswith(" (https://hooks.example.com:8443/…)")
    assert "SECRET" not in hook.label and "abc" not in hook.label


async def test_the_ticker_sends_at_the_policys_exact_times(autojump_clock: Any,
                                                           tmp_path: Path) -> None:
    """The service on the fake clock: an offline alert exactly alert_after_seconds after the
    transition, reminders exactly every repeat_every_seconds, a recovery at once."""
    receiver = HttpReceiver()
    async with trio.open_nursery() as nursery:
        await nursery.start(receiver.serve)
        policy = PolicyConfig(alert_after_seconds=120, repeat_every_seconds=600,
                              max_reminders=2, group_threshold=0, flap_transitions=0)
        alerts = await start_alerts(nursery, tmp_path, alerts_config(
            WebhookConfig(url=receiver.url), policy=policy))
        start = trio.current_time()
        alerts.client_transition(transition())
        await trio.sleep(2000)
        alerts.client_transition(transition(CLIENT_CONNECTED, reason="heartbeat"))
        reqs = await receiver.wait_for(4)
        assert [(r.json()["event"], r.at - start) for r in reqs] == [
            ("client.offline", 120.0), ("client.reminder", 720.0), ("client.reminder", 1320.0),
            ("client.online", 2000.0)]
        assert [r.json().get("reminder") for r in reqs] == [None, 1, 2, None]
        nursery.cancel_scope.cancel()
