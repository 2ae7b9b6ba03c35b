"""Cluster faults with real processes: three ``rpad serve`` nodes and a redis-server, all
started by the test on loopback, while agents beat and dashboards listen.

Agents are HTTP clients in this test process that pick "their" node like a load balancer and
move to the next one when it fails (a refused connection or a 503). Dashboards hold one
WebSocket per node on ``client_status``; when their node goes away they reconnect to another
node with ``since`` = the last seq they saw. After each scenario:

- no acknowledged heartbeat is lost: every agent's ``lastHeartbeatAt`` is at least the
  ``serverTime`` of its last 200;
- no duplicate or missing transition: exactly one ``CLIENT_CONNECTED`` per agent in the
  topic, and each dashboard's seqs run without a gap (a reconnection's ``since`` replay fills
  what it missed) or a repeat;
- no false offline: no ``CLIENT_DISCONNECTED`` for an agent that kept beating.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from rpad.auth import Authenticator, load_keys
from rpad.config import from_dict

from .conftest import config_dict, read_serve_banner
from .redisproc import RedisProcess, redis_server  # noqa: F401 - a fixture
from .wsclient import ws_connect

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
AGENTS = 12
BEAT_EVERY_SECONDS = 0.5
TIMEOUT_SECONDS = 4.0
PRESENCE = {"heartbeat_timeout_seconds": TIMEOUT_SECONDS, "check_interval_seconds": 0.5,
            "min_interval_seconds": 0}


class Node:
    """One ``rpad serve`` process of the cluster."""

    def __init__(self, name: str, workdir: Path, redis_url: str, secret: Path) -> None:
        self.name = name
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        cfg = config_dict(workdir / "state", presence=PRESENCE,
                          cluster={"backend": "redis", "redis_url": redis_url, "node_id": name},
                          auth={"secret_file": str(secret)}, logging={"level": "info"})
        self.config_path = workdir / "rpad.toml"
        self.config_path.write_text(_toml(cfg))
        self.proc: trio.Process | None = None
        self.http_url = ""
        self.ws_url = ""

    async def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        env.pop("NOTIFY_SOCKET", None)
        err = open(self.workdir / "stderr.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            self.proc = await trio.lowlevel.open_process(
                [sys.executable, "-m", "rpad", "serve", "--config", str(self.config_path)],
                stdout=subprocess.PIPE, stderr=err, env=env, cwd=self.workdir)
        finally:
            err.close()
        assert self.proc.stdout is not None
        http, ws, _ = await read_serve_banner(self.proc.stdout, self.log)
        self.http_url, self.ws_url = http, ws or ""

    def log(self) -> str:
        return (self.workdir / "stderr.log").read_text(errors="replace")[-3000:]

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            with trio.move_on_after(15):
                await self.proc.wait()
            if self.proc.returncode is None:
                self.proc.kill()
                await self.proc.wait()


def _toml(d: dict[str, Any], prefix: str = "") -> str:
    """A tiny TOML writer for config_dict's tables of scalars."""
    lines, tables = [], []
    for k, v in d.items():
        if isinstance(v, dict):
            tables.append((k, v))
        elif isinstance(v, str):
            lines.append(f'{k} = "{v}"')
        elif isinstance(v, bool):
            lines.append(f"{k} = {'true' if v else 'false'}")
        else:
            lines.append(f"{k} = {v}")
    out = "\n".join(lines) + "\n"
    for k, v in tables:
        name = f"{prefix}{k}"
        out += f"[{name}]\n" + _toml(v, name + ".")
    return out


