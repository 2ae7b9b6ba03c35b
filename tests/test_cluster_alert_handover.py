"""The alerting node killed with SIGKILL (issue 11 with issue 14's alerts): two real
``rpad serve`` processes and a redis-server started by the test, a real HTTP webhook receiver
in this process. An agent's heartbeats alternate between the nodes and raise no alert; a real
offline is delivered exactly once cluster-wide; when the node that was retrying that delivery
is killed, the other node takes over its lease, its policy memory and the shared outbox, and
the delivery reaches the receiver once more (the killed node's failed attempt and the
survivor's success: no loss, no duplicate success)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from rpad.auth import Authenticator, load_keys
from rpad.config import from_dict

from .conftest import config_dict
from .redisproc import RedisProcess, redis_server  # noqa: F401 - a fixture
from .test_alerts import HttpReceiver
from .test_cluster_scenarios import Node

pytestmark = pytest.mark.slow

class AlertNode(Node):
    """A node whose config also names the webhook receiver."""

    def __init__(self, name: str, workdir: Path, redis_url: str, secret: Path,
                 hook_url: str) -> None:
        super().__init__(name, workdir, redis_url, secret)
        text = self.config_path.read_text()
        text = text.replace("[presence]\n", "[presence]\nstartup_grace_seconds = 0\n")
        self.config_path.write_text(text + f'[[alerts.webhooks]]\nurl = "{hook_url}"\n')


async def test_kill_9_of_the_alerting_node_hands_its_pending_delivery_over_once(
        tmp_path: Path, redis_server: RedisProcess, nursery: trio.Nursery) -> None:  # noqa: F811
    # The first attempt of the offline alert fails: it waits in the outbox for its retry.
    receiver = HttpReceiver(statuses=[500])
    await nursery.start(receiver.serve)
    secret = tmp_path / "jwt.secret"
    secret.write_text("handover-secret-0123456789abcdef0123")
    auth = Authenticator(load_keys(from_dict(config_dict(tmp_path,
                                                         auth={"secret_file": str(secret)}))))
    nodes = [AlertNode(n, tmp_path / n, redis_server.url, secret, receiver.url)
             for n in ("n0", "n1")]
    http = httpx.AsyncClient(timeout=5.0)
    headers = {"Authorization": f"Bearer {auth.mint(role='admin', sub='t', ttl_seconds=600)}"}

    async def beat(node: Node, cid: str, **fields: Any) -> httpx.Response:
        return await http.post(node.http_url + "/api/v1/client/heartbeat",
                               json={"clientId": cid, **fields}, headers=headers)

    async def holder(node: Node | None = None) -> str | None:
        r = await http.get((node or nodes[0]).http_url + "/api/v1/health")
        found: str | None = r.json()["cluster"].get("alertLeaseHolder")
        return found

    try:
        with trio.fail_after(60):
            async with trio.open_nursery() as n:
                for node in nodes:
                    n.start_soon(node.start)
            while await holder() is None:
                await trio.sleep(0.1)
            name = await holder()
            alerting = next(x for x in nodes if x.name == name)
            survivor = next(x for x in nodes if x.name != name)
            # "roamer" beats through both nodes in turn for three timeouts: no alert.
            for i in range(9):
                r = await beat(nodes[i % 2], "roamer")
                assert r.status_code == 200, r.text
                await trio.sleep(0.5)
            assert [r.json()["clientId"] for r in receiver.requests] == []
            # down-1 comes and stops: one offline alert; its first attempt fails (500).
            assert (await beat(survivor, "down-1")).status_code == 200
            r = await beat(survivor, "down-1", status="offline")
            assert r.status_code == 200, r.text
            first = (await receiver.wait_for(1))[0].json()
            assert (first["event"], first["clientId"]) == ("client.offline", "down-1")
            # The alerting node dies while the delivery waits for its retry.
            alerting.kill()

            async def roam() -> None:  # roamer's agent moves to the node that is left
                while True:
                    assert (await beat(survivor, "roamer")).status_code == 200
                    await trio.sleep(0.5)

            async with trio.open_nursery() as n:
                n.start_soon(roam)
                got = await receiver.wait_for(2)
                # The lease lapses (6 s) and the survivor delivers the same delivery.
                await trio.sleep(4.0)
                n.cancel_scope.cancel()
            assert await holder(survivor) == survivor.name
            assert [(r.json()["event"], r.json()["deliveryId"]) for r in got] == [
                ("client.offline", first["deliveryId"])] * 2
            r = await http.get(survivor.http_url + "/api/v1/alerts/deliveries", headers=headers)
            body = r.json()
            assert body["pending"] == []
            assert [(e["deliveryId"], e["outcome"]) for e in body["log"]] == [
                (first["deliveryId"], "delivered")]
    finally:
        await http.aclose()
        for node in nodes:
            await node.stop()
