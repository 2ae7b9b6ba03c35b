"""The console panel and the Tasks view in a real browser (Debian's chromium through
Playwright), against the real daemon and real agent processes.

``RPAD_UPDATE_SCREENSHOTS=1`` also writes docs/console.png and docs/tasks.png.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from rpad.config import Config

from .console_helpers import RUN_AS, StartAgent, agents, commands_on, wait_view
from .test_alerts import daemon_running
from .test_dashboard_browser import DOCS, call, expect, in_browser, open_dashboard, row

__all__ = ["agents"]

pytestmark = pytest.mark.slow

TEST_TIMEOUT_SECONDS = 120


def open_console(page: Any, client_id: str) -> Any:
    row(page, client_id).locator(".console-open").click()
    drawer = page.locator("#console")
    expect(drawer).to_be_visible()
    return page.locator(".console-session:visible")


def run_line(page: Any, session: Any, command: str) -> None:
    """Type a command and wait until the agent has started it (its line is shown)."""
    started = session.locator(".out-cmd").count()
    session.locator(".console-input").fill(command)
    session.locator(".console-input").press("Enter")
    expect(session.locator(".out-cmd")).to_have_count(started + 1)


async def test_console_panel(make_config: Callable[..., Config], agents: StartAgent,
                             tmp_path: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT_SECONDS):
        async with daemon_running(make_config()) as rpad:
            h1 = await agents(rpad, "build-01", "--allow-commands", *RUN_AS, interval=1)
            await agents(rpad, "kiosk-17", "--control-channel", interval=1)
            await agents(rpad, "legacy-02", interval=1)
            await wait_view(rpad, "build-01", commands_on)
            await wait_view(rpad, "kiosk-17", lambda v: v["capabilities"] is not None)
            await wait_view(rpad, "legacy-02", lambda v: v["status"] == "online")

            def scenario(page: Any) -> None:
                open_dashboard(page, rpad, rpad.token("admin", "ops"))
                expect(row(page, "build-01").locator(".console-open")).to_have_attribute(
                    "data-state", "ready")
                expect(row(page, "kiosk-17").locator(".console-open")).to_have_attribute(
                    "data-state", "disabled")
                expect(row(page, "legacy-02").locator(".console-open")).to_have_attribute(
                    "data-state", "none")

                s = open_console(page, "build-01")
                expect(s.locator(".console-status-text")).to_have_text("Connected to build-01")
                run_line(page, s, "echo hello; echo oops >&2")
                out = s.locator(".console-output")
                expect(out).to_contain_text("[success · exit 0")
                expect(out.locator(".out-cmd")).to_have_text("$ echo hello; echo oops >&2\n")
                expect(out.locator(".out-stdout")).to_have_text("hello\n")
                expect(out.locator(".out-stderr")).to_have_text("oops\n")
                # More than one credit window: it only completes if the page acknowledges.
                run_line(page, s, "seq 1 30000")
                expect(out).to_contain_text("29999\n30000\n")
                expect(out.locator(".out-ok")).to_have_count(2)
                # Markup in the output is text, never HTML.
                run_line(page, s, "echo '<img src=x onerror=alert(1)>'")
                expect(out).to_contain_text("<img src=x onerror=alert(1)>")
                assert s.locator(".console-output img").count() == 0
                # Cancel a long one.
                run_line(page, s, "sleep 30")
                expect(s.locator(".console-cancel")).to_be_enabled()
                s.locator(".console-cancel").click()
                expect(out).to_contain_text("[cancelled")
                s.locator(".console-history summary").click()
                expect(s.locator(".console-history-item")).to_have_count(4)
                # The input recalls earlier commands.
                s.locator(".console-input").press("ArrowUp")
                expect(s.locator(".console-input")).to_have_value("sleep 30")
                s.locator(".console-input").fill("")
                run_line(page, s, "uname -s; id -un")
                expect(out.locator(".out-ok")).to_have_count(4)
                page.screenshot(path=str(tmp_path / "console.png"))

                # A second session, to a host whose owner refuses commands: a clear state.
                k = open_console(page, "kiosk-17")
                expect(page.locator(".console-tab")).to_have_count(2)
                expect(k.locator(".console-status-text")).to_contain_text(
                    "Commands are disabled on this host")
                expect(k.locator(".console-input")).to_be_disabled()
                k2 = open_console(page, "legacy-02")
                expect(k2.locator(".console-status-text")).to_contain_text(
                    "keeps no control channel")

                # The agent dies in the middle of a command: said so at once.
                page.locator(".console-tab", has_text="build-01").click()
                run_line(page, s, "sleep 30")
                expect(s.locator(".console-cancel")).to_be_enabled()
                trio.from_thread.run_sync(h1.kill)
                expect(out).to_contain_text("control channel was lost")
                expect(s.locator(".console-status-text")).to_contain_text(
                    re.compile("offline|keeps no control channel"))
                expect(row(page, "build-01").locator(".console-open")).not_to_have_attribute(
                    "data-state", "ready")

            await in_browser(scenario, viewport={"width": 1280, "height": 760})
            if os.environ.get("RPAD_UPDATE_SCREENSHOTS") == "1":
                shutil.copyfile(tmp_path / "console.png", DOCS / "console.png")


async def test_tasks_view(make_config: Callable[..., Config], agents: StartAgent,
                          tmp_path: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT_SECONDS):
        async with daemon_running(make_config()) as rpad:
            fleet = [f"lab-{i:02d}" for i in range(1, 7)]
            async with trio.open_nursery() as n:
                for cid in fleet:
                    n.start_soon(agents, rpad, cid, "--allow-commands", *RUN_AS)
            for cid in fleet:
                await wait_view(rpad, cid, commands_on)
                r = await rpad.request("POST", "/api/v1/clients",
                                       json={"clientId": cid, "tags": ["lab"]})
                assert r.status_code == 200
            r = await rpad.request("POST", "/api/v1/clients",
                                   json={"clientId": "lab-07", "tags": ["lab"]})
            assert r.status_code == 201  # registered, never heard from: fails at once
            # A task another system runs, reported through /api/v1/publish.
            r = await rpad.request("POST", "/api/v1/publish", role="service", json={
                "topic": "task.nightly-backup", "type": "TASK_UPDATE",
                "data": {"taskId": "nightly-backup", "status": "running", "progress": 35,
                         "currentDevice": "db-3", "totalDevices": 20, "completedDevices": 7}})
            assert r.status_code == 200

            def scenario(page: Any) -> None:
                open_dashboard(page, rpad, rpad.token("admin", "ops"))
                page.locator(".tasks-toggle").click()
                view = page.locator("#tasks-view")
                expect(view).to_be_visible()
                expect(page.locator("#clients")).to_be_hidden()
                external = view.locator('.task[data-task-id="nightly-backup"]')
                expect(external.locator(".task-counts")).to_contain_text("35% · 7/20 ok")
                expect(view.locator(".tasks-form")).to_be_visible()
                view.locator('input[name="command"]').fill("uptime -p || uptime")
                view.locator('input[name="target"]').fill("lab")
                view.locator('input[type="number"]').first.fill("3")
                view.locator(".tasks-form button[type=submit]").click()
                mine = view.locator(".task", has_text="uptime -p || uptime")
                expect(mine).to_have_attribute("data-status", "failed")
                expect(mine.locator(".task-counts")).to_have_text("100% · 6/7 ok · 1 failed")
                expect(mine.locator(".task-track")).to_have_attribute("aria-valuenow", "100")
                mine.locator(".task-line").click()
                rows = mine.locator(".task-table tr[data-status]")
                expect(rows).to_have_count(7)
                expect(mine.locator('.task-table tr[data-status="success"]')).to_have_count(6)
                expect(mine.locator('.task-table tr[data-status="failed"]')).to_contain_text(
                    "client_offline")
                # Live: the other system reports progress while the page is open.
                call(rpad.request, "POST", "/api/v1/publish", role="service", json={
                    "topic": "task.nightly-backup", "type": "TASK_UPDATE",
                    "data": {"taskId": "nightly-backup", "status": "running", "progress": 60,
                             "currentDevice": "db-9", "totalDevices": 20,
                             "completedDevices": 12}})
                expect(external.locator(".task-counts")).to_contain_text("60% · 12/20 ok")
                page.screenshot(path=str(tmp_path / "tasks.png"))

            await in_browser(scenario, viewport={"width": 1280, "height": 760})

            def viewer(page: Any) -> None:
                open_dashboard(page, rpad, rpad.token("viewer", "guest"))
                expect(row(page, "lab-01").locator(".console-open")).to_be_hidden()
                page.locator(".tasks-toggle").click()
                expect(page.locator(".tasks-form")).to_be_hidden()
                expect(page.locator(".tasks-note")).to_contain_text("Cannot list tasks")

            await in_browser(viewer)
            if os.environ.get("RPAD_UPDATE_SCREENSHOTS") == "1":
                shutil.copyfile(tmp_path / "tasks.png", DOCS / "tasks.png")
