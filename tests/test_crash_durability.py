"""Crash-only durability: ``rpad serve`` is killed with SIGKILL at random moments under a steady
load, ten times, and started again on the same state directory each time.

The load: heartbeats for twenty clients from three concurrent senders, and an admin who
registers clients, registers-then-removes others, and revokes agents' tokens, while a
WebSocket dashboard follows the ``heartbeat`` topic. Every write whose 2xx arrived is entered
in a ledger; a write in flight when the process died may or may not have happened, and the
ledger says so.

After every restart, before any new load:

* every acknowledged heartbeat, registration, removal and revocation is there (SPEC §3: a 2xx
  means it is committed);
* the startup grace holds: the clients that were online when rpad died have been silent for
  longer than their timeout by then, and still nobody is marked offline (neither in the list
  nor as a ``CLIENT_DISCONNECTED``) while the sweeper runs several times inside the grace;
* ``epoch`` is new, ``since`` from the old epoch is answered ``recovered: false``, and in each
  epoch the ``heartbeat`` topic's ``seq`` runs 1, 2, 3, … without a gap (SPEC §5).

At the end the grace runs out and the silent clients do go offline (with reason ``timeout``), so
the grace check above cannot pass by accident; then SIGTERM stops rpad with exit status 0.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed

from rpad import config as config_mod
from rpad.auth import Authenticator, load_keys
from rpad.core.times import parse_iso

from .conftest import read_serve_banner
from .wsclient import Ws, ws_connect

pytestmark = [
    pytest.mark.slow,
    # rpad is killed in the middle of requests on purpose; httpx then leaves the request
    # body's async generator unfinished, and trio warns when it is collected.
    pytest.mark.filterwarnings(
        "ignore:Async generator 'httpx._content.ByteStream.__aiter__' was garbage collected"
        ":ResourceWarning"),
]

KILLS = 10
SEED = 20260101
HEARTBEAT_TIMEOUT_SECONDS = 1.5
CHECK_INTERVAL_SECONDS = 0.2
GRACE_SECONDS = 5.0
STEADY_CLIENTS = [f"c-{i}" for i in range(20)]
START_TIMEOUT_SECONDS = 20
WHOLE_TEST_SECONDS = 110


@attrs.define
class Ledger:
    beats: dict[str, float] = attrs.Factory(dict)  # client -> serverTime of the last acked beat
    acked_at: dict[str, float] = attrs.Factory(dict)  # client -> local time of that ack
    registered: dict[str, str] = attrs.Factory(dict)  # client -> name (acknowledged)
    removed: set[str] = attrs.Factory(set)  # acknowledged removals
    uncertain: set[str] = attrs.Factory(set)  # a removal in flight when rpad died
    revoked: list[tuple[str, str]] = attrs.Factory(list)  # (client, token revoked by an ack)
    generation: dict[str, int] = attrs.Factory(dict)  # agent -> generation after the last ack
    writes: int = 0


@attrs.define
class Rpad:
    process: trio.Process
    http_url: str
    ws_url: str


def _write_config(tmp: Path) -> Path:
    secret = tmp / "secret"
    secret.write_text("crash-test-secret-" + "x" * 32 + "\n")
    secret.chmod(0o600)
    cfg = tmp / "rpad.toml"
    cfg.write_text(f"""
