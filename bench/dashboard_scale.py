"""The dashboard at 100,000 clients (issue 13): rpad's CPU with 100 dashboards each on its own
view, and the page in Chromium.

One ``rpad serve`` (its own process, loopback) with 100,000 clients registered by batch
heartbeats; during every measurement a loader keeps the fleet beating as a fleet at one
heartbeat every 30 s does (3,333 heartbeats a second, in batches of 1,000).

- **rpad CPU**: its share of one core over ``--seconds`` with the heartbeat load alone, then
  with 100 WebSocket dashboards (one process, asyncio ``websockets``), each subscribed to
  ``servers`` with a view of its own (sorts, filters, searches and offsets), counting the
  ``SERVER_WINDOW`` pushes and bytes they receive.
- **Chromium** (Debian's, through Playwright): from navigation to the first 50 rows on screen;
  the frame times (``requestAnimationFrame`` deltas) while the list is scrolled for 3 s; and
  from a click on *Next* to the next page on screen (median of 10).

    python bench/dashboard_scale.py [--clients 100000] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from common import CpuWindow, Rpad, median, need, rpad_config

BATCH = 1000


def _post(url: str, token: str, body: dict[str, Any]) -> dict[str, Any]:
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    try:
        conn.request("POST", "/api/v1/client/heartbeats", json.dumps(body),
                     {"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        resp = conn.getresponse()
        data: dict[str, Any] = json.loads(resp.read())
        return data
    finally:
        conn.close()


def beats(ids: list[str], rng: random.Random) -> dict[str, Any]:
    return {"heartbeats": [{"clientId": cid, "status": "online", "version": "4.2.1",
                            "metrics": {"cpuUsagePercent": round(rng.uniform(0, 100), 1),
                                        "memoryUsageBytes": rng.randrange(1, 7) * 2**30,
                                        "memoryTotalBytes": 8 * 2**30,
                                        "load1": round(rng.uniform(0, 4), 2)}}
                           for cid in ids]}


class Loader(threading.Thread):
    """Heartbeats at ``rate`` a second in batches of BATCH until stopped."""

    def __init__(self, url: str, token: str, ids: list[str], rate: float) -> None:
        super().__init__(daemon=True)
        self.url, self.token, self.ids, self.rate = url, token, ids, rate
        self.stop_event = threading.Event()
        self.sent = 0

    def run(self) -> None:
        rng = random.Random(7)
        period = BATCH / self.rate
        next_at = time.monotonic()
        while not self.stop_event.is_set():
            _post(self.url, self.token, beats(rng.sample(self.ids, BATCH), rng))
            self.sent += BATCH
            next_at += period
            self.stop_event.wait(max(0.0, next_at - time.monotonic()))


def views(n: int) -> list[dict[str, Any]]:
    sorts = ["status", "name", "-cpu", "-heartbeat", "memory", "-version", "id"]
    filters = ["all", "online", "offline"]
    out = []
    for i in range(n):
        view: dict[str, Any] = {"sort": sorts[i % len(sorts)], "filter": filters[i % 3],
                                "offset": (i * 997) % 5000, "limit": 50}
        if i % 10 == 9:
            view["q"] = f"robot-{i:02d}"
        out.append(view)
    return out


async def dashboards(ws_url: str, tokens: list[str], seconds: float) -> dict[str, float]:
    from websockets.asyncio.client import connect

    counts = {"pushes": 0, "bytes": 0, "ready": 0}

    async def one(token: str, view: dict[str, Any]) -> None:
        async with connect(ws_url, max_size=None, ping_interval=None) as ws:
            await ws.send(json.dumps({"action": "auth", "token": token}))
            await ws.send(json.dumps({"action": "subscribe", "topic": "servers", "view": view}))
            counts["ready"] += 1
            async for msg in ws:
                if '"SERVER_WINDOW"' in msg[:40]:
                    counts["pushes"] += 1
                    counts["bytes"] += len(msg)

    tasks = [asyncio.create_task(one(t, v)) for t, v in zip(tokens, views(len(tokens)),
                                                             strict=True)]
    await asyncio.sleep(seconds)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return counts


def chromium(url: str, token: str) -> dict[str, float]:
    from playwright.sync_api import sync_playwright

    exe = need("chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--headless", "--no-sandbox",
                                                               "--disable-gpu"])
        try:
            # The bench waits with functions of its own, which the page's CSP would refuse.
            page = browser.new_page(viewport={"width": 1280, "height": 800}, bypass_csp=True)
            t = time.perf_counter()
            page.goto(f"{url}/?token={token}")
            page.wait_for_function("document.querySelectorAll('tbody tr').length >= 50",
                                   timeout=60_000)
            first_rows = (time.perf_counter() - t) * 1000
            frames = page.evaluate("""() => new Promise((done) => {
                const deltas = []; let last = performance.now(); const end = last + 3000;
                let down = true;
                function step(now) {
                    deltas.push(now - last); last = now;
                    window.scrollBy(0, down ? 40 : -40);
                    if (window.scrollY + innerHeight >= document.body.scrollHeight - 2) down = false;
                    if (window.scrollY <= 0) down = true;
                    if (now < end) requestAnimationFrame(step); else done(deltas);
                }
                requestAnimationFrame(step);
            })""")
            flips = []
            for _ in range(10):
                before = page.evaluate("document.querySelector('tbody tr').dataset.clientId")
                t = time.perf_counter()
                page.click("#page-next")
                page.wait_for_function(
                    "(b) => document.querySelector('tbody tr') && "
                    "document.querySelector('tbody tr').dataset.clientId !== b", arg=before,
                    timeout=30_000)
                flips.append((time.perf_counter() - t) * 1000)
        finally:
            browser.close()
    frames = sorted(frames[1:])
    return {"first_rows_ms": first_rows, "frame_p50_ms": statistics.median(frames),
            "frame_p95_ms": frames[int(0.95 * (len(frames) - 1))], "frame_max_ms": frames[-1],
            "next_page_ms": median(flips)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=100_000)
    ap.add_argument("--dashboards", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args()
    ids = [f"robot-{i:06d}" for i in range(args.clients)]
    with tempfile.TemporaryDirectory(prefix="rpad-bench-dash-") as tmp:
        cfg = rpad_config(Path(tmp) / "state", presence={"min_interval_seconds": 0,
                                                         "heartbeat_timeout_seconds": 120,
                                                         "check_interval_seconds": 30},
                          http={"max_body_bytes": 1 << 20})
        with Rpad(Path(tmp), cfg) as rpad:
            token = rpad.token("service", "loader")
            rng = random.Random(1)
            t = time.perf_counter()
            for i in range(0, len(ids), BATCH):
                r = _post(rpad.http_url, token, beats(ids[i:i + BATCH], rng))
                assert r.get("accepted") == len(ids[i:i + BATCH]), str(r)[:300]
            print(f"{args.clients} clients registered in {time.perf_counter() - t:.1f} s")
            rate = args.clients / 30.0
            loader = Loader(rpad.http_url, token, ids, rate)
            loader.start()
            time.sleep(3)
            cpu = CpuWindow([rpad.pid])
            cpu.start()
            time.sleep(args.seconds)
            cpu.stop()
            base = cpu.percent(rpad.pid)
            print(f"rpad CPU, {rate:.0f} heartbeats/s, no dashboard: {base:.0f} % of a core")
            assert rpad.ws_url is not None
            tokens = [rpad.token("viewer", f"dash-{i}") for i in range(args.dashboards)]
            result: dict[str, float] = {}

            def run_dashboards() -> None:
                result.update(asyncio.run(dashboards(rpad.ws_url or "", tokens,
                                                     args.seconds + 6)))

            th = threading.Thread(target=run_dashboards)
            th.start()
            time.sleep(4)
            cpu = CpuWindow([rpad.pid])
            cpu.start()
            time.sleep(args.seconds)
            cpu.stop()
            th.join()
            with_dash = cpu.percent(rpad.pid)
            pushes = result.get("pushes", 0)
            print(f"rpad CPU, same load + {args.dashboards} dashboards each on its own view: "
                  f"{with_dash:.0f} % of a core (+{with_dash - base:.0f}); "
                  f"{pushes:.0f} SERVER_WINDOW pushes, "
                  f"{result.get('bytes', 0) / max(pushes, 1) / 1024:.1f} KiB each")
            b = chromium(rpad.http_url, rpad.token("viewer", "browser"))
            print(f"Chromium at {args.clients} clients: first rows {b['first_rows_ms']:.0f} ms; "
                  f"frames while scrolling p50 {b['frame_p50_ms']:.1f} ms, p95 "
                  f"{b['frame_p95_ms']:.1f} ms, max {b['frame_max_ms']:.1f} ms; next page "
                  f"{b['next_page_ms']:.0f} ms (median of 10)")
            loader.stop_event.set()
            loader.join()


if __name__ == "__main__":
    sys.exit(main())
