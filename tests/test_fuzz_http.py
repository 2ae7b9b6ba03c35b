"""Fuzzed HTTP requests (Hypothesis) against a running ``rpad serve``.

One real daemon (a subprocess, as in production) serves the whole module. Hypothesis sends it
random JSON bodies shaped like heartbeats, batches, registrations, publications and
notifications, random bytes, random headers (tokens of every role, broken tokens, garbage
``Authorization`` and ``Content-Type`` values), random client ids in paths and random query
strings, on every route. Every answer must be:

* never a 5xx;
* for a refusal, a JSON ``{"error", "message", "details"}`` whose ``error`` is the documented
  code for its status (SPEC §3);
* and at the end the daemon is still up and healthy, and its log holds no traceback and no
  "unexpected error" (an exception in any task would have shown there, or killed it).

Runs are derandomized, so CI sees the same examples every time.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import attrs
import httpx
import jwt
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from rpad import config as config_mod
from rpad.auth import Authenticator, load_keys

pytestmark = pytest.mark.slow

FUZZ_SETTINGS = settings(max_examples=120, derandomize=True, deadline=None,
                         suppress_health_check=[HealthCheck.too_slow,
                                                HealthCheck.function_scoped_fixture])
START_TIMEOUT_SECONDS = 20.0
MAX_BODY_BYTES = 4096

# SPEC §3: the status of every refusal and the codes it may carry.
DOCUMENTED: dict[int, set[str]] = {
    400: {"invalid_json", "bad_request"},
    401: {"unauthorized", "token_expired", "token_revoked"},
    403: {"forbidden", "console_disabled"},
    404: {"unknown_client", "not_found", "not_connected"},
    409: {"not_running"},
    405: {"method_not_allowed"},
    413: {"body_too_large"},
    422: {"validation_failed"},
    429: {"rate_limited", "too_many_auth_failures", "too_many_tasks"},
    503: {"storage_unavailable", "not_ready"},
}


@attrs.define
class Served:
    process: subprocess.Popen[bytes]
    http_url: str
    ws_url: str
    auth: Authenticator
    log_path: Path
    tokens: dict[str, str]

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def write_config(tmp: Path, extra: str = "", log_level: str = "info") -> Path:
    secret = tmp / "secret"
    secret.write_text("fuzz-secret-" + "k" * 40 + "\n")
    secret.chmod(0o600)
    cfg = tmp / "rpad.toml"
    cfg.write_text(f"""
state_dir = "{tmp / 'state'}"
[http]
listen = "127.0.0.1:0"
max_body_bytes = {MAX_BODY_BYTES}
graceful_timeout_seconds = 2.0
[websocket]
listen = "127.0.0.1:0"
auth_timeout_seconds = 2.0
[presence]
min_interval_seconds = 0
[auth]
secret_file = "{secret}"
max_failures_per_minute = 1000000
[logging]
level = "{log_level}"
{extra}
""")
    return cfg


def serve(tmp: Path, extra_config: str = "", log_level: str = "info") -> Iterator[Served]:
    """``rpad serve`` on ports 0 in ``tmp``; stopped with SIGTERM afterwards (exit status 0)."""
    cfg_path = write_config(tmp, extra_config, log_level)
    log_path = tmp / "rpad.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "rpad", "serve", "--config", str(cfg_path)],
            stdout=subprocess.PIPE, stderr=log, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert process.stdout is not None
        out = b""
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        with selectors.DefaultSelector() as sel:
            sel.register(process.stdout, selectors.EVENT_READ)
            while b"WebSocket hub" not in out or not out.endswith(b"\n"):
                left = deadline - time.monotonic()
                assert left > 0 and sel.select(left), f"rpad did not start: {out!r}"
                chunk = os.read(process.stdout.fileno(), 4096)
                assert chunk, f"rpad exited: {out!r} {log_path.read_text(errors='replace')}"
                out += chunk
        lines = out.decode().splitlines()
        http_url = next(line for line in lines if "HTTP API" in line).split()[-1]
        ws_url = next(line for line in lines if "WebSocket hub" in line).split()[-1]
        auth = Authenticator(load_keys(config_mod.load(str(cfg_path))))
        tokens = {
            role: auth.mint(role=role, sub=f"fuzz-{role}", ttl_seconds=3600,
                            topics=["task.*"] if role != "agent" else (),
                            publish=["task.*"] if role == "service" else ())
            for role in ("agent", "viewer", "service", "admin")
        }
        tokens["expired"] = jwt.encode({"sub": "x", "role": "admin", "exp": 1000},
                                       "fuzz-secret-" + "k" * 40, algorithm="HS256")
        tokens["wrong-key"] = jwt.encode({"sub": "x", "role": "admin"}, "another-secret-" * 3,
                                         algorithm="HS256")
        tokens["alg-none"] = jwt.encode({"sub": "x", "role": "admin"}, "", algorithm="none")
        yield Served(process, http_url, ws_url, auth, log_path, tokens)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout is not None:
            process.stdout.close()


def assert_clean_log(served: Served) -> None:
    text = served.log_text()
    for needle in ("Traceback", "unexpected error", "internal error"):
        assert needle not in text, text[text.find(needle) - 2000: text.find(needle) + 2000]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from serve(tmp_path_factory.mktemp("fuzz-http"))


@pytest.fixture(scope="module")
def http(served: Served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.http_url, timeout=10) as client:
        yield client


def check(resp: httpx.Response) -> None:
    """The contract for any answer."""
    event(f"status {resp.status_code}")
    assert resp.status_code < 500, (resp.status_code, resp.text[:500])
    if resp.status_code < 400:
        return
    assert resp.headers["content-type"].startswith("application/json"), resp.headers
    body = resp.json()
    assert isinstance(body, dict) and set(body) == {"error", "message", "details"}, body
    assert body["error"] in DOCUMENTED.get(resp.status_code, set()), (resp.status_code, body)
    assert isinstance(body["message"], str) and body["message"]
    assert isinstance(body["details"], list)
    if resp.status_code == 429:
        assert int(resp.headers["Retry-After"]) >= 1


# -- strategies ---------------------------------------------------------------------------------

json_scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40))
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12),
                                                                      children, max_size=5),
    max_leaves=15)
def mostly(valid: st.SearchStrategy[Any], junk: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Valid nine times in ten, so requests get past validation and reach deeper code."""
    return st.integers(0, 9).flatmap(lambda n: junk if n == 0 else valid)


