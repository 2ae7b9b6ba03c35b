"""The dashboard in a real browser: Debian's chromium driven by Playwright, against the real
daemon (HTTP API and WebSocket hub) on loopback.

Playwright's sync API runs in one worker thread per test (``in_browser``); the scenario calls
back into Trio with ``trio.from_thread.run`` to send heartbeats or stop and start the daemon.
Every wait is a condition polled by Playwright (``expect``) with a timeout, never a fixed sleep.
The "goes silent" scenario uses a 2 s heartbeat timeout in real time: a browser cannot run on
Trio's fake clock (the sweeper's timing is tested exactly on the fake clock elsewhere).

``RPAD_UPDATE_SCREENSHOTS=1`` also writes the screenshots into ``docs/``.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import trio

from rpad.config import Config
from rpad.core.times import iso

from .conftest import Running, need_tool, tool_fixture
from .test_alerts import daemon_running
from .test_watch import Restartable, fixed_ports_config

playwright_sync = pytest.importorskip("playwright.sync_api")
expect = playwright_sync.expect

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
WAIT_MS = 15_000
TEST_TIMEOUT_SECONDS = 90
DOCS = Path(__file__).resolve().parent.parent / "docs"
GIB = 1024 ** 3

# Every test here drives chromium: skipped (with the reason) without it, failed in CI.
_chromium = tool_fixture("chromium", autouse=True)

pytestmark = pytest.mark.slow


def _run_page(chromium: str, scenario: Callable[[Any], None], viewport: dict[str, int],
              color_scheme: str) -> None:
    with playwright_sync.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport=viewport, color_scheme=color_scheme,
                                          device_scale_factor=1)
            page = context.new_page()
            page.set_default_timeout(WAIT_MS)
            expect.set_options(timeout=WAIT_MS)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            scenario(page)
            assert errors == [], f"JavaScript errors on the page: {errors}"
        finally:
            browser.close()


async def in_browser(scenario: Callable[[Any], None], *,
                     viewport: dict[str, int] | None = None,
                     color_scheme: str = "light") -> None:
    """Run ``scenario(page)`` in a fresh chromium, in a worker thread."""
    chromium = need_tool("chromium")
    await trio.to_thread.run_sync(functools.partial(
        _run_page, chromium, scenario, viewport or {"width": 1280, "height": 800}, color_scheme))


def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """From the browser thread: run an async function in the test's Trio run."""
    return trio.from_thread.run(functools.partial(fn, *args, **kwargs))


def row(page: Any, client_id: str) -> Any:
    return page.locator(f'tr[data-client-id="{client_id}"]')


def open_dashboard(page: Any, rpad: Running, token: str | None = None) -> None:
    page.goto(f"{rpad.http_url}/?token={token or rpad.token('viewer', 'ops')}")
    expect(page.locator("#conn")).to_have_attribute("data-state", "connected")


# -- scenarios -----------------------------------------------------------------------------------