class Cluster:
    """Three nodes, agents and dashboards, and what they saw."""

    def __init__(self, tmp: Path, redis: RedisProcess) -> None:
        self.redis = redis
        secret = tmp / "jwt.secret"
        secret.write_text("scenario-secret-0123456789abcdef0123")
        cfg = from_dict(config_dict(tmp, auth={"secret_file": str(secret)}))
        self.auth = Authenticator(load_keys(cfg))
        self.nodes = [Node(f"n{i}", tmp / f"n{i}", redis.url, secret) for i in range(3)]
        self.http = httpx.AsyncClient(timeout=5.0)
        self.acked: dict[str, str] = {}  # agent -> serverTime of its last 200
        self.beating: set[str] = {f"agent-{i}" for i in range(AGENTS)}
        self.refused = 0
        # Per dashboard: client_status envelopes in arrival order; the since-replays.
        self.seen: list[list[dict[str, Any]]] = [[] for _ in range(3)]
        self.resumes: list[list[bool]] = [[] for _ in range(3)]

    def token(self, role: str, sub: str) -> str:
        return self.auth.mint(role=role, sub=sub, ttl_seconds=600)

    async def start(self) -> None:
        async with trio.open_nursery() as n:
            for node in self.nodes:
                n.start_soon(node.start)

    async def agent(self, i: int) -> None:
        cid = f"agent-{i}"
        headers = {"Authorization": f"Bearer {self.token('agent', cid)}"}
        k = i % 3
        while cid in self.beating:
            node = self.nodes[k]
            try:
                r = await self.http.post(node.http_url + "/api/v1/client/heartbeat",
                                         json={"clientId": cid}, headers=headers)
            except httpx.HTTPError:
                r = None
            if r is not None and r.status_code == 200:
                self.acked[cid] = r.json()["serverTime"]
                await trio.sleep(BEAT_EVERY_SECONDS)
            else:
                if r is not None:
                    assert r.status_code == 503, r.text
                    assert r.json()["error"] == "backend_unavailable"
                self.refused += 1
                k = (k + 1) % 3  # the load balancer tries another node
                await trio.sleep(0.2)

    async def dashboard(self, d: int) -> None:
        token = self.token("viewer", f"dash-{d}")
        k = d
        last: int | None = None
        while True:
            node = self.nodes[k]
            try:
                async with ws_connect(node.ws_url, token=token) as ws:
                    await ws.send(action="subscribe", topic="client_status",
                                  **({"since": last} if last is not None else {}))
                    while True:
                        msg = await ws.recv()
                        if msg["type"] == "SUBSCRIBED":
                            if last is not None:
                                self.resumes[d].append(msg["data"]["recovered"])
                            continue
                        if msg.get("topic") != "client_status":
                            continue
                        if last is not None and msg["seq"] <= last:
                            continue  # the JS client's rule: seen already
                        self.seen[d].append(msg)
                        last = msg["seq"]
            except Exception:  # noqa: BLE001 - the node went away: next node
                k = (k + 1) % 3
                await trio.sleep(0.3)

    async def check(self) -> None:
        """The three promises, read from a live node."""
        live = [n for n in self.nodes if n.proc is not None and n.proc.returncode is None]
        # A node that has not yet noticed that Redis restarted (about two seconds) may lag
        # until it reloads its view from Redis: every node's view must hold every acknowledged
        # heartbeat within a few seconds.
        with trio.move_on_after(10):
            while any([await self._lost(node) for node in live]):
                await trio.sleep(0.2)
        for node in live:
            lost = await self._lost(node)
            assert lost == {}, f"{node.name}: acknowledged heartbeats lost: {lost}"
        for d, seen in enumerate(self.seen):
            seqs = [m["seq"] for m in seen]
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"dashboard {d}: {seqs}"
            assert all(self.resumes[d]), f"dashboard {d}: a resume was not recovered"
        connected = [m["data"]["clientId"] for m in self.seen[0] if m["type"] == "CLIENT_CONNECTED"]
        assert sorted(connected) == sorted(f"agent-{i}" for i in range(AGENTS)), connected
        offline = [m["data"]["clientId"] for seen in self.seen for m in seen
                   if m["type"] == "CLIENT_DISCONNECTED" and m["data"]["clientId"] in self.beating]
        assert offline == [], f"false offline: {offline}"

    async def _lost(self, node: Node) -> dict[str, tuple[str, str | None]]:
        """Acknowledged heartbeats that ``node``'s view does not (yet) hold."""
        r = await self.http.get(node.http_url + "/api/v1/clients", headers={
            "Authorization": f"Bearer {self.token('viewer', 'x')}"})
        clients = {c["clientId"]: c for c in r.json()["clients"]}
        return {cid: (at, clients.get(cid, {}).get("lastHeartbeatAt"))
                for cid, at in self.acked.items()
                if (clients.get(cid, {}).get("lastHeartbeatAt") or "") < at}

    async def lease_holder(self) -> str:
        for node in self.nodes:
            if node.proc is None or node.proc.returncode is not None:
                continue
            r = await self.http.get(node.http_url + "/api/v1/health")
            holder = r.json()["cluster"]["sweepLeaseHolder"]
            if holder:
                return str(holder)
        raise AssertionError("nobody holds the sweep lease")

    async def close(self) -> None:
        async with trio.open_nursery() as n:
            for node in self.nodes:
                n.start_soon(node.stop)
        await self.http.aclose()