valid_ids = st.from_regex(r"[A-Za-z0-9._:-]{1,24}", fullmatch=True)
client_ids = mostly(valid_ids | st.integers(min_value=0, max_value=10**6),
                    st.integers(min_value=-5, max_value=10**30) | st.text(max_size=30) | json_values)
metric_names = st.sampled_from([
    "cpuUsagePercent", "memoryUsageBytes", "memoryTotalBytes", "diskUsageBytes", "load1",
    "uptimeSeconds", "networkRxInstantBps", "cpu_usage_percent", "bogus"])
finite = st.floats(allow_nan=False, allow_infinity=False, min_value=0, max_value=1e12)
numbers = mostly(finite | st.integers(min_value=0, max_value=10**9),
                 st.integers(min_value=-(2**64), max_value=2**64) | st.floats() | json_values)
texts = mostly(st.text(max_size=60), st.text(min_size=200, max_size=400) | json_values)
small_json_objects = st.dictionaries(st.text(max_size=10), json_values, max_size=4)
heartbeats = st.fixed_dictionaries({"clientId": client_ids}, optional={
    "client_id": client_ids,
    "timestamp": mostly(st.datetimes().map(lambda d: d.isoformat() + "Z"),
                        st.text(max_size=40) | numbers),
    "status": mostly(st.sampled_from(["online", "busy", "offline", "idle", "error"]),
                     st.text(max_size=40) | json_values),
    "version": texts,
    "ipAddress": mostly(st.ip_addresses().map(str), st.text(max_size=50) | json_values),
    "ip_address": texts,
    "osType": texts,
    "name": texts,
    "intervalSeconds": mostly(st.floats(min_value=1, max_value=3600), numbers),
    "metrics": mostly(st.dictionaries(metric_names, numbers, max_size=6), json_values),
    "metadata": mostly(small_json_objects, json_values),
    "extra": json_values,
})
registrations = st.fixed_dictionaries({"clientId": client_ids}, optional={
    "name": texts,
    "tags": mostly(st.lists(st.text(min_size=1, max_size=20), max_size=5),
                   st.lists(st.text(max_size=70), max_size=40) | json_values),
    "heartbeatTimeoutSeconds": mostly(st.floats(min_value=1, max_value=86400), numbers),
    "metadata": mostly(small_json_objects, json_values),
    "other": json_values,
})
topics = mostly(st.sampled_from(["task.1", "task.2", "notifications", "system"]),
                st.sampled_from(["client_status", "servers", "X", ""]) | st.text(max_size=140)
                | json_values)