async def test_page_lists_clients_and_updates_live(make_config: Callable[..., Config]) -> None:
    with trio.fail_after(TEST_TIMEOUT_SECONDS):
        async with daemon_running(make_config(presence={"min_interval_seconds": 0})) as rpad:
            await rpad.heartbeat("alpha", name="Alpha robot", version="1.0.0",
                                 ipAddress="10.1.0.1", status="idle",
                                 metrics={"cpuUsagePercent": 42.0,
                                          "memoryUsageBytes": 2 * GIB,
                                          "memoryTotalBytes": 8 * GIB})
            await rpad.heartbeat("beta", version="2.0.0", ipAddress="10.1.0.2")

            def scenario(page: Any) -> None:
                open_dashboard(page, rpad)
                # The token moved from the URL into sessionStorage.
                assert "token=" not in page.url
                assert page.evaluate("sessionStorage.getItem('rpad.token')")
                expect(page.locator("tbody tr")).to_have_count(2)
                alpha = row(page, "alpha")
                expect(alpha).to_have_attribute("data-status", "online")
                expect(alpha.locator(".client-name")).to_have_text("Alpha robot")
                expect(alpha.locator(".cell-reported")).to_contain_text("idle")
                expect(alpha.locator(".cell-version")).to_contain_text("1.0.0")
                expect(alpha.locator(".cell-ip")).to_contain_text("10.1.0.1")
                expect(alpha.locator(".cell-cpu .meter-value")).to_have_text("42%")
                expect(alpha.locator(".cell-mem .meter-value")).to_have_text("25%")
                expect(alpha.locator(".cell-mem .meter-detail")).to_have_text("2.0 GiB / 8.0 GiB")
                expect(alpha.locator(".ago")).to_have_text(re.compile(r"^\d+ s ago$"))
                expect(page.locator("#count-all")).to_have_text("2")
                expect(page.locator("#count-online")).to_have_text("2")

                # "last heartbeat N s ago" ticks without any message from the server.
                first = alpha.locator(".ago").inner_text()
                expect(alpha.locator(".ago")).not_to_have_text(first)

                # A heartbeat from a new client: a new row, without reloading.
                call(rpad.heartbeat, "gamma", name="Gamma", version="0.9", status="busy")
                expect(row(page, "gamma")).to_have_attribute("data-status", "online")
                expect(row(page, "gamma").locator(".cell-reported")).to_contain_text("busy")
                expect(page.locator("#count-all")).to_have_text("3")

                # A heartbeat that changes a row: updated in place and highlighted.
                call(rpad.heartbeat, "alpha", status="busy", version="1.1.0",
                     metrics={"cpuUsagePercent": 91.0})
                expect(alpha.locator(".cell-version")).to_contain_text("1.1.0")
                expect(alpha.locator(".cell-reported")).to_contain_text("busy")
                expect(alpha.locator(".cell-cpu .meter-value")).to_have_text("91%")
                expect(alpha.locator(".meter-bar").first).to_have_attribute("data-level", "high")
                expect(alpha).to_have_class(re.compile(r"\bflash\b"))

                # An agent shutting down: offline at once, with rpad's notification as a toast.
                call(rpad.heartbeat, "beta", status="offline")
                expect(row(page, "beta")).to_have_attribute("data-status", "offline")
                expect(row(page, "beta").locator(".pill")).to_have_text("Offline")
                expect(page.locator("#count-offline")).to_have_text("1")
                toast = page.locator(".toast", has_text="beta went offline")
                expect(toast).to_be_visible()
                expect(toast).to_have_attribute("data-level", "warning")
                assert page.title() == "(1 offline) rpad · fleet"

                # Removal by an admin takes the row away.
                call(rpad.request, "DELETE", "/api/v1/clients/gamma")
                expect(row(page, "gamma")).to_have_count(0)

            await in_browser(scenario)


async def test_silent_client_turns_offline(make_config: Callable[..., Config]) -> None:
    # Every alert as a toast at once: "steady" too may time out while the page opens, and
    # the alert policy's grouping (3 messages a minute by default) would hold the fourth back.
    cfg = make_config(presence={"heartbeat_timeout_seconds": 3, "check_interval_seconds": 0.5,
                                "min_interval_seconds": 0},
                      alerts={"policy": {"group_threshold": 0}})
    with trio.fail_after(TEST_TIMEOUT_SECONDS):
        async with daemon_running(cfg) as rpad:
            await rpad.heartbeat("steady")

            def scenario(page: Any) -> None:
                open_dashboard(page, rpad)
                call(rpad.heartbeat, "quiet")
                expect(row(page, "quiet")).to_have_attribute("data-status", "online")
                # "steady" keeps beating; "quiet" says nothing and times out after 3 s.
                for _ in range(300):
                    call(rpad.heartbeat, "steady")
                    if row(page, "quiet").get_attribute("data-status") == "offline":
                        break
                    page.wait_for_timeout(200)  # the pace of steady's heartbeats
                expect(row(page, "quiet")).to_have_attribute("data-status", "offline")
                expect(row(page, "quiet").locator(".pill")).to_have_text("Offline")
                expect(row(page, "steady")).to_have_attribute("data-status", "online")
                expect(page.locator(".toast", has_text="quiet went offline")).to_be_visible()
                expect(page.locator("#count-offline")).to_have_text("1")
                # It comes back with its next heartbeat.
                call(rpad.heartbeat, "quiet")
                expect(row(page, "quiet")).to_have_attribute("data-status", "online")
                expect(page.locator(".toast", has_text="quiet is online again")).to_be_visible()

            await in_browser(scenario)