async def run_scenario(tmp_path: Path, redis: RedisProcess, fault: Any) -> Cluster:
    cluster = Cluster(tmp_path, redis)
    try:
        with trio.fail_after(90):
            await cluster.start()
            async with trio.open_nursery() as n:
                for d in range(3):
                    n.start_soon(cluster.dashboard, d)
                await trio.sleep(0.5)
                # The agents stop on their own after their request in flight (cancelling an
                # httpx request mid-body leaves its body iterator to the garbage collector,
                # whose ResourceWarning then fails whichever test it lands in).
                async with trio.open_nursery() as agents:
                    for i in range(AGENTS):
                        agents.start_soon(cluster.agent, i)
                    while len(cluster.acked) < AGENTS:
                        await trio.sleep(0.1)
                    await trio.sleep(1.0)
                    await fault(cluster)
                    await trio.sleep(2.0)  # everyone beats again, dashboards catch up
                    cluster.beating.clear()
                n.cancel_scope.cancel()
            await cluster.check()
    except BaseException:
        for node in cluster.nodes:
            print(f"--- {node.name} ---\n{node.log()}")
        raise
    finally:
        await cluster.close()
    return cluster


async def test_kill_9_of_the_node_that_sweeps(tmp_path: Path,
                                              redis_server: RedisProcess) -> None:  # noqa: F811
    """Another node takes the sweep over: an agent that stops goes offline exactly once."""
    async def fault(cluster: Cluster) -> None:
        holder = await cluster.lease_holder()
        victim = next(n for n in cluster.nodes if n.name == holder)
        cluster.beating.discard("agent-0")
        victim.kill()
        t0 = trio.current_time()
        while not any(m["type"] == "CLIENT_DISCONNECTED" for seen in cluster.seen
                      for m in seen):
            await trio.sleep(0.1)
        took = trio.current_time() - t0
        assert took < TIMEOUT_SECONDS + 6 + 2, took  # timeout + lease TTL + rounds
        # A node that does not hold the lease learns who does when it next tries to take it
        # (every LEASE_RENEW_SECONDS, 2 s): the one asked may still name the dead node.
        with trio.move_on_after(3.0):
            while await cluster.lease_holder() == holder:
                await trio.sleep(0.1)
        assert await cluster.lease_holder() != holder

    cluster = await run_scenario(tmp_path, redis_server, fault)
    offline = [m["data"]["clientId"] for m in cluster.seen[1] + cluster.seen[2]
               if m["type"] == "CLIENT_DISCONNECTED"]
    assert sorted(set(offline)) == ["agent-0"]
    for seen in cluster.seen:
        assert [m["data"]["clientId"] for m in seen
                if m["type"] == "CLIENT_DISCONNECTED"] in (["agent-0"], [])


async def test_kill_9_of_redis_and_restart_from_its_aof(tmp_path: Path,
                                                        redis_server: RedisProcess) -> None:  # noqa: F811
    async def fault(cluster: Cluster) -> None:
        cluster.redis.kill()
        await trio.sleep(1.0)
        await trio.to_thread.run_sync(cluster.redis.start)

    await run_scenario(tmp_path, redis_server, fault)


async def test_redis_stopped_for_10_seconds(tmp_path: Path,
                                            redis_server: RedisProcess) -> None:  # noqa: F811
    async def fault(cluster: Cluster) -> None:
        await cluster.redis.down_for(10.0)
        await trio.sleep(TIMEOUT_SECONDS)  # through the grace after Redis returned

    cluster = await run_scenario(tmp_path, redis_server, fault)
    assert cluster.refused > AGENTS


async def test_rolling_restart_of_every_node(tmp_path: Path,
                                             redis_server: RedisProcess) -> None:  # noqa: F811
    async def fault(cluster: Cluster) -> None:
        for node in cluster.nodes:
            await node.stop()
            await trio.sleep(0.5)
            await node.start()
            await trio.sleep(0.5)

    await run_scenario(tmp_path, redis_server, fault)