types = mostly(st.sampled_from(["TASK_UPDATE", "SYSTEM_MESSAGE"]), st.text(max_size=70) | json_values)
user_ids = mostly(st.sampled_from(["fuzz-viewer", "nobody"]), st.text(max_size=200) | json_values)
# Each management route with a body of its own fields (and now and then a stray one).
management = st.one_of(
    st.tuples(st.just("/api/v1/publish"), st.fixed_dictionaries(
        {"topic": topics, "type": types, "data": json_values}, optional={"stray": json_values})),
    st.tuples(st.just("/api/v1/websocket/broadcast"), st.fixed_dictionaries(
        {"data": json_values}, optional={"type": types, "stray": json_values})),
    st.tuples(st.just("/api/v1/websocket/notify"), st.fixed_dictionaries(
        {"title": texts, "message": texts}, optional={
            "userId": user_ids, "topic": topics,
            "level": mostly(st.sampled_from(["info", "success", "warning", "error", "urgent"]),
                            st.text(max_size=10) | json_values),
            "actionUrl": mostly(st.sampled_from(["https://example.test/x", "/local"]), texts),
            "autoClose": mostly(st.booleans() | st.integers(0, 60000), json_values),
            "stray": json_values})),
    st.tuples(st.just("/api/v1/websocket/users/disconnect"), st.fixed_dictionaries(
        {"userId": user_ids}, optional={"reason": texts, "stray": json_values})),
    st.tuples(st.just("/api/v1/tasks"), st.fixed_dictionaries(
        {"command": mostly(st.sampled_from(["true", "uptime", "echo 'x; y'"]), texts)},
        optional={"clientIds": mostly(st.lists(valid_ids, min_size=1, max_size=3),
                                      json_values),
                  "tag": mostly(st.sampled_from(["lab", "none"]), texts),
                  "concurrency": mostly(st.integers(1, 10), json_values),
                  "timeoutSeconds": mostly(st.floats(1, 60), json_values),
                  "stray": json_values})),
    st.tuples(valid_ids.map(lambda cid: f"/api/v1/clients/{cid}/tokens"), st.fixed_dictionaries(
        {}, optional={"ttl": mostly(st.sampled_from(["1h", "30d", "never", "90s"]),
                                    st.text(max_size=20) | json_values)})),
)
credentials = st.one_of(
    st.sampled_from(["agent", "viewer", "service", "admin", "expired", "wrong-key", "alg-none",
                     None]),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=255), max_size=60).map(
        lambda t: "raw:" + t),
)
content_types = st.one_of(st.none(), st.sampled_from(
    ["application/json", "text/plain", "application/x-www-form-urlencoded",
     "multipart/form-data; boundary=x", "application/json; charset=latin-1"]),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40))


def _headers(served: Served, credential: str | None, content_type: str | None) -> dict[bytes, bytes]:
    headers: dict[bytes, bytes] = {}
    if credential is not None:
        if credential.startswith("raw:"):
            headers[b"Authorization"] = credential[4:].encode("latin-1")
        else:
            headers[b"Authorization"] = f"Bearer {served.tokens[credential]}".encode()
    if content_type is not None:
        headers[b"Content-Type"] = content_type.encode("latin-1")
    return headers


