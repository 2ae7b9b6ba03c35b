"""Storage failure, reproduced for real: the database lives on a small filesystem of its own.

* Disk full: a size-limited tmpfs is filled to the last byte by a filler file while rpad runs.
  Every write is then answered 503 ``storage_unavailable`` with ``Retry-After``; nothing is
  acknowledged that is not on disk; reads, the dashboard and the WebSocket hub keep working;
  the sweeper still marks a silent client offline and announces it. When the filler is
  removed, rpad recovers by itself, without a restart: new writes succeed and the writes that
  failed (kept in memory and merged into later batches) are committed too.
* Read-only: an ext4 filesystem on a loop device, mounted ``errors=remount-ro``, is turned
  read-only by the kernel's own error path (``/sys/fs/ext4/<dev>/trigger_fs_error``, what an
  I/O error does), with rpad's files open. Writes are 503, reads and the hub keep working, and
  rpad stops cleanly. The kernel never lets such a mount write again (``emergency_ro``), so
  recovery there means a restart after ``e2fsck``: the test does that and finds every
  acknowledged write.

These tests need root (``mount``): locally they skip without it; in CI (``CI=true``) they fail.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import ConnectionClosed

from rpad import config as config_mod
from rpad.config import Config
from rpad.core.times import parse_iso

from .conftest import IN_CI, Running, config_dict, need_tool, start_daemon
from .wsclient import Ws, ws_connect

TIMEOUT_SECONDS = 60
HEARTBEAT_TIMEOUT_SECONDS = 2.0
FS_BYTES = 4 * 1024 * 1024
BIG_METADATA = {"note": "x" * 3000}  # each heartbeat needs new database pages


def _cannot(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"{reason}: required in CI")
    pytest.skip(reason)


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=False, capture_output=True, text=True, timeout=30)


def _umount(path: Path) -> None:
    if _run("umount", str(path)).returncode != 0:
        _run("umount", "-l", str(path))


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A FS_BYTES tmpfs of its own."""
    need_tool("mount")
    mnt = tmp_path / "fs"
    mnt.mkdir()
    if os.geteuid() != 0:
        _cannot("mounting a filesystem needs root")
    res = _run("mount", "-t", "tmpfs", "-o", f"size={FS_BYTES},mode=0700", "tmpfs", str(mnt))
    if res.returncode != 0:
        _cannot(f"cannot mount a tmpfs: {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        _umount(mnt)


@pytest.fixture
def ext4(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A 32 MiB ext4 filesystem on a loop device, mounted errors=remount-ro: (mount point,
    image)."""
    need_tool("mount")
    need_tool("mkfs.ext4")
    need_tool("e2fsck")
    if os.geteuid() != 0:
        _cannot("mounting a filesystem needs root")
    image = tmp_path / "ext4.img"
    with open(image, "wb") as f:
        f.truncate(32 * 1024 * 1024)
    res = _run("mkfs.ext4", "-q", "-F", str(image))
    assert res.returncode == 0, res.stderr
    mnt = tmp_path / "ext4"
    mnt.mkdir()
    res = _run("mount", "-o", "loop,errors=remount-ro", str(image), str(mnt))
    if res.returncode != 0:
        _cannot(f"cannot loop-mount an ext4 image: {res.stderr.strip()}")
    try:
        yield mnt, image
    finally:
        _umount(mnt)


def _fill(directory: Path) -> Path:
    """Fill the filesystem of ``directory`` to the last byte; the filler's path."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f:
        for chunk in (1 << 20, 1 << 16, 4096, 512, 1):
            try:
                while True:
                    f.write(b"\0" * chunk)
            except OSError:
                pass
    assert shutil.disk_usage(directory).free < 4096
    return filler


def _config(state_dir: Path) -> Config:
    return config_mod.from_dict(config_dict(
        state_dir,
        presence={"heartbeat_timeout_seconds": HEARTBEAT_TIMEOUT_SECONDS,
                  "check_interval_seconds": 0.2, "min_interval_seconds": 0},
        logging={"level": "info"},
    ))


class Ledger:
    """Every acknowledged write, to be found on disk later."""

    def __init__(self) -> None:
        self.beats: dict[str, float] = {}  # client id -> serverTime of its last acked beat
        self.registered: dict[str, str] = {}  # client id -> name
        self.removed: set[str] = set()
        self.revoked: dict[str, int] = {}  # client id -> generation

    async def beat(self, r: Running, cid: str, **fields: Any) -> Any:
        resp = await r.heartbeat(cid, **fields)
        if resp.status_code == 200:
            self.beats[cid] = parse_iso(resp.json()["serverTime"])
        return resp

    def check_on_disk(self, db_path: Path) -> None:
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
        try:
            rows = dict(db.execute("SELECT client_id, last_heartbeat_at FROM clients"))
            names = dict(db.execute("SELECT client_id, name FROM clients"))
            gens = dict(db.execute("SELECT client_id, gen FROM token_generations"))
        finally:
            db.close()
        for cid, at in self.beats.items():
            if cid in self.removed:
                continue
            assert cid in rows, f"acknowledged heartbeat of {cid} is not on disk"
            assert rows[cid] is not None and rows[cid] >= at - 0.001, (cid, rows[cid], at)
        for cid, name in self.registered.items():
            assert names.get(cid) == name, f"acknowledged registration of {cid} is not on disk"
        for cid in self.removed:
            assert cid not in rows, f"acknowledged removal of {cid} is not on disk"
        for cid, gen in self.revoked.items():
            assert gens.get(cid, 0) >= gen, f"acknowledged revocation of {cid} is not on disk"


def _assert_503(resp: Any) -> None:
    assert resp.status_code == 503, resp.text
    body = resp.json()
    assert body["error"] == "storage_unavailable" and set(body) == {"error", "message", "details"}
    assert int(resp.headers["Retry-After"]) >= 1


async def _collect(ws: Ws, into: list[dict[str, Any]]) -> None:
    try:
        while True:
            into.append(await ws.recv())
    except ConnectionClosed:
        pass


async def _wait_for(into: list[dict[str, Any]], pred: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    while True:
        for m in into:
            if pred(m):
                return m
        await trio.sleep(0.02)


async def _reads_work(r: Running, client_id: str) -> None:
    """Everything that only reads answers as usual."""
    for path in ("/api/v1/clients", f"/api/v1/clients/{client_id}",
                 f"/api/v1/client/heartbeat/status/{client_id}", "/api/v1/health",
                 "/api/v1/websocket/health", "/metrics"):
        resp = await r.request("GET", path)
        assert resp.status_code == 200, (path, resp.text)
    resp = await r.request("GET", "/", role=None)
    assert resp.status_code == 200 and "text/html" in resp.headers["content-type"]
    # The history is read from SQLite: it works, or it says the storage is unavailable.
    resp = await r.request("GET", f"/api/v1/clients/{client_id}/events")
    assert resp.status_code in (200, 503), resp.text
    if resp.status_code == 503:
        _assert_503(resp)
    # A new dashboard can connect and subscribe.
    async with ws_connect(r.ws_url, token=r.token("viewer", "late-dashboard")) as ws:
        sub = await ws.subscribe("servers")
        assert sub["data"]["topic"] == "servers"
        servers = await ws.expect("SERVER_LIST")
        assert any(s["clientId"] == client_id for s in servers["data"]["servers"])


async def _writes_fail(r: Running, ledger: Ledger) -> None:
    """While storage is down, every kind of write is refused with 503 and Retry-After."""
    _assert_503(await ledger.beat(r, "new-during-outage", metadata=BIG_METADATA))
    _assert_503(await r.request("POST", "/api/v1/clients",
                                json={"clientId": "reg-during-outage", "name": "R"}))
    _assert_503(await r.request("DELETE", "/api/v1/clients/to-remove"))
    _assert_503(await r.request("DELETE", "/api/v1/clients/to-revoke/tokens"))
    resp = await r.request("POST", "/api/v1/client/heartbeats", role="service", json={
        "heartbeats": [{"clientId": "batch-during-outage", "metadata": BIG_METADATA}]})
    _assert_503(resp)


async def _before(r: Running, ledger: Ledger) -> None:
    for i in range(5):
        assert (await ledger.beat(r, f"steady-{i}", metadata=BIG_METADATA)).status_code == 200
    for cid in ("to-remove", "to-revoke", "doomed"):
        assert (await ledger.beat(r, cid)).status_code == 200
    resp = await r.request("POST", "/api/v1/clients", json={"clientId": "reg-1", "name": "Ω'; DROP"})
    assert resp.status_code == 201
    ledger.registered["reg-1"] = "Ω'; DROP"


async def test_disk_full_503_reads_keep_working_and_recovery_without_restart(
        nursery: trio.Nursery, tmpfs: Path) -> None:
    state = tmpfs / "state"
    with trio.fail_after(TIMEOUT_SECONDS):
        r = await start_daemon(nursery, _config(state))
        store = r.daemon.store
        assert store is not None
        ledger = Ledger()
        events: list[dict[str, Any]] = []
        async with ws_connect(r.ws_url, token=r.token("viewer", "dashboard")) as ws:
            await ws.subscribe("client_status")
            nursery.start_soon(_collect, ws, events)
            await _before(r, ledger)

            filler = await trio.to_thread.run_sync(_fill, tmpfs)
            # The WAL may still have room for a few pages: beat until the disk says no.
            for i in range(200):
                resp = await ledger.beat(r, f"filling-{i}", metadata=BIG_METADATA)
                if resp.status_code == 503:
                    break
                assert resp.status_code == 200, resp.text
            else:
                raise AssertionError("the full disk never refused a write")
            _assert_503(resp)
            failures_at_first_503 = store.commit_failures
            assert failures_at_first_503 >= 1 and store.failing_since is not None

            await _writes_fail(r, ledger)
            await _reads_work(r, "steady-0")
            # The 503'd heartbeat of a new client changed the registry: it was announced.
            await _wait_for(events, lambda m: m["type"] == "CLIENT_CONNECTED"
                            and m["data"]["clientId"] == "new-during-outage")

            # The sweeper keeps working: a silent client goes offline and it is announced.
            # (Keep the steady clients beating meanwhile; their beats are refused, 503.)
            with trio.fail_after(HEARTBEAT_TIMEOUT_SECONDS * 5):
                while True:
                    for i in range(5):
                        _assert_503(await ledger.beat(r, f"steady-{i}"))
                    doomed = (await r.request("GET", "/api/v1/clients/doomed")).json()
                    if doomed["status"] == "offline":
                        break
                    await trio.sleep(0.2)
            down = await _wait_for(events, lambda m: m["type"] == "CLIENT_DISCONNECTED"
                                   and m["data"]["clientId"] == "doomed")
            assert down["data"]["reason"] == "timeout"
            assert store.commit_failures > failures_at_first_503
            # The failures are retried, not piled up in the log: the first one is logged
            # and then at most one line per FAILURE_LOG_INTERVAL_SECONDS.

            # The disk has room again: rpad recovers by itself.
            await trio.to_thread.run_sync(filler.unlink)
            with trio.fail_after(10):
                while store.failing_since is not None:
                    await trio.sleep(0.05)
            for i in range(5):
                assert (await ledger.beat(r, f"steady-{i}", metadata=BIG_METADATA)).status_code == 200
            resp = await r.request("POST", "/api/v1/clients", json={"clientId": "reg-2", "name": "two"})
            assert resp.status_code in (200, 201)
            ledger.registered["reg-2"] = "two"
            resp = await r.request("DELETE", "/api/v1/clients/to-remove")
            # The 503'd removal was kept and has been committed since: the client is gone.
            assert resp.status_code == 404, resp.text
            ledger.removed.add("to-remove")
            resp = await r.request("DELETE", "/api/v1/clients/to-revoke/tokens")
            assert resp.status_code == 200
            ledger.revoked["to-revoke"] = resp.json()["generation"]
            assert ledger.revoked["to-revoke"] == 2  # the 503'd revocation counted too

        ledger.check_on_disk(state / "rpad.db")
        db = sqlite3.connect(f"file:{state / 'rpad.db'}?mode=ro", uri=True)
        try:
            stored = dict(db.execute("SELECT client_id, status FROM clients"))
            history = db.execute("SELECT status, reason FROM client_events WHERE client_id = ?"
                                 " ORDER BY id", ("doomed",)).fetchall()
        finally:
            db.close()
        # What was refused during the outage was kept in memory and stored once it could be.
        assert {"new-during-outage", "batch-during-outage", "reg-during-outage"} <= set(stored)
        assert stored["doomed"] == "offline"
        assert history == [("online", "heartbeat"), ("offline", "timeout")]
        await r.http.aclose()
        r.daemon.stop()


def _trigger_fs_error(mnt: Path) -> None:
    dev = Path(_run("findmnt", "-n", "-o", "SOURCE", str(mnt)).stdout.strip()).name
    knob = Path("/sys/fs/ext4") / dev / "trigger_fs_error"
    if not knob.exists():
        _cannot(f"{knob} does not exist (kernel without ext4 error injection)")
    knob.write_text("rpad storage failure test\n")


async def test_read_only_filesystem_503_reads_keep_working_and_nothing_acked_is_lost(
        nursery: trio.Nursery, ext4: tuple[Path, Path]) -> None:
    mnt, image = ext4
    state = mnt / "state"
    with trio.fail_after(TIMEOUT_SECONDS):
        done = trio.Event()

        async def run_daemon(task_status: trio.TaskStatus[Running]) -> None:
            async with trio.open_nursery() as inner:
                running = await start_daemon(inner, _config(state))
                task_status.started(running)
            done.set()

        r = await nursery.start(run_daemon)
        ledger = Ledger()
        events: list[dict[str, Any]] = []
        async with trio.open_nursery() as watchers, \
                ws_connect(r.ws_url, token=r.token("viewer", "dashboard")) as ws:
            await ws.subscribe("client_status")
            watchers.start_soon(_collect, ws, events)
            await _before(r, ledger)

            await trio.to_thread.run_sync(_trigger_fs_error, mnt)
            with pytest.raises(OSError):
                (mnt / "probe").write_text("x")  # the kernel made it read-only
            await _writes_fail(r, ledger)
            await _reads_work(r, "steady-0")
            with trio.fail_after(HEARTBEAT_TIMEOUT_SECONDS * 5):
                await _wait_for(events, lambda m: m["type"] == "CLIENT_DISCONNECTED"
                                and m["data"]["clientId"] == "doomed")
            assert (await r.request("GET", "/api/v1/clients/doomed")).json()["status"] == "offline"
            watchers.cancel_scope.cancel()
        # A clean stop even though the final commit cannot happen.
        await r.http.aclose()
        r.daemon.stop()
        await done.wait()

    # The storage is repaired the way an operator would: unmount, e2fsck, mount. Everything
    # acknowledged before the failure is there; nothing was acknowledged after it.
    _umount(mnt)
    fsck = _run("e2fsck", "-fy", str(image))
    assert fsck.returncode in (0, 1), fsck.stdout + fsck.stderr
    assert _run("mount", "-o", "loop", str(image), str(mnt)).returncode == 0
    ledger.check_on_disk(state / "rpad.db")
    with trio.fail_after(TIMEOUT_SECONDS):
        async with trio.open_nursery() as again:
            r2 = await start_daemon(again, _config(state))
            clients = (await r2.request("GET", "/api/v1/clients")).json()["clients"]
            ids = {c["clientId"] for c in clients}
            assert set(ledger.beats) <= ids and "reg-1" in ids
            assert (await r2.heartbeat("after-repair")).status_code == 200
            await r2.http.aclose()
            r2.daemon.stop()
