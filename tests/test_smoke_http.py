"""A first end-to-end check that the harness works: the seed payload, against the real daemon."""

import trio

from .conftest import Running


async def test_seed_payload_is_accepted(rpad: Running) -> None:
    with trio.fail_after(10):
        body = {"client_id": 1, "timestamp": "2025-07-23T12:00:00Z", "status": "online",
                "version": "1.0.0", "ip_address": "192.168.1.100"}
        r = await rpad.request("POST", "/api/v1/client/heartbeat", json=body)
        assert r.status_code == 200, r.text
        data = r.json()
        assert data["clientId"] == "1"
        assert data["status"] == "online"
        r = await rpad.request("GET", "/api/v1/clients/1", role="viewer")
        assert r.json()["ipAddress"] == "192.168.1.100"
        assert r.json()["version"] == "1.0.0"