async def test_silenced_clients_show_until_when(make_config: Callable[..., Config]) -> None:
    cfg = make_config(presence={"min_interval_seconds": 0})
    with trio.fail_after(TEST_TIMEOUT_SECONDS):
        async with daemon_running(cfg) as rpad:
            await rpad.request("POST", "/api/v1/clients", json={"clientId": "press-1",
                                                                "tags": ["line-2"]})
            await rpad.heartbeat("press-1")
            await rpad.heartbeat("press-2")

            def scenario(page: Any) -> None:
                open_dashboard(page, rpad)
                expect(page.locator("tbody tr")).to_have_count(2)
                expect(page.locator(".silence-banner")).to_be_hidden()
                resp = call(rpad.request, "POST", "/api/v1/silences", json={
                    "match": {"tags": ["line-2"]}, "comment": "die change",
                    "endsAt": iso(rpad.daemon.wall_clock() + 2 * 3600)})
                assert resp.status_code == 201
                # rpad's notification of the new silence: the page shows who is silenced.
                expect(page.locator(".toast", has_text="tag line-2 until")).to_be_visible()
                call(rpad.heartbeat, "press-1", status="offline")
                badge = row(page, "press-1").locator(".silenced")
                expect(badge).to_have_text(re.compile(r"^Silenced until \d\d?:\d\d( [AP]M)?$"))
                expect(badge).to_have_attribute("title", re.compile(r"^die change \(tester\)"))
                expect(row(page, "press-2").locator(".silenced")).to_have_count(0)
                banner = page.locator(".silence-banner")
                expect(banner).to_be_visible()
                expect(banner).to_contain_text("tag line-2 until")
                expect(banner).to_contain_text("die change")
                # No offline toast: the alert waits for the end of the silence.
                expect(row(page, "press-1")).to_have_attribute("data-status", "offline")
                page.wait_for_timeout(300)
                expect(page.locator(".toast", has_text="went offline")).to_have_count(0)

            await in_browser(scenario)


async def test_search_and_filter_narrow_the_table(make_config: Callable[..., Config]) -> None:
    with trio.fail_after(TEST_TIMEOUT_SECONDS):
        async with daemon_running(make_config(presence={"min_interval_seconds": 0})) as rpad:
            for cid, ip in (("web-1", "10.0.0.1"), ("web-2", "10.0.0.2"), ("db-1", "10.0.9.1"),
                            ("db-2", "10.0.9.2")):
                await rpad.heartbeat(cid, ipAddress=ip, version="3.0")
            await rpad.heartbeat("web-2", status="offline", ipAddress="10.0.0.2")
            await rpad.heartbeat("db-2", status="offline", ipAddress="10.0.9.2")

            def scenario(page: Any) -> None:
                open_dashboard(page, rpad)
                rows = page.locator("tbody tr")
                expect(rows).to_have_count(4)
                expect(page.locator("#filter-count-online")).to_have_text("2")
                expect(page.locator("#filter-count-offline")).to_have_text("2")

                page.click('[data-filter="offline"]')
                expect(rows).to_have_count(2)
                assert set(rows.evaluate_all("rs => rs.map(r => r.dataset.clientId)")) == {
                    "web-2", "db-2"}
                page.click('[data-filter="online"]')
                expect(rows).to_have_count(2)
                for cid in ("web-1", "db-1"):
                    expect(row(page, cid)).to_have_count(1)

                page.click('[data-filter="all"]')
                page.fill("#search", "web")
                expect(rows).to_have_count(2)
                page.fill("#search", "10.0.9.")  # by IP
                expect(rows).to_have_count(2)
                page.click('[data-filter="offline"]')
                expect(rows).to_have_count(1)
                expect(row(page, "db-2")).to_have_count(1)
                expect(page.locator("#shown-count")).to_have_text("Showing 1 of 4 clients")
                page.fill("#search", "nothing-like-this")
                expect(rows).to_have_count(0)
                expect(page.locator("#empty-title")).to_have_text("No clients match")
                # A client that comes online while filtered out of "offline" leaves the view.
                page.fill("#search", "")
                expect(rows).to_have_count(2)
                call(rpad.heartbeat, "db-2", ipAddress="10.0.9.2")
                expect(rows).to_have_count(1)
                expect(row(page, "web-2")).to_have_count(1)

            await in_browser(scenario)