def _body(value: Any, mangle: int) -> bytes:
    data = json.dumps(value, ensure_ascii=mangle % 2 == 0).encode("utf-8", "surrogatepass")
    if mangle == 2 and data:
        data = data[: len(data) // 2]  # cut short
    elif mangle == 3:
        data = data.replace(b'"', b"'", 1)
    elif mangle == 4:
        data = b"\xff\xfe" + data  # not UTF-8
    return data


# -- the fuzz tests ---------------------------------------------------------------------------

@FUZZ_SETTINGS
@given(body=heartbeats, credential=mostly(st.sampled_from(["service", "admin"]), credentials),
       content_type=mostly(st.just("application/json"), content_types),
       mangle=mostly(st.just(0), st.integers(0, 6)))
def test_heartbeat_bodies_and_headers(served: Served, http: httpx.Client, body: dict[str, Any],
                                      credential: str | None, content_type: str | None,
                                      mangle: int) -> None:
    resp = http.post("/api/v1/client/heartbeat", content=_body(body, mangle),
                     headers=_headers(served, credential, content_type))
    check(resp)
    if resp.status_code == 200:
        assert resp.json()["status"] in ("online", "offline")


@FUZZ_SETTINGS
@given(items=st.one_of(st.lists(heartbeats, max_size=8), json_values),
       credential=st.sampled_from(["service", "admin", "viewer"]), mangle=st.integers(0, 6))
def test_heartbeat_batches(served: Served, http: httpx.Client, items: Any, credential: str,
                           mangle: int) -> None:
    resp = http.post("/api/v1/client/heartbeats", content=_body({"heartbeats": items}, mangle),
                     headers=_headers(served, credential, "application/json"))
    check(resp)
    if resp.status_code == 200:
        results = resp.json()["results"]
        assert len(results) == len(items)
        for r in results:
            assert r["ok"] or r["error"] in ("validation_failed", "forbidden", "rate_limited",
                                             "unknown_client")


@FUZZ_SETTINGS
@given(body=registrations, credential=mostly(st.just("admin"), credentials),
       mangle=mostly(st.just(0), st.integers(0, 6)))
def test_registrations(served: Served, http: httpx.Client, body: dict[str, Any],
                       credential: str | None, mangle: int) -> None:
    resp = http.post("/api/v1/clients", content=_body(body, mangle),
                     headers=_headers(served, credential, "application/json"))
    check(resp)
    if resp.status_code in (200, 201):
        view = resp.json()
        again = http.get(f"/api/v1/clients/{quote(view['clientId'], safe='')}",
                         headers=_headers(served, "viewer", None))
        assert again.status_code == 200 and again.json()["name"] == view["name"]


@FUZZ_SETTINGS
@given(route=management, credential=mostly(st.just("admin"), credentials),
       mangle=mostly(st.just(0), st.integers(0, 6)))
def test_management_bodies(served: Served, http: httpx.Client, route: tuple[str, dict[str, Any]],
                           credential: str | None, mangle: int) -> None:
    path, body = route
    check(http.post(path, content=_body(body, mangle),
                    headers=_headers(served, credential, "application/json")))


ROUTES = [
    ("GET", "/api/v1/client/heartbeat/status/{id}"), ("GET", "/api/v1/clients/{id}"),
    ("DELETE", "/api/v1/clients/{id}"), ("GET", "/api/v1/clients/{id}/events"),
    ("POST", "/api/v1/clients/{id}/tokens"), ("DELETE", "/api/v1/clients/{id}/tokens"),
    ("GET", "/api/v1/websocket/users/{id}/connections"), ("POST", "/api/v1/websocket/ping/{id}"),
    ("GET", "/api/v1/clients"), ("GET", "/api/v1/websocket/stats"),
    ("GET", "/api/v1/websocket/connections"), ("GET", "/api/v1/websocket/online-users"),
    ("GET", "/api/v1/websocket/health"), ("GET", "/api/v1/health"), ("GET", "/metrics"),
    ("GET", "/api/v1/dashboard-config"), ("PUT", "/api/v1/clients"),
    ("PATCH", "/api/v1/client/heartbeat"), ("GET", "/api/v1/client/heartbeat"),
    ("GET", "/api/v1/{id}"), ("POST", "/{id}"),
    ("GET", "/api/v1/tasks"), ("GET", "/api/v1/tasks/{id}"), ("POST", "/api/v1/tasks/{id}/cancel"),
    ("GET", "/api/v1/audit"), ("GET", "/api/v1/agents"), ("DELETE", "/api/v1/tasks/{id}"),
]


@FUZZ_SETTINGS
@given(route=st.sampled_from(ROUTES), cid=st.one_of(st.text(max_size=40),
                                                   st.from_regex(r"[a-z0-9.-]{1,200}", fullmatch=True)),
       query=st.dictionaries(st.sampled_from(["status", "q", "tag", "limit", "offset", "x",
                                              "since", "until", "kind", "clientId"]),
                             st.text(max_size=30), max_size=4),
       credential=credentials, raw_body=st.one_of(st.none(), st.binary(max_size=200)))
def test_paths_queries_and_methods(served: Served, http: httpx.Client, route: tuple[str, str],
                                   cid: str, query: dict[str, str], credential: str | None,
                                   raw_body: bytes | None) -> None:
    method, template = route
    url = template.replace("{id}", quote(cid, safe="") or "x")
    resp = http.request(method, url, params=query, content=raw_body,
                        headers=_headers(served, credential, None))
    check(resp)


@FUZZ_SETTINGS
@given(size=st.sampled_from([MAX_BODY_BYTES - 1, MAX_BODY_BYTES, MAX_BODY_BYTES + 1,
                             10 * MAX_BODY_BYTES]),
       path=st.sampled_from(["/api/v1/client/heartbeat", "/api/v1/clients", "/api/v1/publish"]),
       chunked=st.booleans())
def test_body_size_limit(served: Served, http: httpx.Client, size: int, path: str,
                         chunked: bool) -> None:
    pad = max(0, size - len(b'{"clientId":"big","metadata":{"p":""}}'))
    data = b'{"clientId":"big","metadata":{"p":"' + b"x" * pad + b'"}}'

    def gen() -> Iterator[bytes]:
        for i in range(0, len(data), 1000):
            yield data[i:i + 1000]

    resp = http.post(path, content=gen() if chunked else data,
                     headers=_headers(served, "admin", "application/json"))
    check(resp)
    if len(data) > MAX_BODY_BYTES:
        assert resp.status_code == 413


def test_the_daemon_survived_it_all(served: Served, http: httpx.Client) -> None:
    assert served.process.poll() is None, "rpad died"
    health = http.get("/api/v1/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert http.get("/api/v1/websocket/health").json()["status"] == "ok"
    # Every stored client still serializes, including whatever the fuzzer got accepted.
    clients = http.get("/api/v1/clients?limit=10000", headers=_headers(served, "viewer", None))
    assert clients.status_code == 200
    assert_clean_log(served)