state_dir = "{tmp / 'state'}"
[http]
listen = "127.0.0.1:0"
graceful_timeout_seconds = 2.0
[websocket]
listen = "127.0.0.1:0"
[presence]
heartbeat_timeout_seconds = {HEARTBEAT_TIMEOUT_SECONDS}
check_interval_seconds = {CHECK_INTERVAL_SECONDS}
min_interval_seconds = 0
startup_grace_seconds = {GRACE_SECONDS}
[auth]
secret_file = "{secret}"
max_failures_per_minute = 100000
[logging]
level = "warning"
""")
    return cfg


async def _start(cfg: Path, log: Any) -> Rpad:
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "rpad", "serve", "--config", str(cfg)],
        stdout=subprocess.PIPE, stderr=log, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert process.stdout is not None
    with trio.fail_after(START_TIMEOUT_SECONDS):
        http_url, ws_url, _ = await read_serve_banner(process.stdout)
    assert ws_url is not None
    return Rpad(process, http_url, ws_url)


async def _kill(rpad: Rpad) -> None:
    rpad.process.send_signal(signal.SIGKILL)
    with trio.fail_after(10):
        await rpad.process.wait()
    assert rpad.process.returncode == -signal.SIGKILL


class Load:
    """The steady load against one run of rpad; everything acknowledged goes in the ledger."""

    def __init__(self, rpad: Rpad, http: httpx.AsyncClient, auth: Authenticator,
                 ledger: Ledger, rng: random.Random, cycle: int) -> None:
        self.rpad = rpad
        self.http = http
        self.auth = auth
        self.ledger = ledger
        self.rng = rng
        self.cycle = cycle
        self.service = {"Authorization": "Bearer " + auth.mint(role="service", sub="gw",
                                                               ttl_seconds=3600)}
        self.admin = {"Authorization": "Bearer " + auth.mint(role="admin", sub="ops",
                                                             ttl_seconds=3600)}

    async def _post(self, path: str, body: Any, headers: dict[str, str]) -> httpx.Response:
        return await self.http.post(self.rpad.http_url + path, json=body, headers=headers)

    async def beats(self, offset: int) -> None:
        i = offset
        try:
            while True:
                cid = STEADY_CLIENTS[i % len(STEADY_CLIENTS)]
                i += 1
                resp = await self._post("/api/v1/client/heartbeat",
                                        {"clientId": cid, "version": f"v{self.cycle}"},
                                        self.service)
                assert resp.status_code == 200, resp.text
                self.ledger.beats[cid] = parse_iso(resp.json()["serverTime"])
                self.ledger.acked_at[cid] = time.time()
                self.ledger.writes += 1
        except httpx.TransportError:
            return  # rpad died under us

    async def admin_work(self) -> None:
        led = self.ledger
        n = 0
        try:
            while True:
                n += 1
                tag = f"{self.cycle}-{n}"
                name = f"name '{tag}' ; --"
                resp = await self._post("/api/v1/clients", {"clientId": f"reg-{tag}", "name": name},
                                        self.admin)
                assert resp.status_code == 201, resp.text
                led.registered[f"reg-{tag}"] = name
                led.writes += 1

                resp = await self._post("/api/v1/clients", {"clientId": f"rm-{tag}"}, self.admin)
                assert resp.status_code == 201, resp.text
                led.uncertain.add(f"rm-{tag}")  # registered; its removal comes next
                resp = await self.http.delete(f"{self.rpad.http_url}/api/v1/clients/rm-{tag}",
                                              headers=self.admin)
                assert resp.status_code == 200, resp.text
                led.uncertain.discard(f"rm-{tag}")
                led.removed.add(f"rm-{tag}")
                led.writes += 1

                agent = f"agent-{self.rng.randrange(3)}"
                gen = led.generation.get(agent, 0)
                token = self.auth.mint(role="agent", sub=agent, ttl_seconds=3600, gen=gen)
                resp = await self._post("/api/v1/client/heartbeat", {"clientId": agent},
                                        {"Authorization": f"Bearer {token}"})
                assert resp.status_code == 200, resp.text
                led.beats[agent] = parse_iso(resp.json()["serverTime"])
                led.acked_at[agent] = time.time()
                # In flight: the revocation may or may not happen if rpad dies now.
                led.generation.pop(agent, None)
                resp = await self.http.delete(f"{self.rpad.http_url}/api/v1/clients/{agent}/tokens",
                                              headers=self.admin)
                assert resp.status_code == 200, resp.text
                led.generation[agent] = resp.json()["generation"]
                assert led.generation[agent] == gen + 1
                led.revoked.append((agent, token))
                led.writes += 1
                await trio.sleep(0.01)
        except httpx.TransportError:
            return


async def _follow(ws: Ws, seqs: list[int]) -> None:
    try:
        while True:
            msg = await ws.recv()
            if msg["type"] == "HEARTBEAT_RECEIVED":
                seqs.append(msg["seq"])
    except ConnectionClosed:
        return


async def _current_generation(http: httpx.AsyncClient, rpad: Rpad, auth: Authenticator,
                              agent: str) -> int:
    """After an unacknowledged revocation the generation is 'one of two': ask rpad which, by
    trying a token of each."""
    for gen in range(1000):
        token = auth.mint(role="agent", sub=agent, ttl_seconds=60, gen=gen)
        resp = await http.get(f"{rpad.http_url}/api/v1/client/heartbeat/status/{agent}",
                              headers={"Authorization": f"Bearer {token}"})
        if resp.status_code != 401:
            return gen
    raise AssertionError(f"no generation works for {agent}")


async def _check_after_restart(rpad: Rpad, http: httpx.AsyncClient, auth: Authenticator,
                               ledger: Ledger, killed_at: float, old_epochs: list[str],
                               old_last_seq: int) -> str:
    admin = {"Authorization": "Bearer " + auth.mint(role="admin", sub="checker", ttl_seconds=600)}

    health = (await http.get(rpad.http_url + "/api/v1/health")).json()
    epoch = health["epoch"]
    assert epoch not in old_epochs, "every start of rpad has a new epoch"

    # The startup grace: clients that were surely online at the kill (acknowledged beat within
    # the last second, timeout 1.5 s) have now been silent longer than their timeout.
    online_at_kill = {c for c, t in ledger.acked_at.items() if t >= killed_at - 1.0
                      and c in STEADY_CLIENTS}
    newest = max(ledger.acked_at.values(), default=0.0)
    async with ws_connect(rpad.ws_url, token=auth.mint(role="viewer", sub="dash",
                                                       ttl_seconds=600)) as status:
        assert status.established["epoch"] == epoch
        await status.subscribe("client_status")
        if old_last_seq:
            resumed = await status.subscribe("heartbeat", since=old_last_seq)
            assert resumed["data"]["recovered"] is False, "old-epoch seqs are not recovered"
        await trio.sleep(max(0.0, newest + HEARTBEAT_TIMEOUT_SECONDS + 0.3 - time.time()))
        for _ in range(4):  # several sweeps (every 0.2 s) inside the grace
            clients = (await http.get(rpad.http_url + "/api/v1/clients?limit=10000",
                                      headers=admin)).json()["clients"]
            by_id = {c["clientId"]: c for c in clients}
            for cid in online_at_kill:
                assert by_id[cid]["status"] == "online", (
                    f"{cid} reported {by_id[cid]['status']} inside the startup grace")
            await trio.sleep(0.3)
        with trio.move_on_after(0.05):
            while True:
                msg = await status.recv()
                assert msg["type"] != "CLIENT_DISCONNECTED", f"offline inside the grace: {msg}"

    # Every acknowledged write is there.
    for cid, server_time in ledger.beats.items():
        got = by_id.get(cid)
        assert got is not None, f"acknowledged heartbeat of {cid} lost"
        assert parse_iso(got["lastHeartbeatAt"]) >= server_time - 0.001, (cid, got, server_time)
    for cid, name in ledger.registered.items():
        assert cid in by_id and by_id[cid]["name"] == name, f"registration of {cid} lost"
    for cid in ledger.removed:
        assert cid not in by_id, f"removal of {cid} lost"
    for cid in list(ledger.uncertain):  # in flight at the kill: either way, then settled
        if cid in by_id:
            resp = await http.delete(f"{rpad.http_url}/api/v1/clients/{cid}", headers=admin)
            assert resp.status_code == 200
        ledger.uncertain.discard(cid)
        ledger.removed.add(cid)
    for agent, token in ledger.revoked:
        resp = await http.post(rpad.http_url + "/api/v1/client/heartbeat",
                               json={"clientId": agent}, headers={"Authorization": f"Bearer {token}"})
        assert resp.status_code == 401 and resp.json()["error"] == "token_revoked", (
            f"revocation of {agent} lost: {resp.status_code} {resp.text}")
    for agent in {a for a, _ in ledger.revoked} | set(ledger.generation):
        if agent not in ledger.generation:  # a revocation was in flight at the kill
            ledger.generation[agent] = await _current_generation(http, rpad, auth, agent)
    return str(epoch)


async def test_kill_9_under_load_loses_nothing_acknowledged(tmp_path: Path) -> None:
    cfg_path = _write_config(tmp_path)
    cfg = config_mod.load(str(cfg_path))
    auth = Authenticator(load_keys(cfg))
    rng = random.Random(SEED)
    ledger = Ledger()
    epochs: list[str] = []
    last_seq = 0
    log_path = tmp_path / "rpad.log"
    # (A real file for the children's stderr; opened once, before any load.)
    with open(log_path, "ab") as log, trio.fail_after(WHOLE_TEST_SECONDS):  # noqa: ASYNC230
        async with httpx.AsyncClient(timeout=10) as http:
            rpad = await _start(cfg_path, log)
            killed_at = 0.0
            for cycle in range(KILLS + 1):
                if cycle:
                    epoch = await _check_after_restart(rpad, http, auth, ledger, killed_at,
                                                          epochs, last_seq)
                else:
                    epoch = (await http.get(rpad.http_url + "/api/v1/health")).json()["epoch"]
                epochs.append(epoch)
                if cycle == KILLS:
                    break
                seqs: list[int] = []
                load = Load(rpad, http, auth, ledger, rng, cycle)
                viewer = auth.mint(role="viewer", sub="dash", ttl_seconds=600)
                async with ws_connect(rpad.ws_url, token=viewer) as ws:
                    await ws.subscribe("heartbeat")
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(_follow, ws, seqs)
                        for k in range(3):
                            nursery.start_soon(load.beats, k * 7)
                        nursery.start_soon(load.admin_work)
                        await trio.sleep(rng.uniform(0.3, 1.5))
                        killed_at = time.time()
                        await _kill(rpad)
                # In each epoch the topic's seq ran 1, 2, 3, ... with no gap.
                assert seqs and seqs == list(range(1, len(seqs) + 1)), seqs[:20]
                last_seq = seqs[-1]
                rpad = await _start(cfg_path, log)

            # The grace ends, and the clients silent since the last kill go offline.
            with trio.fail_after(GRACE_SECONDS + 5):
                while True:
                    clients = (await http.get(
                        rpad.http_url + "/api/v1/clients?limit=10000",
                        headers={"Authorization": "Bearer " + auth.mint(
                            role="viewer", sub="v", ttl_seconds=60)})).json()["clients"]
                    steady = [c for c in clients if c["clientId"] in STEADY_CLIENTS]
                    if all(c["status"] == "offline" for c in steady):
                        break
                    await trio.sleep(0.2)
            rpad.process.send_signal(signal.SIGTERM)
            with trio.fail_after(15):
                await rpad.process.wait()
            assert rpad.process.returncode == 0
    assert ledger.writes > 100, "the load was too light to mean anything"
    log_text = log_path.read_text(errors="replace")
    assert "Traceback" not in log_text, log_text[-3000:]
