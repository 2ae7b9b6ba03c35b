"""Batch tasks end to end: a task over 50 real agent processes with live progress to 100 and
exact counts, clients that cannot run it failing at once, the agent killed mid-command, cancel,
a task interrupted by a restart of rpad, the API's checks, and tasks other systems publish."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio

from rpad.config import Config

from .conftest import Running, start_daemon
from .console_helpers import RUN_AS, StartAgent, agents, commands_on, wait_view
from .wsclient import StartDaemon, daemons, ws_connect

__all__ = ["agents", "daemons"]  # fixtures

TIMEOUT_SECONDS = 90
FLEET = 50



async def create(rpad: Running, body: dict[str, Any], **kw: Any) -> dict[str, Any]:
    r = await rpad.request("POST", "/api/v1/tasks", json=body, **kw)
    assert r.status_code == 202, r.text
    data: dict[str, Any] = r.json()
    assert r.headers["location"] == f"/api/v1/tasks/{data['taskId']}"
    return data


async def until_ended(ws: Any, task_id: str) -> list[dict[str, Any]]:
    """TASK_UPDATEs of the task until it has ended."""
    seen: list[dict[str, Any]] = []
    while True:
        msg = await ws.recv()
        if msg["type"] != "TASK_UPDATE" or msg["data"]["taskId"] != task_id:
            continue
        seen.append(msg["data"])
        if msg["data"]["status"] in ("completed", "failed", "cancelled", "interrupted"):
            return seen


async def test_a_task_over_50_agents(daemons: StartDaemon, agents: StartAgent,
                                     make_config: Callable[..., Config]) -> None:
    with trio.fail_after(TIMEOUT_SECONDS):
        rpad = await daemons(make_config())
        ids = [f"fleet-{i:02d}" for i in range(FLEET)]
        async with trio.open_nursery() as n:
            for cid in ids:
                n.start_soon(agents, rpad, cid, "--allow-commands", *RUN_AS)
        for cid in ids:
            await wait_view(rpad, cid, commands_on)
        # Two that cannot take it: one never heard from, one whose owner refuses commands.
        assert (await rpad.request("POST", "/api/v1/clients",
                                   json={"clientId": "silent", "tags": ["fleet"]})).status_code == 201
        await agents(rpad, "refuses", "--control-channel")
        await wait_view(rpad, "refuses", lambda v: v["capabilities"] is not None)
        for cid in [*ids, "refuses"]:
            r = await rpad.request("POST", "/api/v1/clients", json={"clientId": cid,
                                                                    "tags": ["fleet"]})
            assert r.status_code == 200, r.text
        async with ws_connect(rpad.ws_url, token=rpad.token("admin", "watcher")) as ws:
            task = await create(rpad, {"tag": "fleet", "command": "echo ok from $USER",
                                       "concurrency": 10, "timeoutSeconds": 30}, sub="ops")
            assert task["totalDevices"] == FLEET + 2 and task["status"] == "pending"
            await ws.subscribe(task["topic"], since=0)  # from its first update on
            updates = await until_ended(ws, task["taskId"])
        final = updates[-1]
        assert final == {"taskId": task["taskId"], "status": "failed", "progress": 100.0,
                         "currentDevice": None, "totalDevices": FLEET + 2,
                         "completedDevices": FLEET, "failedDevices": 2}
        progress = [u["progress"] for u in updates]
        assert progress == sorted(progress) and progress[-1] == 100.0
        done = [u["completedDevices"] + u["failedDevices"] for u in updates]
        assert done == sorted(done)
        # 100 exactly when every client is done (the last update then says how it ended).
        assert all((u["progress"] == 100) == (n == FLEET + 2) for u, n in zip(updates, done))
        r = await rpad.request("GET", f"/api/v1/tasks/{task['taskId']}")
        body = r.json()
        results = {res["clientId"]: res for res in body["results"]}
        assert len(results) == FLEET + 2 and body["status"] == "failed"
        for cid in ids:
            assert results[cid]["status"] == "success" and results[cid]["exitCode"] == 0
            assert results[cid]["outputTail"].startswith("ok from ")
        assert results["silent"]["status"] == "failed"
        assert results["silent"]["error"].startswith("client_offline")
        assert results["refuses"]["status"] == "failed"
        assert results["refuses"]["error"].startswith("commands_disabled")
        # Failed at once: without a slot, without a command, without waiting for a timeout.
        assert results["silent"]["durationMs"] is None
        r = await rpad.request("GET", "/api/v1/audit",
                               params={"taskId": task["taskId"], "limit": "1000"})
        kinds = [row["kind"] for row in r.json()["items"]]
        assert kinds.count("command") == FLEET and kinds.count("task") == 1


async def test_the_agent_killed_fails_its_client_and_cancel_skips_the_rest(
        daemons: StartDaemon, agents: StartAgent, make_config: Callable[..., Config]) -> None:
    with trio.fail_after(TIMEOUT_SECONDS):
        rpad = await daemons(make_config())
        procs = {}
        for cid in ("a1", "a2", "a3"):
            procs[cid] = await agents(rpad, cid, "--allow-commands", *RUN_AS, interval=1)
        for cid in procs:
            await wait_view(rpad, cid, commands_on)
        async with ws_connect(rpad.ws_url, token=rpad.token("admin", "ops")) as ws:
            task = await create(rpad, {"clientIds": ["a1", "a2", "a3"], "command": "sleep 300",
                                       "concurrency": 2}, sub="ops")
            # The creator gets every update as a direct message (no subscription needed).
            running: set[str] = set()
            while len(running) < 2:
                msg = await ws.expect("TASK_UPDATE")
                assert msg["topic"] is None
                if msg["data"]["currentDevice"]:
                    running.add(msg["data"]["currentDevice"])
            victim = sorted(running)[0]
            procs[victim].kill()
            msg = await ws.expect("TASK_UPDATE")
            assert msg["data"]["failedDevices"] == 1
            r = await rpad.request("POST", f"/api/v1/tasks/{task['taskId']}/cancel", sub="ops")
            assert r.status_code == 202
            updates = await until_ended(ws, task["taskId"])
        assert updates[-1]["status"] == "cancelled" and updates[-1]["progress"] == 100.0
        r = await rpad.request("GET", f"/api/v1/tasks/{task['taskId']}")
        results = {res["clientId"]: res for res in r.json()["results"]}
        assert results[victim]["status"] == "failed"
        assert results[victim]["error"].startswith("agent_disconnected")
        statuses = sorted(res["status"] for cid, res in results.items() if cid != victim)
        assert statuses == ["cancelled", "cancelled"]  # one was running, one never started
        r = await rpad.request("POST", f"/api/v1/tasks/{task['taskId']}/cancel")
        assert r.status_code == 409 and r.json()["error"] == "not_running"


async def test_a_task_running_when_rpad_stops_is_interrupted(
        nursery: trio.Nursery, agents: StartAgent, make_config: Callable[..., Config]) -> None:
    with trio.fail_after(TIMEOUT_SECONDS):
        cfg = make_config()
        rpad = await start_daemon(nursery, cfg)
        await agents(rpad, "h1", "--allow-commands", *RUN_AS, interval=1)
        await wait_view(rpad, "h1", commands_on)
        task = await create(rpad, {"clientIds": ["h1"], "command": "sleep 300"})
        r = await rpad.request("GET", f"/api/v1/tasks/{task['taskId']}")
        while r.json()["results"][0]["status"] != "running":
            await trio.sleep(0.05)
            r = await rpad.request("GET", f"/api/v1/tasks/{task['taskId']}")
        await rpad.http.aclose()
        rpad.daemon.stop()
        while rpad.daemon.store is not None and not rpad.daemon.store._closed:
            await trio.sleep(0.05)
        again = await start_daemon(nursery, cfg)
        r = await again.request("GET", f"/api/v1/tasks/{task['taskId']}")
        body = r.json()
        assert body["status"] == "interrupted" and body["progress"] == 100.0
        assert body["results"][0]["status"] == "interrupted"
        r = await again.request("GET", "/api/v1/tasks", params={"status": "interrupted"})
        assert [t["taskId"] for t in r.json()["items"]] == [task["taskId"]]
        await again.http.aclose()
        again.daemon.stop()


async def test_who_may_and_what_is_checked(daemons: StartDaemon, agents: StartAgent,
                                           make_config: Callable[..., Config]) -> None:
    with trio.fail_after(TIMEOUT_SECONDS):
        rpad = await daemons(make_config())
        await agents(rpad, "h1", "--allow-commands", *RUN_AS, interval=1)
        await wait_view(rpad, "h1", commands_on)
        body = {"clientIds": ["h1"], "command": "true"}
        for role in ("viewer", "service", "agent"):
            r = await rpad.request("POST", "/api/v1/tasks", json=body, role=role, sub="h1")
            assert r.status_code == 403, (role, r.text)
        narrow = rpad.token("operator", "op", exec_=["db-*"])
        r = await rpad.request("POST", "/api/v1/tasks", json=body, token=narrow)
        assert r.status_code == 403 and "h1" in r.json()["message"]
        for bad, field in [
            ({"command": "true"}, "clientIds"),
            ({"clientIds": ["h1"], "tag": "x", "command": "true"}, "clientIds"),
            ({"clientIds": ["h1"]}, "command"),
            ({"clientIds": ["h1"], "command": ""}, "command"),
            ({"clientIds": ["h1"], "command": "true", "concurrency": 0}, "concurrency"),
            ({"clientIds": ["h1"], "command": "true", "timeoutSeconds": -1}, "timeoutSeconds"),
            ({"clientIds": ["no/such"], "command": "true"}, "clientIds[0]"),
            ({"clientIds": ["ghost"], "command": "true"}, "clientIds[0]"),
            ({"tag": "nobody-has-it", "command": "true"}, "tag"),
            ({"clientIds": ["h1"], "command": "true", "comand": "x"}, "comand"),
        ]:
            r = await rpad.request("POST", "/api/v1/tasks", json=bad)
            assert r.status_code == 422, (bad, r.text)
            assert field in [d["field"] for d in r.json()["details"]], (bad, r.text)
        op = rpad.token("operator", "op", exec_=["h*"])
        mine = await create(rpad, {"clientIds": ["h1"], "command": "true"}, token=op)
        theirs = await create(rpad, {"clientIds": ["h1"], "command": "true"})
        r = await rpad.request("GET", "/api/v1/tasks", token=op)
        assert [t["taskId"] for t in r.json()["items"]] == [mine["taskId"]]
        r = await rpad.request("GET", f"/api/v1/tasks/{theirs['taskId']}", token=op)
        assert r.status_code == 404
        r = await rpad.request("GET", "/api/v1/tasks")
        assert {t["taskId"] for t in r.json()["items"]} == {mine["taskId"], theirs["taskId"]}
        r = await rpad.request("GET", "/api/v1/tasks", role="viewer")
        assert r.status_code == 403
        r = await rpad.request("GET", "/api/v1/audit", token=op)
        assert r.status_code == 403
        r = await rpad.request("GET", "/api/v1/audit", params={"since": "yesterday"})
        assert r.status_code == 422 and r.json()["details"][0]["field"] == "since"
        r = await rpad.request("GET", "/api/v1/tasks/NOT-A-TASK")
        assert r.status_code == 404


async def test_tasks_other_systems_publish(daemons: StartDaemon,
                                           make_config: Callable[..., Config]) -> None:
    with trio.fail_after(TIMEOUT_SECONDS):
        rpad = await daemons(make_config())
        async with ws_connect(rpad.ws_url, token=rpad.token("admin", "root")) as ws:
            await ws.subscribe("task.42")
            for update in ({"task_id": 42, "status": "running", "progress": 40,
                            "current_device": "dev-7", "total_devices": 10,
                            "completed_devices": 4},
                           {"taskId": "42", "status": "completed", "progress": 100,
                            "totalDevices": 10, "completedDevices": 9, "failedDevices": 1}):
                r = await rpad.request("POST", "/api/v1/publish", role="service", json={
                    "topic": "task.42", "type": "TASK_UPDATE", "data": update})
                assert r.status_code == 200, r.text
                got = await ws.expect("TASK_UPDATE")
                assert got["data"] == update  # published as it was sent
            # Data in another shape is still published (as before), only not listed.
            r = await rpad.request("POST", "/api/v1/publish", role="service", json={
                "topic": "task.43", "type": "TASK_UPDATE", "data": {"text": "hello"}})
            assert r.status_code == 200
        r = await rpad.request("GET", "/api/v1/tasks")
        items = r.json()["items"]
        assert [t["taskId"] for t in items] == ["42"]
        assert items[0] | {"createdAt": None} == items[0] | {
            "taskId": "42", "source": "publish", "status": "completed", "progress": 100.0,
            "totalDevices": 10, "completedDevices": 9, "failedDevices": 1,
            "createdBy": "tester", "command": None, "createdAt": None}
