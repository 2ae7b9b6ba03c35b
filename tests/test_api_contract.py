"""The HTTP API's contract beyond bodies: the headers that RFCs 6750 and 9110 ask for (a 401
names its scheme, a 405 lists the allowed methods)."""

from __future__ import annotations

from .conftest import Running


async def test_401_names_the_bearer_scheme(rpad: Running) -> None:
    for token in (None, "not-a-jwt"):
        r = await rpad.request("GET", "/api/v1/clients", token=token, role=None)
        assert r.status_code == 401
        assert r.headers["WWW-Authenticate"] == 'Bearer realm="rpad"'
    # The heartbeat's fast path answers the same.
    r = await rpad.request("POST", "/api/v1/client/heartbeat", role=None, json={"clientId": "a"})
    assert (r.status_code, r.headers["WWW-Authenticate"]) == (401, 'Bearer realm="rpad"')
    # 403 (a valid token, not allowed) has no challenge.
    r = await rpad.request("POST", "/api/v1/clients", role="viewer", json={"clientId": "a"})
    assert r.status_code == 403 and "WWW-Authenticate" not in r.headers


async def test_405_lists_the_allowed_methods(rpad: Running) -> None:
    r = await rpad.request("GET", "/api/v1/client/heartbeat")
    assert r.status_code == 405 and r.json()["error"] == "method_not_allowed"
    assert r.headers["Allow"] == "OPTIONS, POST"
    r = await rpad.request("PUT", "/api/v1/clients/robot-1")
    assert r.status_code == 405
    assert r.headers["Allow"] == "DELETE, GET, HEAD, OPTIONS"