async def test_daemon_restart_reconnects_with_current_data(
        make_config: Callable[..., Config]) -> None:
    cfg = fixed_ports_config(make_config, presence={"min_interval_seconds": 0})
    with trio.fail_after(TEST_TIMEOUT_SECONDS):
        async with trio.open_nursery() as nursery:
            node = Restartable(nursery, cfg)
            rpad = await node.start()
            await rpad.heartbeat("before", version="1")
            token = rpad.token("viewer", "ops")

            def scenario(page: Any) -> None:
                open_dashboard(page, rpad, token)
                expect(row(page, "before")).to_have_count(1)
                call(node.stop)
                expect(page.locator("#conn")).to_have_attribute("data-state", "reconnecting")
                expect(page.locator("#conn-text")).to_contain_text("Reconnecting")
                # The old rows stay visible (dimmed) while the connection is down.
                expect(page.locator("body")).to_have_class(re.compile(r"\bstale\b"))
                expect(row(page, "before")).to_have_count(1)
                fresh = call(node.start)
                call(fresh.heartbeat, "after", version="2")
                expect(page.locator("#conn")).to_have_attribute("data-state", "connected",
                                                                timeout=45_000)
                expect(row(page, "after")).to_have_count(1)
                expect(row(page, "after").locator(".cell-version")).to_contain_text("2")
                expect(row(page, "before")).to_have_count(1)  # persisted across the restart
                expect(page.locator("body")).not_to_have_class(re.compile(r"\bstale\b"))
                expect(page.locator(".toast", has_text="rpad restarted")).to_be_visible()
                # Live again: a heartbeat after the restart shows up without reload.
                call(fresh.heartbeat, "after", version="3")
                expect(row(page, "after").locator(".cell-version")).to_contain_text("3")

            await in_browser(scenario)
            await node.stop()


async def test_gives_up_after_max_attempts_then_retry_reconnects(
        make_config: Callable[..., Config]) -> None:
    cfg = fixed_ports_config(make_config)
    with trio.fail_after(TEST_TIMEOUT_SECONDS):
        async with trio.open_nursery() as nursery:
            node = Restartable(nursery, cfg)
            rpad = await node.start()
            await rpad.heartbeat("survivor")
            token = rpad.token("viewer", "ops")

            def scenario(page: Any) -> None:
                # No jitter (Math.random() = 0) and the page's timers on a fake clock, so the
                # backoff can be checked exactly without waiting minutes.
                page.add_init_script("Math.random = () => 0;")
                page.clock.install()
                open_dashboard(page, rpad, token)
                expect(row(page, "survivor")).to_have_count(1)
                now_ms = page.evaluate("Date.now()")
                page.clock.pause_at(datetime.fromtimestamp(now_ms / 1000 + 1, UTC))
                call(node.stop)
                conn, text = page.locator("#conn"), page.locator("#conn-text")
                for attempt, delay in enumerate([1, 2, 4, 8, 16, 30, 30, 30, 30], start=1):
                    expect(text).to_have_text(f"Reconnecting in {delay} s")
                    expect(conn).to_have_attribute(
                        "title", re.compile(rf"attempt {attempt} of 10$"))
                    page.clock.run_for(delay * 1000)
                expect(conn).to_have_attribute("data-state", "failed")
                expect(text).to_have_text("Disconnected")
                retry = page.locator("#retry")
                expect(retry).to_be_visible()
                call(node.start)
                page.clock.resume()
                retry.click()
                expect(conn).to_have_attribute("data-state", "connected")
                expect(retry).to_be_hidden()
                expect(row(page, "survivor")).to_have_count(1)

            await in_browser(scenario)
            await node.stop()


