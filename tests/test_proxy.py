"""Behind a trusted reverse proxy the client's address comes from X-Forwarded-For; from anyone
else the header is ignored."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio

from rpad.config import Config, ConfigError
from rpad.core.proxy import client_address, forwarded_origin

from .conftest import start_daemon

TRUSTED = frozenset({"127.0.0.1", "::1"})


def _h(**headers: str) -> Callable[[str], str | None]:
    low = {k.replace("_", "-").lower(): v for k, v in headers.items()}
    return low.get


@pytest.mark.parametrize(("peer", "xff", "expected"), [
    ("127.0.0.1", "203.0.113.7", "203.0.113.7"),
    ("127.0.0.1", "198.51.100.1, 203.0.113.7", "203.0.113.7"),  # rightmost untrusted hop
    ("127.0.0.1", "203.0.113.7, 127.0.0.1", "203.0.113.7"),  # a second trusted proxy
    ("127.0.0.1", "garbage, 203.0.113.7:5555", "203.0.113.7"),
    ("127.0.0.1", "[2001:db8::1]:443", "2001:db8::1"),
    ("127.0.0.1", "not-an-ip", "127.0.0.1"),
    ("127.0.0.1", "", "127.0.0.1"),
    ("192.0.2.9", "203.0.113.7", "192.0.2.9"),  # not a trusted proxy: header ignored
])
def test_client_address(peer: str, xff: str, expected: str) -> None:
    assert client_address(peer, _h(x_forwarded_for=xff), TRUSTED) == expected


def test_nothing_is_trusted_by_default() -> None:
    assert client_address("127.0.0.1", _h(x_forwarded_for="203.0.113.7"), ()) == "127.0.0.1"


def test_forwarded_origin() -> None:
    h = _h(x_forwarded_host="fleet.example.com", x_forwarded_proto="https")
    assert forwarded_origin("127.0.0.1", h, TRUSTED, "127.0.0.1:8000", False) == ("fleet.example.com", True)
    assert forwarded_origin("192.0.2.9", h, TRUSTED, "127.0.0.1:8000", False) == ("127.0.0.1:8000", False)


def test_config_refuses_a_non_ip_proxy(make_config: Callable[..., Config]) -> None:
    with pytest.raises(ConfigError, match=r"http\.trusted_proxies\[1\]: 'nginx' is not an IP address"):
        make_config(http={"trusted_proxies": ["127.0.0.1", "nginx"]})


@pytest.mark.parametrize("fast_path", [True, False])
async def test_heartbeat_and_limiter_see_the_forwarded_client(
    nursery: trio.Nursery, make_config: Callable[..., Config], fast_path: bool
) -> None:
    d = await start_daemon(nursery, make_config(
        http={"trusted_proxies": ["127.0.0.1"], "fast_path": fast_path},
        auth={"max_failures_per_minute": 2}))
    with trio.fail_after(20):
        r = await d.request("POST", "/api/v1/client/heartbeat", json={"clientId": "p1"},
                            role="service", headers={"X-Forwarded-For": "203.0.113.7"})
        assert r.status_code == 200
        r = await d.request("GET", "/api/v1/clients/p1", role="viewer")
        assert r.json()["ipAddress"] == "203.0.113.7"
        # Two failures from one forwarded client lock out that client, not everyone behind
        # the proxy.
        for _ in range(2):
            r = await d.request("GET", "/api/v1/clients", token="bad",
                                headers={"X-Forwarded-For": "198.51.100.66"})
            assert r.status_code == 401
        r = await d.request("GET", "/api/v1/clients", role="viewer",
                            headers={"X-Forwarded-For": "198.51.100.66"})
        assert r.status_code == 429
        r = await d.request("GET", "/api/v1/clients", role="viewer",
                            headers={"X-Forwarded-For": "198.51.100.67"})
        assert r.status_code == 200
        # The dashboard learns the same-origin hub URL from the proxy's headers.
        r = await d.request("GET", "/api/v1/dashboard-config", role=None, headers={
            "X-Forwarded-Host": "fleet.example.com", "X-Forwarded-Proto": "https"})
        assert r.json()["wsUrl"] == "wss://fleet.example.com/ws"
    await d.http.aclose()
    d.daemon.stop()
