"""One client address and one authentication for every route: behind a trusted reverse proxy,
failed authentications are charged to the forwarded client on every authenticated HTTP route
(``/metrics`` included) and on the WebSocket hub, never to the proxy, so a few bad requests from
one client cannot lock out everyone behind nginx."""

from __future__ import annotations

from collections.abc import Callable

import trio

from rpad.config import Config

from .conftest import NETWORK_TIMEOUT_SECONDS
from .wsclient import StartDaemon, daemons, ws_connect

__all__ = ["daemons"]  # the fixture

MAX_FAILURES = 3
# Routes anyone may call.
OPEN = {"/", "/static/<path:name>", "/api/v1/health", "/api/v1/websocket/health",
        "/api/v1/dashboard-config",
        # The API's documents (rpad/api/contract.py).
        "/api/v1/openapi.json", "/api/v1/websocket/schema.json", "/api/v1/docs"}


def authenticated_routes(app: object) -> list[tuple[str, str]]:
    """(method, path with every parameter filled) of each route that needs a token."""
    routes = []
    for rule in app.url_map.iter_rules():  # type: ignore[attr-defined]
        if rule.rule in OPEN:
            continue
        path = rule.rule
        for arg in rule.arguments:
            path = path.replace(f"<{arg}>", "x1").replace(f"<path:{arg}>", "x1")
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            routes.append((method, path))
    return routes


async def test_failures_are_charged_to_the_forwarded_client_on_every_route(
        daemons: StartDaemon, make_config: Callable[..., Config]) -> None:
    with trio.fail_after(NETWORK_TIMEOUT_SECONDS * 2):
        r = await daemons(make_config(http={"trusted_proxies": ["127.0.0.1"]},
                                      auth={"max_failures_per_minute": MAX_FAILURES}))
        routes = authenticated_routes(r.daemon.app)
        assert ("GET", "/metrics") in routes and ("POST", "/api/v1/client/heartbeat") in routes
        assert len(routes) >= 15
        for i, (method, path) in enumerate(routes):
            def via(n: int, i: int = i) -> dict[str, str]:
                return {"X-Forwarded-For": f"203.0.{i}.{n}"}

            # Bad tokens from three different clients behind the proxy: each is a 401.
            for n in range(MAX_FAILURES):
                bad = await r.request(method, path, token="not-a-jwt", headers=via(n), json={})
                assert bad.status_code == 401, (method, path, bad.text)
            # A fourth client with a valid token is not refused for the others' failures.
            good = await r.request(method, path, role="admin", headers=via(99), json={})
            assert good.status_code != 429, (method, path, good.text)
            # One client's own failures do lock that client out, with Retry-After.
            for _ in range(MAX_FAILURES):
                await r.request(method, path, token="not-a-jwt", headers=via(50), json={})
            locked = await r.request(method, path, role="admin", headers=via(50), json={})
            assert locked.status_code == 429, (method, path, locked.text)
            assert int(locked.headers["Retry-After"]) >= 1


async def test_the_hub_counts_failures_with_the_http_api_per_forwarded_client(
        daemons: StartDaemon, make_config: Callable[..., Config]) -> None:
    with trio.fail_after(NETWORK_TIMEOUT_SECONDS):
        r = await daemons(make_config(http={"trusted_proxies": ["127.0.0.1"]},
                                      auth={"max_failures_per_minute": MAX_FAILURES}))
        assert r.ws_url is not None
        mallory = {"X-Forwarded-For": "198.51.100.7"}
        mallory_ws = [(b"X-Forwarded-For", b"198.51.100.7")]
        for _ in range(MAX_FAILURES - 1):
            bad = await r.request("GET", "/metrics", token="nope", headers=mallory)
            assert bad.status_code == 401
        # The third failure is on the hub: the address is now refused on both sides.
        async with ws_connect(r.ws_url, token="nope", extra_headers=mallory_ws,
                              established=False) as ws:
            assert await ws.close_code() == 4001
        locked = await r.request("GET", "/metrics", role="viewer", headers=mallory)
        assert locked.status_code == 429
        # Another client behind the same proxy is unaffected, on both sides.
        alice = {"X-Forwarded-For": "198.51.100.8"}
        assert (await r.request("GET", "/metrics", role="viewer", headers=alice)).status_code == 200
        async with ws_connect(r.ws_url, token=r.token("viewer", "alice"),
                              extra_headers=[(b"X-Forwarded-For", b"198.51.100.8")]) as ws:
            assert ws.established["userId"] == "alice"