async def test_wrong_token_shows_a_clear_message(make_config: Callable[..., Config]) -> None:
    with trio.fail_after(TEST_TIMEOUT_SECONDS):
        async with daemon_running(make_config()) as rpad:
            await rpad.heartbeat("visible-after-login")

            def scenario(page: Any) -> None:
                page.goto(f"{rpad.http_url}/?token=not-a-real-token")
                dialog = page.locator("#token-dialog")
                expect(dialog).to_be_visible()
                expect(page.locator("#token-error")).to_contain_text(
                    "The server refused this token")
                expect(page.locator("#conn")).to_have_attribute("data-state", "failed")
                expect(page.locator("#conn-text")).to_have_text("Token refused")
                assert page.evaluate("sessionStorage.getItem('rpad.token')") is None
                # A good token typed into the dialog connects.
                page.fill("#token-input", rpad.token("viewer", "ops"))
                page.click("#token-form button[type=submit]")
                expect(dialog).to_be_hidden()
                expect(page.locator("#conn")).to_have_attribute("data-state", "connected")
                expect(row(page, "visible-after-login")).to_have_count(1)
                # And it survives a reload (sessionStorage), without ?token=.
                page.reload()
                expect(page.locator("#conn")).to_have_attribute("data-state", "connected")
                expect(dialog).to_be_hidden()

            await in_browser(scenario)


async def test_page_without_token_asks_for_one(make_config: Callable[..., Config]) -> None:
    with trio.fail_after(TEST_TIMEOUT_SECONDS):
        async with daemon_running(make_config()) as rpad:

            def scenario(page: Any) -> None:
                page.goto(f"{rpad.http_url}/")
                expect(page.locator("#token-dialog")).to_be_visible()
                expect(page.locator("#token-error")).to_be_hidden()
                expect(page.locator(".dialog-code")).to_have_text(
                    "rpad token --role viewer --sub you")
                # An agent token may not watch the fleet: refused with the hub's reason.
                page.fill("#token-input", rpad.token("agent", "robot"))
                page.click("#token-form button[type=submit]")
                expect(page.locator("#token-error")).to_contain_text("agent tokens")

            await in_browser(scenario)


async def test_an_empty_fleet_says_how_to_add_a_client(make_config: Callable[..., Config]) -> None:
    with trio.fail_after(TEST_TIMEOUT_SECONDS):
        async with daemon_running(make_config()) as rpad:

            def scenario(page: Any) -> None:
                open_dashboard(page, rpad)
                expect(page.locator("#empty-title")).to_have_text("No clients yet")
                expect(page.locator("#empty-text code")).to_have_text(
                    f"rpad agent --url {rpad.http_url} --client-id $(hostname) "
                    "--token-file agent.token")
                call(rpad.heartbeat, "first-host")
                expect(page.locator("tbody tr")).to_have_count(1)
                expect(page.locator("#empty")).to_be_hidden()

            await in_browser(scenario)


async def test_client_module_backoff_matches_python(make_config: Callable[..., Config]) -> None:
    from rpad.client.backoff import backoff_delay

    cases = [(n, r) for n in range(8) for r in (0.0, 0.5, 0.999)]
    with trio.fail_after(TEST_TIMEOUT_SECONDS):
        async with daemon_running(make_config()) as rpad:

            def scenario(page: Any) -> None:
                page.goto(f"{rpad.http_url}/")
                got = page.evaluate(
                    """async (cases) => {
                        const m = await import("/static/rpad-client.js");
                        return cases.map(([n, r]) => m.backoffDelay(n, {}, r));
                    }""", cases)
                # The same formula as rpad.retry: 1 s doubling to 30 s, jitter up to 20 %.
                assert got == pytest.approx(
                    [backoff_delay(n, jitter=0.2, r=r) * 1000 for n, r in cases], abs=1e-9)
                assert got[0] == 1000 and got[-3] == 30000

            await in_browser(scenario)


async def test_screenshots(make_config: Callable[..., Config], tmp_path: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT_SECONDS):
        async with daemon_running(make_config(presence={"min_interval_seconds": 0})) as rpad:
            await populate_fleet(rpad)
            shots = {"dashboard.png": ({"width": 1280, "height": 760}, "light"),
                     "dashboard-dark.png": ({"width": 1280, "height": 760}, "dark"),
                     "dashboard-phone.png": ({"width": 390, "height": 844}, "light")}
            for name, (viewport, scheme) in shots.items():

                def scenario(page: Any, name: str = name) -> None:
                    open_dashboard(page, rpad)
                    expect(page.locator("tbody tr")).to_have_count(9)
                    if name == "dashboard.png":
                        # One live change while the page is open: a row flashes, a toast.
                        call(rpad.heartbeat, "scanner-02", status="offline",
                             ipAddress="192.168.9.2")
                        expect(page.locator(".toast")).to_have_count(1)
                    page.wait_for_function("() => !document.querySelector('.flash')")
                    page.screenshot(path=str(tmp_path / name))

                await in_browser(scenario, viewport=viewport, color_scheme=scheme)
                data = (tmp_path / name).read_bytes()
                assert data[:8] == b"\x89PNG\r\n\x1a\n"
                if os.environ.get("RPAD_UPDATE_SCREENSHOTS") == "1":
                    DOCS.mkdir(exist_ok=True)
                    shutil.copyfile(tmp_path / name, DOCS / name)


