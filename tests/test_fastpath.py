"""The heartbeat fast path answers exactly like the Quart route.

Two real daemons, one with ``http.fast_path = true`` and one with false, get the same matrix of
heartbeat requests — good ones and every kind of bad one — and must give the same status, the
same JSON body (times aside) and the same Retry-After.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import jwt
import pytest
import trio

from rpad.config import Config

from .conftest import Running, start_daemon

VOLATILE = {"serverTime", "clockSkewSeconds"}


def _normalize(body: Any) -> Any:
    if isinstance(body, dict):
        return {k: ("<t>" if k in VOLATILE else _normalize(v)) for k, v in body.items()}
    return body


def _cases(d: Running) -> list[tuple[str, dict[str, Any]]]:
    admin = d.token("admin", "root")
    service = d.token("service", "gw")
    viewer = d.token("viewer", "v")
    agent7 = d.token("agent", "agent-7")
    expired = d.token("admin", "root", ttl=None)
    expired = jwt.encode({"sub": "root", "role": "admin", "exp": 1_000_000},
                         d.daemon.auth.keys.secrets[0], algorithm="HS256")  # type: ignore[union-attr]
    none_alg = jwt.encode({"sub": "root", "role": "admin"}, None, algorithm="none")
    seed = {"client_id": 1, "timestamp": "2025-07-23T12:00:00Z", "status": "online",
            "version": "1.0.0", "ip_address": "192.168.1.100"}
    big = json.dumps({"clientId": "big", "metadata": {"x": "y" * 70_000}})

    def post(token: str | None, content: bytes | str, **headers: str) -> dict[str, Any]:
        h = {"Content-Type": "application/json", **headers}
        if token is not None:
            h["Authorization"] = f"Bearer {token}"
        return {"headers": h, "content": content}

    return [
        ("seed payload", post(service, json.dumps(seed))),
        ("camelCase with metrics", post(admin, json.dumps({
            "clientId": "m-1", "intervalSeconds": 10, "osType": "linux",
            "metrics": {"cpuUsagePercent": 12.5, "memoryUsageBytes": 1024}}))),
        ("agent for itself", post(agent7, json.dumps({"clientId": "agent-7"}))),
        ("too soon again (429)", post(agent7, json.dumps({"clientId": "agent-7"}))),
        ("clean shutdown right after", post(agent7, json.dumps({"clientId": "agent-7", "status": "offline"}))),
        ("agent for another client", post(agent7, json.dumps({"clientId": "agent-8"}))),
        ("viewer may not beat", post(viewer, json.dumps({"clientId": "x"}))),
        ("no token", post(None, json.dumps({"clientId": "x"}))),
        ("garbage token", post("abc.def.ghi", json.dumps({"clientId": "x"}))),
        ("expired token", post(expired, json.dumps({"clientId": "x"}))),
        ("alg none", post(none_alg, json.dumps({"clientId": "x"}))),
        ("not JSON", post(service, b"{nope")),
        ("JSON but not an object", post(service, b"[1, 2]")),
        ("empty body", post(service, b"")),
        ("invalid UTF-8", post(service, b'{"clientId": "\xff"}')),
        ("missing clientId", post(service, json.dumps({"status": "online"}))),
        ("bad fields", post(service, json.dumps({
            "clientId": "bad id!", "timestamp": "yesterday", "intervalSeconds": -1,
            "metrics": {"load1": "high"}, "metadata": [1]}))),
        ("body too large", post(service, big)),
        ("deep nesting", post(service, "[" * 20_000 + "]" * 20_000)),
    ]


async def _run_matrix(d: Running) -> list[tuple[str, int, Any, str | None]]:
    out = []
    for name, kwargs in _cases(d):
        r = await d.http.post(d.http_url + "/api/v1/client/heartbeat", **kwargs)
        try:
            body = _normalize(r.json())
        except ValueError:
            body = r.text
        out.append((name, r.status_code, body, r.headers.get("retry-after")))
    return out


async def _one(nursery: trio.Nursery, cfg: Config) -> list[tuple[str, int, Any, str | None]]:
    d = await start_daemon(nursery, cfg)
    try:
        results = await _run_matrix(d)
        assert d.daemon.presence is not None
        counted = dict(d.daemon.presence.heartbeats_by_result)
        return [*results, ("heartbeats_by_result", 0, counted, None)]
    finally:
        await d.http.aclose()
        d.daemon.stop()


async def test_fast_path_and_quart_route_answer_identically(
    nursery: trio.Nursery, tmp_path: Any, make_config: Callable[..., Config]
) -> None:
    from rpad import config as config_mod

    from .conftest import config_dict

    with trio.fail_after(60):
        fast = await _one(nursery, config_mod.from_dict(config_dict(tmp_path / "fast", http={"fast_path": True})))
        slow = await _one(nursery, config_mod.from_dict(config_dict(tmp_path / "slow", http={"fast_path": False})))
    for f, s in zip(fast, slow, strict=True):
        assert f == s, f"{f[0]}: fast path {f[1:]} != Quart route {s[1:]}"
    counted = fast.pop()[2]
    slow.pop()
    # Every request is counted once, by result, on both paths.
    assert counted == {"accepted": 4, "rate_limited": 1, "forbidden": 2, "unauthorized": 4,
                       "invalid": 8}
    statuses = {name: status for name, status, _, _ in fast}
    assert statuses == {
        "seed payload": 200, "camelCase with metrics": 200, "agent for itself": 200,
        "too soon again (429)": 429, "clean shutdown right after": 200,
        "agent for another client": 403, "viewer may not beat": 403, "no token": 401,
        "garbage token": 401, "expired token": 401, "alg none": 401, "not JSON": 400,
        "JSON but not an object": 400, "empty body": 400, "invalid UTF-8": 400,
        "missing clientId": 422, "bad fields": 422, "body too large": 413, "deep nesting": 400,
    }
    bodies = {name: body for name, _, body, _ in fast}
    assert [d["field"] for d in bodies["bad fields"]["details"]] == [
        "clientId", "timestamp", "intervalSeconds", "metrics.load1", "metadata"]
    assert {n: r for n, _, _, r in fast if r} == {"too soon again (429)": "1"}
    for name, status, body, _ in fast:
        if status != 200:
            assert set(body) == {"error", "message", "details"}, name


@pytest.mark.parametrize("fast_path", [True, False])
async def test_chunked_body_over_the_limit_is_413(
    nursery: trio.Nursery, make_config: Callable[..., Config], fast_path: bool
) -> None:
    d = await start_daemon(nursery, make_config(http={"fast_path": fast_path, "max_body_bytes": 1024}))
    with trio.fail_after(20):
        # A chunked body (no Content-Length) that only turns out too large while being read,
        # sent over a raw socket so the test client cannot interfere.
        host, port = d.http_url.removeprefix("http://").rsplit(":", 1)
        stream = await trio.open_tcp_stream(host, int(port))
        token = d.token("service")
        head = (f"POST /api/v1/client/heartbeat HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
                "Transfer-Encoding: chunked\r\n\r\n").encode()
        chunk = b"y" * 100
        body = b'{"clientId": "c", "metadata": {"x": "' + chunk * 20 + b'"}}'
        await stream.send_all(head)
        for i in range(0, len(body), 100):
            piece = body[i:i + 100]
            await stream.send_all(b"%x\r\n%s\r\n" % (len(piece), piece))
        await stream.send_all(b"0\r\n\r\n")
        raw = b""
        while b"\r\n\r\n" not in raw or not raw.rstrip().endswith(b"}"):
            data = await stream.receive_some()
            if not data:
                break
            raw += data
        await stream.aclose()
        status_line, _, rest = raw.partition(b"\r\n")
        r = httpx.Response(int(status_line.split()[1]), content=rest.partition(b"\r\n\r\n")[2])
        assert r.status_code == 413
        assert r.json()["error"] == "body_too_large"
        # The daemon keeps serving.
        r = await d.heartbeat("c")
        assert r.status_code == 200
    await d.http.aclose()
    d.daemon.stop()


async def test_other_routes_pass_through_the_fast_path(rpad: Running) -> None:
    with trio.fail_after(10):
        r = await rpad.request("GET", "/api/v1/client/heartbeat")
        assert r.status_code == 405
        assert r.json()["error"] == "method_not_allowed"
        r = await rpad.request("GET", "/api/v1/health", role=None)
        assert r.status_code == 200 and r.json()["status"] == "ok"
        assert isinstance(rpad.http, httpx.AsyncClient)
