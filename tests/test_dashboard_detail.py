"""The dashboard's client page (#/clients/<id>) and the paged list at scale, in Debian's
chromium driven by Playwright against the real daemon.

``RPAD_UPDATE_SCREENSHOTS=1`` also writes the detail page's screenshots into ``docs/``.
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

from .test_alerts import daemon_running
from .test_dashboard_browser import (
    DOCS,
    GIB,
    TEST_TIMEOUT_SECONDS,
    call,
    expect,
    in_browser,
    open_dashboard,
    row,
)

pytestmark = pytest.mark.slow


async def test_a_clients_page_tells_its_story_and_moves_live(
        make_config: Callable[..., Config], tmp_path: Path) -> None:
    cfg = make_config(presence={"min_interval_seconds": 0})
    with trio.fail_after(TEST_TIMEOUT_SECONDS):
        async with daemon_running(cfg) as rpad:
            r = await rpad.request("POST", "/api/v1/clients", json={
                "clientId": "robot-9", "name": "Invoice robot 9", "tags": ["finance", "line-2"],
                "metadata": {"site": "Lyon", "owner": "ops-team"}})
            assert r.status_code == 201, r.text
            for cpu in (20.0, 40.0, 60.0):
                await rpad.heartbeat("robot-9", version="4.2.1", ipAddress="10.20.1.9",
                                     metrics={"cpuUsagePercent": cpu,
                                              "memoryUsageBytes": 3 * GIB,
                                              "memoryTotalBytes": 8 * GIB,
                                              "diskUsageBytes": 40 * GIB,
                                              "diskTotalBytes": 100 * GIB,
                                              "networkRxInstantBps": 1.5e6,
                                              "networkTxInstantBps": 2e5,
                                              "load1": 1.2, "load5": 0.9, "load15": 0.7})
            await rpad.heartbeat("robot-9", status="offline", ipAddress="10.20.1.9")
            await rpad.heartbeat("other")

            def scenario(page: Any) -> None:
                open_dashboard(page, rpad)
                row(page, "robot-9").locator(".client-name").click()
                assert page.url.endswith("#/clients/robot-9")
                detail = page.locator("#detail")
                expect(detail).to_be_visible()
                expect(page.locator(".panel")).to_be_hidden()
                expect(detail.locator(".detail-title")).to_have_text("Invoice robot 9")
                status = detail.locator(".detail-status")
                expect(status).to_have_attribute("data-status", "offline")
                expect(status).to_contain_text("Offline since")
                # Availability: three windows, all online time so far.
                expect(detail.locator(".uptime")).to_have_count(3)
                expect(detail.locator('.uptime[data-window="24h"] .uptime-value')).to_have_text(
                    re.compile(r"^\d+(\.\d+)?%$"))
                # The timeline: online, then offline; the events with their reasons.
                expect(detail.locator('.segment[data-state="online"]')).not_to_have_count(0)
                expect(detail.locator('.segment[data-state="offline"]')).not_to_have_count(0)
                expect(detail.locator('.event[data-status="offline"] .event-reason')).to_have_text(
                    "agent_shutdown")
                # Who it is.
                facts = detail.locator(".facts")
                for text in ("finance, line-2", "Lyon", "ops-team", "4.2.1", "10.20.1.9"):
                    expect(facts).to_contain_text(text)
                # Charts drawn by the page (SVG), from the history.
                for chart in ("cpu", "memory", "disk", "network", "load"):
                    fig = detail.locator(f'.chart[data-chart="{chart}"]')
                    expect(fig.locator("path.line-0")).to_have_count(1)
                expect(detail.locator('.chart[data-chart="memory"] .chart-legend')).to_contain_text(
                    "used 38%")
                # Live: it comes back with a new heartbeat; the page follows without reload.
                call(rpad.heartbeat, "robot-9", metrics={"cpuUsagePercent": 90.0},
                     ipAddress="10.20.1.9")
                expect(status).to_have_attribute("data-status", "online")
                expect(status).to_contain_text("Online since")
                expect(detail.locator('.chart[data-chart="cpu"] .chart-legend')).not_to_contain_text(
                    "CPU 60%")
                expect(detail.locator('.event[data-status="online"]')).not_to_have_count(0)
                # Other ranges come from other tiers of the history.
                for rng in ("24h", "7d", "30d", "1h"):
                    detail.locator(f'[data-range="{rng}"]').click()
                    expect(detail.locator(f'[data-range="{rng}"]')).to_have_attribute(
                        "aria-pressed", "true")
                    expect(detail.locator('.chart[data-chart="cpu"] path.line-0')).to_have_count(1)
                    expect(detail.locator(".timeline-legend")).to_contain_text(f"last {rng}")
                page.wait_for_timeout(300)
                page.screenshot(path=str(tmp_path / "dashboard-detail.png"), full_page=True)
                # Back to the list.
                detail.locator(".detail-back").click()
                expect(page.locator(".panel")).to_be_visible()
                expect(detail).to_be_hidden()
                # A deep link opens the page directly; an unknown id says so.
                page.goto(f"{rpad.http_url}/#/clients/ghost")
                expect(page.locator("#detail .detail-status")).to_contain_text("No client")

            await in_browser(scenario, viewport={"width": 1280, "height": 1400})
            assert (tmp_path / "dashboard-detail.png").read_bytes()[:4] == b"\x89PNG"
            if os.environ.get("RPAD_UPDATE_SCREENSHOTS") == "1":
                DOCS.mkdir(exist_ok=True)
                shutil.copyfile(tmp_path / "dashboard-detail.png", DOCS / "dashboard-detail.png")


async def test_the_list_pages_through_the_fleet(make_config: Callable[..., Config]) -> None:
    with trio.fail_after(TEST_TIMEOUT_SECONDS):
        async with daemon_running(make_config(presence={"min_interval_seconds": 0})) as rpad:
            beats = [{"clientId": f"node-{i:03d}", "metrics": {"cpuUsagePercent": float(i % 100)}}
                     for i in range(120)]
            r = await rpad.request("POST", "/api/v1/client/heartbeats", json={"heartbeats": beats},
                                   role="service")
            assert r.json()["accepted"] == 120

            def scenario(page: Any) -> None:
                open_dashboard(page, rpad)
                rows = page.locator("tbody tr")
                expect(rows).to_have_count(50)
                expect(page.locator("#pager")).to_be_visible()
                expect(page.locator("#page-info")).to_have_text("1–50 of 120")
                expect(page.locator("#page-prev")).to_be_disabled()
                expect(rows.first).to_have_attribute("data-client-id", "node-000")
                page.click("#page-next")
                expect(page.locator("#page-info")).to_have_text("51–100 of 120")
                expect(rows.first).to_have_attribute("data-client-id", "node-050")
                page.click("#page-next")
                expect(rows).to_have_count(20)
                expect(page.locator("#page-next")).to_be_disabled()
                expect(page.locator("#shown-count")).to_have_text(
                    "Showing 101–120 of 120 matching · 120 clients")
                # Sorting is the server's, over the whole fleet: back to the first page.
                page.click('th [data-sort="cpu"]')
                expect(page.locator("#page-info")).to_have_text("1–50 of 120")
                expect(rows.first.locator(".cell-cpu .meter-value")).to_have_text("99%")
                # A search narrows the fleet; the count is the fleet's.
                page.fill("#search", "node-11")
                expect(rows).to_have_count(10)
                expect(page.locator("#pager")).to_be_hidden()
                expect(page.locator("#count-all")).to_have_text("120")
                # A client that changes on the page is updated in place.
                call(rpad.heartbeat, "node-110", metrics={"cpuUsagePercent": 1.0}, status="busy")
                expect(row(page, "node-110").locator(".cell-reported")).to_contain_text("busy")

            await in_browser(scenario)