async def populate_fleet(rpad: Running) -> None:
    """A small fleet for the screenshots: names, versions, addresses and metrics."""
    fleet = [
        # id, name, version, IP, reported status, CPU %, memory GiB used/total, load1
        ("rpa-inv-01", "Invoice robot 1", "4.2.1", "10.20.1.11", "busy", 63.0, (5.1, 8), 1.42),
        ("rpa-inv-02", "Invoice robot 2", "4.2.1", "10.20.1.12", "idle", 7.5, (2.3, 8), 0.12),
        ("rpa-hr-01", "HR onboarding", "4.1.0", "10.20.2.21", "online", 21.0, (3.4, 8), 0.55),
        ("edge-gw-berlin", "Edge gateway Berlin", "2.8.3", "172.16.4.2", "online", 88.0,
         (14.2, 16), 3.9),
        ("edge-gw-lyon", "Edge gateway Lyon", "2.8.3", "172.16.5.2", "online", 34.0, (6.0, 16),
         0.8),
        ("kiosk-17", "Lobby kiosk 17", "1.9.0", "192.168.8.17", "online", 12.0, (1.1, 4), 0.2),
        ("build-03", "CI build host 3", "5.0.0-rc2", "10.30.0.3", "online", 97.0, (28.0, 32),
         7.8),
        ("rpa-fin-04", "Finance close robot", "4.0.9", "10.20.3.40", "online", 45.0, (4.0, 8),
         0.9),
        ("scanner-02", "Warehouse scanner 2", "1.2.7", "192.168.9.2", "online", 3.0, (0.6, 2),
         0.05),
    ]
    for cid, name, version, ip, status, cpu, (used, total), load in fleet:
        metrics = {"cpuUsagePercent": cpu, "memoryUsageBytes": int(used * GIB),
                   "memoryTotalBytes": int(total * GIB), "load1": load}
        resp = await rpad.heartbeat(cid, name=name, version=version, ipAddress=ip,
                                    status=status, metrics=metrics, osType="Linux 6.1")
        assert resp.status_code == 200, resp.text
    await rpad.heartbeat("rpa-fin-04", status="offline", ipAddress="10.20.3.40")


async def test_a_banner_warns_when_the_fleet_nears_its_cap(
        make_config: Callable[..., Config]) -> None:
    """presence.max_clients = 5: no banner at 3 clients, a warning at 4 (80 %), "full" at 5
    with the sixth refused, and gone again once a client is removed."""
    with trio.fail_after(TEST_TIMEOUT_SECONDS):
        cfg = make_config(presence={"min_interval_seconds": 0, "max_clients": 5})
        async with daemon_running(cfg) as rpad:
            for cid in ("a", "b", "c"):
                await rpad.heartbeat(cid)

            def scenario(page: Any) -> None:
                open_dashboard(page, rpad)
                banner = page.locator("#fleet-banner")
                expect(page.locator("tbody tr")).to_have_count(3)
                expect(banner).to_be_hidden()
                call(rpad.heartbeat, "d")
                expect(banner).to_be_visible()
                expect(banner).to_have_attribute("data-level", "warn")
                expect(banner).to_have_text(re.compile(
                    r"The fleet holds 4 of at most 5 clients \(80 % of presence\.max_clients\)"))
                call(rpad.heartbeat, "e")
                expect(banner).to_have_attribute("data-level", "full")
                expect(banner).to_contain_text("The fleet is full: 5 clients")
                refused = call(rpad.heartbeat, "f")
                assert refused.status_code == 409 and refused.json()["error"] == "fleet_full"
                call(rpad.request, "DELETE", "/api/v1/clients/e")
                call(rpad.request, "DELETE", "/api/v1/clients/d")
                expect(page.locator("tbody tr")).to_have_count(3)
                expect(banner).to_be_hidden()

            await in_browser(scenario)
