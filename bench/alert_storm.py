"""Alerts in a network partition (issue 14, point 7): how many alerts a webhook receives.

A simulation on Trio's fake clock with the real daemon (in this process: its HTTP API, sweeper,
SQLite store, alert policy and outbox) and a real HTTP receiver on loopback; only time is
virtual, so twenty minutes of a fleet take seconds. 300 clients beat every 10 s (batches of
300 over HTTP) with a 30 s timeout, and ``alerts.policy.alert_after_seconds = 120``:

1. a partition: every client is silent for 90 s, then beats again;
2. an outage: every client is silent for 10 minutes, then beats again.

For each phase it counts the webhook alerts (one per delivery id; a grouped alert is one),
the clients they name, and the ``NOTIFICATION``s on the ``notifications`` topic. Run it with
``BENCH_RPAD_ROOT=/path/to/an/older/checkout`` to count what an older rpad sends (one that has
no ``[alerts.policy]`` runs without it).

    python bench/alert_storm.py [--clients 300] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(os.environ.get("BENCH_RPAD_ROOT", Path(__file__).resolve().parent.parent)).resolve()
sys.path.insert(0, str(ROOT))

import h11
import trio
import trio.testing

from rpad import config as config_mod
from rpad.client import httpclient
from rpad.daemon import Daemon

INTERVAL_SECONDS = 10.0
TIMEOUT_SECONDS = 30.0
ALERT_AFTER_SECONDS = 120.0
ORIGIN = 1767225600.0  # the simulated wall clock starts at 2026-01-01T00:00:00Z
# (phase name, from, silent from, silent until): a phase ends when the next begins. In the
# first, 300 clients are heard from for the first time.
PHASES = (("start", 0.0, 0.0, 0.0), ("partition of 90 s", 40.0, 60.0, 150.0),
          ("outage of 10 minutes", 400.0, 460.0, 1060.0))
END_SECONDS = 1500.0
AUTOJUMP_THRESHOLD_SECONDS = 0.05


class Receiver:
    """A loopback HTTP server that answers 200 and records (virtual time, JSON body)."""

    def __init__(self) -> None:
        self.got: list[tuple[float, dict[str, Any]]] = []
        self.port = 0

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        body = b""
        try:
            while True:
                ev = conn.next_event()
                if ev is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    conn.receive_data(data)
                elif isinstance(ev, h11.Data):
                    body += bytes(ev.data)
                elif isinstance(ev, h11.EndOfMessage):
                    break
            self.got.append((trio.current_time(), json.loads(body)))
            out = conn.send(h11.Response(status_code=200, headers=[("Content-Length", "0")]))
            out += conn.send(h11.EndOfMessage())
            await stream.send_all(out)
        except (trio.BrokenResourceError, h11.ProtocolError):
            pass
        finally:
            await stream.aclose()


def make_config(state: Path, hook_url: str) -> tuple[Any, bool]:
    base: dict[str, Any] = {
        "state_dir": str(state),
        "http": {"listen": "127.0.0.1:0"},
        "websocket": {"listen": "127.0.0.1:0"},
        "presence": {"heartbeat_timeout_seconds": TIMEOUT_SECONDS, "min_interval_seconds": 0},
        "storage": {"commit_interval_ms": 0},
        "logging": {"level": "error"},
        "alerts": {"webhooks": [{"url": hook_url}]},
    }
    with_policy = json.loads(json.dumps(base))
    with_policy["alerts"]["policy"] = {"alert_after_seconds": ALERT_AFTER_SECONDS}
    try:
        return config_mod.from_dict(with_policy), True
    except config_mod.ConfigError:
        return config_mod.from_dict(base), False  # an rpad without an alert policy


async def simulate(clients: int) -> dict[str, Any]:
    receiver = Receiver()
    ids = [f"robot-{i:03d}" for i in range(clients)]
    with tempfile.TemporaryDirectory() as tmp:
        async with trio.open_nursery() as nursery:
            await nursery.start(receiver.serve)
            cfg, has_policy = make_config(Path(tmp), f"http://127.0.0.1:{receiver.port}/hook")
            daemon = Daemon(cfg, wall_clock=lambda: ORIGIN + trio.current_time())
            await nursery.start(daemon.run)
            assert daemon.auth is not None
            token = daemon.auth.mint(role="service", sub="bench", ttl_seconds=None)
            url = daemon.http_url + "/api/v1/client/heartbeats"
            body = json.dumps({"heartbeats": [{"clientId": c} for c in ids]}).encode()
            headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
            start = trio.current_time()
            marks: list[dict[str, int]] = []
            begins = [p[1] for p in PHASES]
            t = 0.0
            while t < END_SECONDS + 120:  # beating to the end: no third outage
                silent = any(a <= t < b for _, _, a, b in PHASES)
                await trio.sleep_until(start + t)
                if t in begins:
                    marks.append(dict(daemon.presence.transitions))  # type: ignore[union-attr]
                if not silent:
                    resp = await httpclient.request("POST", url, body=body, headers=headers,
                                                    timeout_seconds=3600)
                    assert resp.status == 200, resp.status
                t += INTERVAL_SECONDS
            notifications = daemon.broker.topic_seq("notifications")
            marks.append(dict(daemon.presence.transitions))  # type: ignore[union-attr]
            daemon.stop()
            nursery.cancel_scope.cancel()
    phases = []
    for i, (name, begin, _, _) in enumerate(PHASES):
        end = PHASES[i + 1][1] if i + 1 < len(PHASES) else END_SECONDS + 120
        # One per delivery id: a retry (a receiver slow to answer in virtual time) is the same
        # alert again.
        unique = {b["deliveryId"]: b for at, b in receiver.got if begin <= at - start < end}
        got = list(unique.values())
        named = sum(len(b["clients"]) if "clients" in b else 1 for b in got)
        events: dict[str, int] = {}
        for b in got:
            events[b["event"]] = events.get(b["event"], 0) + 1
        went = {k: marks[i + 1].get(k, 0) - marks[i].get(k, 0)
                for k in ("CLIENT_DISCONNECTED", "CLIENT_CONNECTED")}
        phases.append({"phase": name, "requests": len(got), "clientsNamed": named,
                       "events": events, "offlineTransitions": went["CLIENT_DISCONNECTED"],
                       "onlineTransitions": went["CLIENT_CONNECTED"]})
    return {"rpad": str(ROOT), "policy": has_policy, "clients": clients, "phases": phases,
            "notifications": notifications}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=300)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    # The clock jumps to the next timer once every task has waited this long in real time: long
    # enough for a commit in SQLite's worker thread, which a jump must not overtake.
    clock = trio.testing.MockClock(autojump_threshold=AUTOJUMP_THRESHOLD_SECONDS)
    result = trio.run(simulate, args.clients, clock=clock)
    if args.json:
        print(json.dumps(result))
        return
    policy = (f"alert_after_seconds = {ALERT_AFTER_SECONDS:g}" if result["policy"]
              else "no alert policy (an older rpad)")
    print(f"rpad {result['rpad']}: {result['clients']} clients, {policy}")
    for p in result["phases"]:
        events = ", ".join(f"{k} {v}" for k, v in sorted(p["events"].items())) or "none"
        print(f"  {p['phase']:<22} {p['requests']:>4} webhook alerts naming "
              f"{p['clientsNamed']:>4} clients ({events}); transitions: "
              f"{p['offlineTransitions']} offline, {p['onlineTransitions']} online")
    print(f"  notifications topic: {result['notifications']} NOTIFICATIONs in all")


if __name__ == "__main__":
    main()
