"""The dashboard's routes on the real daemon: the page and its files, traversal refused, and
the hub URL the page is told to use. (The page itself is tested in a browser in
test_dashboard_browser.py.)"""

from __future__ import annotations

from collections.abc import Callable

import trio

from rpad import __version__
from rpad.api.dashboard import hub_url, load_static
from rpad.client import httpclient
from rpad.config import Config, from_dict

from .test_alerts import daemon_running

TIMEOUT_SECONDS = 20


def test_hub_url_follows_the_browsers_host() -> None:
    cfg = Config()
    ws = "ws://127.0.0.1:8001/ws"
    assert hub_url(cfg, ws, "127.0.0.1:8000", False) == "ws://127.0.0.1:8001/ws"
    assert hub_url(cfg, ws, "fleet.example:8000", False) == "ws://fleet.example:8001/ws"
    assert hub_url(cfg, ws, "fleet.example", True) == "wss://fleet.example:8001/ws"
    assert hub_url(cfg, ws, "[::1]:8000", False) == "ws://[::1]:8001/ws"
    assert hub_url(cfg, "ws://[::]:8001/ws", "", False) == "ws://[::]:8001/ws"
    assert hub_url(cfg, None, "x:1", False) is None
    cfg2 = from_dict({"websocket": {"public_url": "wss://fleet.example/ws"}})
    assert hub_url(cfg2, ws, "anything:8000", False) == "wss://fleet.example/ws"


def test_static_files_are_shipped() -> None:
    files = load_static()
    assert {"index.html", "dashboard.css", "dashboard.js", "rpad-client.js"} <= set(files)
    assert files["dashboard.js"].content_type == "text/javascript; charset=utf-8"
    # No build step and no CDN: nothing is fetched from another origin.
    for f in files.values():
        text = f.body.decode()
        assert "http://" not in text.replace("http://www.w3.org", "")
        assert "https://" not in text or f.content_type.startswith("text/javascript")


async def test_page_files_and_traversal(make_config: Callable[..., Config]) -> None:
    with trio.fail_after(TIMEOUT_SECONDS):
        async with daemon_running(make_config()) as rpad:
            base = rpad.http_url

            page = await httpclient.request("GET", base + "/", timeout_seconds=5)
            assert page.status == 200
            assert page.headers["content-type"] == "text/html; charset=utf-8"
            assert b'<script type="module" src="/static/dashboard.js">' in page.body
            csp = page.headers["content-security-policy"]
            assert "script-src 'self'" in csp and "connect-src 'self' ws: wss:" in csp
            assert page.headers["referrer-policy"] == "no-referrer"
            assert page.headers["x-content-type-options"] == "nosniff"

            js = await httpclient.request("GET", base + "/static/rpad-client.js",
                                          timeout_seconds=5)
            assert js.status == 200 and b"export class RpadClient" in js.body
            assert js.headers["content-type"] == "text/javascript; charset=utf-8"
            again = await httpclient.request("GET", base + "/static/rpad-client.js",
                                             headers={"If-None-Match": js.headers["etag"]},
                                             timeout_seconds=5)
            assert again.status == 304 and again.body == b""

            # Sent as raw request targets (no client-side normalisation of "..").
            for target in ("/static/../rpad/http.py", "/static/..%2Fdashboard.py",
                           "/static/%2e%2e/%2e%2e/pyproject.toml", "/static//etc/passwd",
                           "/static/..", "/static/nope.js", "/static/__init__.py",
                           "/static/index.html/..", "/static/%00"):
                resp = await httpclient.request("GET", base + target, timeout_seconds=5)
                assert resp.status == 404, target
                assert resp.json()["error"] == "not_found", target

            cfg = await httpclient.request("GET", base + "/api/v1/dashboard-config",
                                           timeout_seconds=5)
            assert cfg.status == 200
            assert rpad.ws_url is not None
            ws_port = rpad.ws_url.rsplit(":", 1)[1].split("/")[0]
            assert cfg.json() == {"wsUrl": f"ws://127.0.0.1:{ws_port}/ws",
                                  "version": __version__}
            # A browser that reached rpad by another name is sent to that name.
            named = await httpclient.request(
                "GET", base + "/api/v1/dashboard-config",
                headers={"Host": "fleet.example:8000"}, timeout_seconds=5)
            assert named.json()["wsUrl"] == f"ws://fleet.example:{ws_port}/ws"
