"""The HTTP API (SPEC §3) against the whole daemon on port 0: the seed payload, the auth matrix
over every core endpoint, every error code with its full JSON body, limits and batches."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from rpad.config import Config

from .conftest import Running, start_daemon

ISSUER = "https://login.example"
AUDIENCE = "rpad"
HB = "/api/v1/client/heartbeat"
SEED = {"client_id": 1, "timestamp": "2025-07-23T12:00:00Z", "status": "online",
        "version": "1.0.0", "ip_address": "192.168.1.100"}

PRIVATE: dict[str, Any] = {
    "RS256": rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "ES256": ec.generate_private_key(ec.SECP256R1()),
    "EdDSA": ed25519.Ed25519PrivateKey.generate(),
}


def pem(alg: str) -> bytes:
    return bytes(PRIVATE[alg].public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def err(code: str, message: str, details: list[dict[str, str]] | None = None) -> dict[str, Any]:
    return {"error": code, "message": message, "details": details or []}


def parse_time(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def db_rows(path: Path, query: str) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return db.execute(query).fetchall()
    finally:
        db.close()


def camel_keys_only(value: Any) -> bool:
    if isinstance(value, dict):
        return all("_" not in k and camel_keys_only(v) for k, v in value.items())
    if isinstance(value, list):
        return all(camel_keys_only(v) for v in value)
    return True


@pytest.fixture
def key_files(tmp_path: Path) -> list[str]:
    files = []
    for alg in PRIVATE:
        f = tmp_path / f"{alg}.pem"
        f.write_bytes(pem(alg))
        files.append(str(f))
    return files


Boot = Callable[..., Awaitable[Running]]


@pytest.fixture
async def boot(nursery: trio.Nursery, make_config: Callable[..., Config]) -> AsyncIterator[Boot]:
    """``await boot(presence={...})``: the daemon with those config sections, on port 0."""
    running: list[Running] = []

    async def start(**sections: Any) -> Running:
        r = await start_daemon(nursery, make_config(**sections))
        running.append(r)
        return r

    yield start
    for r in running:
        await r.http.aclose()
        r.daemon.stop()


# -- the seed payload and the response shapes --------------------------------------------------


async def test_the_seed_payload_works_unchanged(boot: Boot) -> None:
    with trio.fail_after(20):
        rpad = await boot()
        r = await rpad.request("POST", HB, json=SEED, role="agent", sub="1")
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/json"
        body = r.json()
        server_time = parse_time(body["serverTime"])
        assert body == {
            "clientId": "1", "status": "online", "serverTime": body["serverTime"],
            "timeoutSeconds": 60.0, "nextHeartbeatInSeconds": 20.0,
            "clockSkewSeconds": body["clockSkewSeconds"],
        }
        assert body["clockSkewSeconds"] == pytest.approx(
            parse_time("2025-07-23T12:00:00Z") - server_time, abs=0.002)
        r = await rpad.request("GET", "/api/v1/clients/1", role="viewer")
        view = r.json()
        # The detail API adds availability (the status endpoint and pushes do not).
        uptime = view.pop("uptime")
        assert set(uptime) == {"24h", "7d", "30d"} and uptime["24h"]["percent"] == 100.0
        assert view == {
            "clientId": "1", "name": None, "status": "online", "reportedStatus": "online",
            "version": "1.0.0", "ipAddress": "192.168.1.100", "osType": None, "tags": [],
            "metadata": {}, "lastHeartbeatAt": body["serverTime"],
            "onlineSince": body["serverTime"], "offlineSince": None,
            "registeredAt": body["serverTime"], "clockSkewSeconds": body["clockSkewSeconds"],
            "heartbeatTimeoutSeconds": 60.0, "intervalSeconds": None, "latestMetrics": None,
            "capabilities": None,
        }
        r = await rpad.request("GET", "/api/v1/client/heartbeat/status/1", role="agent", sub="1")
        assert r.status_code == 200 and r.json() == view


async def test_camel_case_in_and_out(boot: Boot) -> None:
    with trio.fail_after(20):
        rpad = await boot()
        metrics = {"cpuUsagePercent": 12.5, "memoryUsageBytes": 1000, "memoryTotalBytes": 4000,
                   "diskUsageBytes": 1, "diskTotalBytes": 2, "networkRxInstantBps": 3,
                   "networkTxInstantBps": 4, "uptimeSeconds": 5, "load1": 0.1, "load5": 0.2,
                   "load15": 0.3}
        r = await rpad.heartbeat("robot-7", status="busy", version="2.0", ipAddress="10.1.1.1",
                                 osType="linux", name="Robot 7", intervalSeconds=15,
                                 metrics=metrics, metadata={"site": "north"})
        assert r.status_code == 200, r.text
        assert r.json()["nextHeartbeatInSeconds"] == 15.0
        # snake_case spellings of the seed agents are accepted too
        snake = {"client_id": "robot-8", "ip_address": "10.1.1.2", "os_type": "windows",
                 "interval_seconds": 40, "metrics": {"cpu_usage_percent": 1.5}}
        r = await rpad.request("POST", HB, json=snake, role="service")
        assert r.status_code == 200, r.text
        assert r.json()["timeoutSeconds"] == 80.0  # twice the declared interval
        r = await rpad.request("GET", "/api/v1/clients", role="viewer")
        views = {v["clientId"]: v for v in r.json()["clients"]}
        assert camel_keys_only(r.json())
        v7 = views["robot-7"]
        assert (v7["reportedStatus"], v7["version"], v7["ipAddress"], v7["osType"], v7["name"],
                v7["intervalSeconds"], v7["latestMetrics"], v7["metadata"]) == (
            "busy", "2.0", "10.1.1.1", "linux", "Robot 7", 15.0,
            {k: float(v) for k, v in metrics.items()}, {"site": "north"})
        v8 = views["robot-8"]
        assert (v8["ipAddress"], v8["osType"], v8["heartbeatTimeoutSeconds"],
                v8["latestMetrics"]) == ("10.1.1.2", "windows", 80.0, {"cpuUsagePercent": 1.5})


async def test_ip_address_defaults_to_the_peer(boot: Boot) -> None:
    with trio.fail_after(20):
        rpad = await boot()
        await rpad.heartbeat("p")
        r = await rpad.request("GET", "/api/v1/clients/p")
        assert r.json()["ipAddress"] == "127.0.0.1"


# -- the auth matrix ---------------------------------------------------------------------------


class Matrix:
    """Builds each kind of credential for a target client id."""

    def __init__(self, rpad: Running) -> None:
        self.rpad = rpad
        auth = rpad.daemon.auth
        assert auth is not None
        self.secret = auth.keys.secrets[0]
        self.now = int(rpad.daemon.wall_clock())

    def own(self, **claims: Any) -> str:
        base = {"iat": self.now, "exp": self.now + 600, "iss": ISSUER, "aud": AUDIENCE}
        base.update(claims)
        return jwt.encode({k: v for k, v in base.items() if v is not None}, self.secret,
                          algorithm="HS256")

    def external(self, alg: str, role: str) -> str:
        return jwt.encode({"sub": f"ext-{role}", "role": role, "exp": self.now + 600,
                           "iss": ISSUER, "aud": AUDIENCE}, PRIVATE[alg], algorithm=alg)

    def hs256_with_public_key_bytes(self) -> str:
        claims = {"sub": "x", "role": "admin", "exp": self.now + 600, "iss": ISSUER,
                  "aud": AUDIENCE}
        signing_input = (b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + "."
                         + b64(json.dumps(claims).encode()))
        sig = hmac.new(pem("RS256"), signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{b64(sig)}"

    def alg_none(self) -> str:
        claims = {"sub": "x", "role": "admin", "exp": self.now + 600}
        return (b64(json.dumps({"alg": "none", "typ": "JWT"}).encode()) + "."
                + b64(json.dumps(claims).encode()) + ".")

    async def header(self, cred: str, cid: str) -> dict[str, str]:
        if cred == "none":
            return {}
        if cred == "basic":
            return {"Authorization": "Basic dXNlcjpwYXNz"}
        makers: dict[str, Callable[[], str]] = {
            "malformed": lambda: "not-a-jwt",
            "agent-own": lambda: self.own(sub=cid, role="agent", gen=0),
            "agent-other": lambda: self.own(sub="someone-else", role="agent", gen=0),
            "viewer": lambda: self.own(sub="v", role="viewer"),
            "service": lambda: self.own(sub="s", role="service"),
            "admin": lambda: self.own(sub="a", role="admin"),
            "viewer-RS256": lambda: self.external("RS256", "viewer"),
            "service-ES256": lambda: self.external("ES256", "service"),
            "admin-EdDSA": lambda: self.external("EdDSA", "admin"),
            "expired": lambda: self.own(sub="a", role="admin", iat=self.now - 7200,
                                        exp=self.now - 3600),
            "alg-none": self.alg_none,
            "hs256-public-key": self.hs256_with_public_key_bytes,
            "wrong-issuer": lambda: self.own(sub="a", role="admin", iss="https://evil.example"),
            "wrong-audience": lambda: self.own(sub="a", role="admin", aud="other"),
            "revoked": lambda: self.own(sub=cid, role="agent", gen=0),
        }
        token = makers[cred]()
        if cred == "revoked":
            r = await self.rpad.request("DELETE", f"/api/v1/clients/{cid}/tokens")
            assert r.status_code == 200, r.text
        return {"Authorization": f"Bearer {token}"}


NO_TOKEN = err("unauthorized", "an Authorization: Bearer <token> header is required")
REFUSED_TOKENS: dict[str, dict[str, Any]] = {
    "none": NO_TOKEN,
    "basic": NO_TOKEN,
    "malformed": err("unauthorized", "the token is malformed (not a JWT)"),
    "expired": err("token_expired", "the token has expired"),
    "alg-none": err("unauthorized", "the token's algorithm 'none' is not accepted"),
    "hs256-public-key": err("unauthorized", "the token's signature does not verify"),
    "wrong-issuer": err("unauthorized", "the token is from another issuer"),
    "wrong-audience": err("unauthorized", "the token is for another audience"),
    "revoked": err("token_revoked", "the token has been revoked"),
}
ALLOWED_ROLES = ["agent-own", "agent-other", "viewer", "service", "admin", "viewer-RS256",
                 "service-ES256", "admin-EdDSA"]
ROLE_OF = {"agent-own": "agent", "agent-other": "agent", "viewer": "viewer",
           "service": "service", "admin": "admin", "viewer-RS256": "viewer",
           "service-ES256": "service", "admin-EdDSA": "admin"}


def needs(role: str) -> Callable[[str], tuple[int, dict[str, Any]] | None]:
    """The refusal for a credential on an endpoint that needs ``role`` (None: allowed)."""
    order = ["agent", "viewer", "service", "admin"]

    def check(cred: str) -> tuple[int, dict[str, Any]] | None:
        have = ROLE_OF[cred]
        if order.index(have) >= order.index(role):
            return None
        return 403, err("forbidden", f"this needs the {role} role or higher; "
                                     f"the token's role is {have}")

    return check


def own_client_or(role: str, *, write: bool) -> Callable[[str], tuple[int, dict[str, Any]] | None]:
    def check(cred: str) -> tuple[int, dict[str, Any]] | None:
        if cred == "agent-own":
            return None
        if cred == "agent-other":
            return 403, err("forbidden", "an agent token may only be used for its own client id")
        if write and ROLE_OF[cred] == "viewer":
            return 403, err("forbidden", "sending heartbeats needs the agent, service or admin "
                                         "role; the token's role is viewer")
        return needs(role)(cred)

    return check


# (name, method, path template, JSON body template, status when allowed, rule)
ENDPOINTS: list[tuple[str, str, str, Any, int, Callable[[str], Any]]] = [
    ("heartbeat", "POST", HB, {"clientId": "{cid}"}, 200, own_client_or("service", write=True)),
    ("batch", "POST", "/api/v1/client/heartbeats", {"heartbeats": [{"clientId": "{cid}"}]}, 200,
     needs("service")),
    ("status", "GET", "/api/v1/client/heartbeat/status/{cid}", None, 200,
     own_client_or("viewer", write=False)),
    ("list", "GET", "/api/v1/clients", None, 200, needs("viewer")),
    ("register", "POST", "/api/v1/clients", {"clientId": "{cid}"}, 200, needs("admin")),
    ("read", "GET", "/api/v1/clients/{cid}", None, 200, needs("viewer")),
    ("remove", "DELETE", "/api/v1/clients/{cid}", None, 200, needs("admin")),
    ("events", "GET", "/api/v1/clients/{cid}/events", None, 200, needs("viewer")),
    ("mint", "POST", "/api/v1/clients/{cid}/tokens", None, 201, needs("admin")),
    ("revoke", "DELETE", "/api/v1/clients/{cid}/tokens", None, 200, needs("admin")),
    ("health", "GET", "/api/v1/health", None, 200, lambda cred: None),
]


def fill(template: Any, cid: str) -> Any:
    if template is None:
        return None
    return json.loads(json.dumps(template).replace("{cid}", cid))


async def test_auth_matrix_every_endpoint_every_credential(
        boot: Boot, key_files: list[str]) -> None:
    sections: dict[str, Any] = {
        "auth": {"issuer": ISSUER, "audience": AUDIENCE, "public_key_file": key_files[0],
                 "extra_public_key_files": key_files[1:], "max_failures_per_minute": 1_000_000},
        "presence": {"min_interval_seconds": 0},
        "logging": {"level": "error"},
    }
    with trio.fail_after(120):
        rpad = await boot(**sections)
        matrix = Matrix(rpad)
        creds = list(REFUSED_TOKENS) + ALLOWED_ROLES
        results: dict[tuple[str, str], tuple[int, Any]] = {}
        for n, (name, method, path, body, ok_status, rule) in enumerate(ENDPOINTS):
            for m, cred in enumerate(creds):
                cid = f"c{n}-{m}"
                r = await rpad.request("POST", "/api/v1/clients", json={"clientId": cid})
                assert r.status_code == 201, r.text
                headers = await matrix.header(cred, cid)
                r = await rpad.http.request(method, rpad.http_url + path.replace("{cid}", cid),
                                            headers=headers, json=fill(body, cid))
                results[(name, cred)] = (r.status_code, r.json())

        problems = []
        for name, _method, _path, _body, ok_status, rule in ENDPOINTS:
            for cred in creds:
                status, body = results[(name, cred)]
                if name == "health":
                    expected_status, expected_body = 200, None
                elif cred in REFUSED_TOKENS:
                    expected_status, expected_body = 401, REFUSED_TOKENS[cred]
                else:
                    refusal = rule(cred)
                    expected_status, expected_body = refusal if refusal else (ok_status, None)
                if status != expected_status or (expected_body is not None
                                                 and body != expected_body):
                    problems.append(f"{name} × {cred}: {status} {body}, expected "
                                    f"{expected_status} {expected_body}")
        assert problems == []


async def test_errors_reveal_nothing_about_other_clients(
        boot: Boot) -> None:
    with trio.fail_after(20):
        rpad = await boot()
        await rpad.heartbeat("exists")
        for path in ("/api/v1/client/heartbeat/status/exists",
                     "/api/v1/client/heartbeat/status/missing"):
            r = await rpad.request("GET", path, role="agent", sub="me")
            assert (r.status_code, r.json()) == (403, err(
                "forbidden", "an agent token may only be used for its own client id"))
        for cid in ("exists", "missing"):
            r = await rpad.request("GET", f"/api/v1/clients/{cid}", role="agent", sub="me")
            assert (r.status_code, r.json()) == (403, err(
                "forbidden", "this needs the viewer role or higher; the token's role is agent"))


# -- every error code with its full body -------------------------------------------------------


async def test_400_unreadable_json(boot: Boot) -> None:
    with trio.fail_after(20):
        rpad = await boot()
        not_json = err("invalid_json", "the request body is not valid JSON")
        not_object = err("invalid_json", "the request body must be a JSON object")
        for path in (HB, "/api/v1/client/heartbeats", "/api/v1/clients",
                     "/api/v1/clients/x/tokens"):
            for content, expected in ((b"{nope", not_json), (b"\xff\xfe", not_json),
                                      (b"[1, 2]", not_object), (b'"text"', not_object)):
                r = await rpad.request("POST", path, content=content)
                assert (r.status_code, r.json()) == (400, expected), (path, content)
        r = await rpad.request("POST", HB, content=b"")
        assert (r.status_code, r.json()) == (400, not_json)


async def test_404_unknown_client_and_unknown_endpoint(
        boot: Boot) -> None:
    with trio.fail_after(20):
        rpad = await boot(presence={"registration": "manual"})
        unknown = err("unknown_client", "no client with this id is registered")
        for method, path in (("GET", "/api/v1/clients/ghost"),
                             ("DELETE", "/api/v1/clients/ghost"),
                             ("GET", "/api/v1/clients/ghost/events"),
                             ("GET", "/api/v1/client/heartbeat/status/ghost"),
                             ("POST", "/api/v1/clients/ghost/tokens")):
            r = await rpad.request(method, path)
            assert (r.status_code, r.json()) == (404, unknown), path
        # manual registration: unknown ids get 404 until an admin registers them
        r = await rpad.heartbeat("ghost")
        assert (r.status_code, r.json()) == (404, unknown)
        r = await rpad.request("POST", "/api/v1/clients", json={"clientId": "ghost"})
        assert r.status_code == 201
        assert (await rpad.heartbeat("ghost")).status_code == 200
        r = await rpad.request("GET", "/api/v1/nope")
        assert (r.status_code, r.json()) == (404, err("not_found", "no such endpoint"))


async def test_405_method_not_allowed(boot: Boot) -> None:
    with trio.fail_after(20):
        rpad = await boot()
        for method, path in (("PUT", "/api/v1/clients"), ("GET", HB),
                             ("PATCH", "/api/v1/clients/x"), ("POST", "/api/v1/health")):
            r = await rpad.request(method, path)
            assert (r.status_code, r.json()) == (405, err(
                "method_not_allowed", f"{method} is not allowed on {path}")), path


async def test_413_body_over_max_body_bytes(boot: Boot) -> None:
    with trio.fail_after(20):
        rpad = await boot(http={"max_body_bytes": 1024})
        big = json.dumps({"clientId": "a", "metadata": {"x": "y" * 1100}}).encode()
        length = len(big)

        async def chunked() -> Any:
            yield big[:500]
            yield big[500:]

        for path in (HB, "/api/v1/clients", "/api/v1/client/heartbeats"):
            r = await rpad.request("POST", path, content=big)
            assert (r.status_code, r.json()) == (413, err(
                "body_too_large", f"the body is {length} bytes; the limit is 1024")), path
            r = await rpad.request("POST", path, content=chunked())
            assert (r.status_code, r.json()) == (413, err(
                "body_too_large", "the body is larger than 1024 bytes")), path
        # Exactly at the limit is fine.
        body: dict[str, Any] = {"clientId": "a", "metadata": {"x": ""}}
        pad = 1024 - len(json.dumps(body).encode())
        body["metadata"]["x"] = "y" * pad
        r = await rpad.request("POST", HB, content=json.dumps(body).encode())
        assert r.status_code == 200, r.text


VALIDATION_CASES: list[tuple[str, Any, list[dict[str, str]]]] = [
    (HB, {}, [{"field": "clientId", "message": "is required"}]),
    (HB, {"clientId": "bad id!"},
     [{"field": "clientId", "message": "must be 1 to 128 characters of A-Z a-z 0-9 . _ : -"}]),
    (HB, {"client_id": True},
     [{"field": "clientId", "message": "must be a string or an integer, got a boolean"}]),
    (HB, {"clientId": "a", "timestamp": "yesterday"},
     [{"field": "timestamp", "message": "must be an ISO 8601 time such as 2025-07-23T12:00:00Z"}]),
    (HB, {"clientId": "a", "status": "on fire!"},
     [{"field": "status",
       "message": "must be a short word such as online, busy, idle, error or offline"}]),
    (HB, {"clientId": "a", "ip_address": 5, "intervalSeconds": -1, "metrics": {"load1": "x"}},
     [{"field": "ipAddress", "message": "must be a string, got a number"},
      {"field": "intervalSeconds", "message": "must be at least 0.001, got -1"},
      {"field": "metrics.load1", "message": "must be a number, got a string"}]),
    (HB, {"clientId": "a", "metrics": {"cpu_usage_percent": -5}},
     [{"field": "metrics.cpuUsagePercent", "message": "must be at least 0, got -5"}]),
    (HB, {"clientId": "a", "metadata": [1]},
     [{"field": "metadata", "message": "must be a JSON object, got an array"}]),
    (HB, {"clientId": "a", "ipAddress": "1.1.1.1", "ip_address": "2.2.2.2"},
     [{"field": "ipAddress", "message": "given twice, as ipAddress and ip_address: send one of "
                                       "them"}]),
    # One spelling per field, even with equal values (the OpenAPI document says so exactly).
    (HB, {"clientId": "a", "client_id": "a"},
     [{"field": "clientId", "message": "given twice, as clientId and client_id: send one of "
                                       "them"}]),
    ("/api/v1/clients", {"clientId": "a", "heartbeatTimeoutSeconds": 60,
                         "heartbeat_timeout_seconds": 60},
     [{"field": "heartbeatTimeoutSeconds", "message": "given twice, as heartbeatTimeoutSeconds "
                                                      "and heartbeat_timeout_seconds: send one "
                                                      "of them"}]),
    # A metric in both spellings: both are checked.
    (HB, {"clientId": "a", "metrics": {"cpuUsagePercent": 5, "cpu_usage_percent": "x"}},
     [{"field": "metrics.cpuUsagePercent", "message": "must be a number, got a string"}]),
    ("/api/v1/clients", {"clientId": "a", "heartbeat_timeout_seconds": 0, "tags": ["ok", 7]},
     [{"field": "tags[1]", "message": "must be a string of 1 to 64 printable characters"},
      {"field": "heartbeatTimeoutSeconds", "message": "must be at least 1, got 0"}]),
    ("/api/v1/clients", {"clientId": "a", "colour": "red"},
     [{"field": "colour", "message": "is not a known field (clientId, name, tags, "
                                     "heartbeatTimeoutSeconds, metadata)"}]),
    ("/api/v1/client/heartbeats", {"heartbeats": {"clientId": "a"}},
     [{"field": "heartbeats", "message": "must be an array of heartbeat objects"}]),
    ("/api/v1/client/heartbeats", {"heartbeats": [{"clientId": "a"}] * 1001},
     [{"field": "heartbeats", "message": "must hold at most 1000 heartbeats, got 1001"}]),
    ("/api/v1/clients/a/tokens", {"ttl": "forever"},
     [{"field": "ttl", "message": "'forever' is not a duration such as 90s, 15m, 1h, 30d "
                                  "or never"}]),
    ("/api/v1/clients/a/tokens", {"ttl": "3662d"},
     [{"field": "ttl", "message": "a token lifetime must be at most 523 weeks (3661 days), "
                                  "or never"}]),
]


@pytest.mark.parametrize(("path", "body", "details"), VALIDATION_CASES)
async def test_422_names_each_field_by_its_camel_case_path(
        boot: Boot, path: str, body: Any,
        details: list[dict[str, str]]) -> None:
    with trio.fail_after(20):
        rpad = await boot()
        r = await rpad.request("POST", path, json=body)
        fields = ", ".join(d["field"] for d in details)
        plural = "s" if len(details) > 1 else ""
        message = f"invalid field{plural}: {fields}"
        assert (r.status_code, r.json()) == (422, err("validation_failed", message, details))


async def test_422_query_and_path_parameters(boot: Boot) -> None:
    with trio.fail_after(20):
        rpad = await boot()
        await rpad.heartbeat("a")
        cases = [
            ("/api/v1/clients?status=sleepy", "invalid query parameter: status",
             [{"field": "status", "message": "must be online, offline or unknown"}]),
            ("/api/v1/clients?limit=ten", "invalid query parameter: limit",
             [{"field": "limit", "message": "must be an integer"}]),
            ("/api/v1/clients?limit=0", "invalid query parameter: limit",
             [{"field": "limit", "message": "must be from 1 to 10000"}]),
            # As the document types them: no empty value, no sign but -, no "_" or spaces.
            ("/api/v1/clients?limit=", "invalid query parameter: limit",
             [{"field": "limit", "message": "must be an integer"}]),
            ("/api/v1/clients?limit=1_0", "invalid query parameter: limit",
             [{"field": "limit", "message": "must be an integer"}]),
            ("/api/v1/clients?offset=%2B1", "invalid query parameter: offset",
             [{"field": "offset", "message": "must be an integer"}]),
            ("/api/v1/clients?limit=" + "9" * 5000, "invalid query parameter: limit",
             [{"field": "limit", "message": "must be from 1 to 10000"}]),

            ("/api/v1/clients?offset=-1", "invalid query parameter: offset",
             [{"field": "offset", "message": "must be from 0 to 1000000000"}]),
            ("/api/v1/clients/a/events?limit=5000", "invalid query parameter: limit",
             [{"field": "limit", "message": "must be from 1 to 1000"}]),
            ("/api/v1/clients/bad%20id", "invalid field: clientId",
             [{"field": "clientId",
               "message": "must be 1 to 128 characters of A-Z a-z 0-9 . _ : -"}]),
        ]
        for path, message, details in cases:
            r = await rpad.request("GET", path)
            assert (r.status_code, r.json()) == (422, err("validation_failed", message,
                                                          details)), path
        r = await rpad.request("POST", "/api/v1/websocket/ping/u?timeoutSeconds=1_0")
        assert (r.status_code, r.json()) == (422, err(
            "validation_failed", "invalid query parameter: timeoutSeconds",
            [{"field": "timeoutSeconds",
              "message": "must be a number of seconds above 0 and at most 30"}]))


async def test_429_heartbeats_faster_than_the_minimum_interval(
        boot: Boot) -> None:
    with trio.fail_after(20):
        rpad = await boot(presence={"min_interval_seconds": 5})
        assert (await rpad.heartbeat("fast")).status_code == 200
        r = await rpad.heartbeat("fast")
        assert (r.status_code, r.json()) == (429, err(
            "rate_limited",
            "heartbeats from this client are more frequent than the minimum interval"))
        assert r.headers["Retry-After"] == "5"
        # Another client is not affected, and a clean shutdown always gets through.
        assert (await rpad.heartbeat("other")).status_code == 200
        r = await rpad.heartbeat("fast", status="offline")
        assert r.status_code == 200 and r.json()["status"] == "offline"


async def test_429_too_many_failed_authentications(
        boot: Boot) -> None:
    with trio.fail_after(20):
        rpad = await boot(auth={"max_failures_per_minute": 3},
                                                  logging={"level": "error"})
        for _ in range(3):
            r = await rpad.request("GET", "/api/v1/clients", token="bad")
            assert r.status_code == 401
        for token in ("bad", rpad.token("admin")):  # even a good token waits now
            r = await rpad.request("GET", "/api/v1/clients", token=token)
            assert (r.status_code, r.json()) == (429, err(
                "too_many_auth_failures",
                "too many failed authentications from this address; wait and retry"))
            assert 1 <= int(r.headers["Retry-After"]) <= 60


async def test_503_when_the_database_cannot_commit(
        boot: Boot) -> None:
    with trio.fail_after(20):
        rpad = await boot(logging={"level": "error"})
        store = rpad.daemon.store
        assert store is not None and store._db is not None
        store._db.execute("PRAGMA query_only = ON")  # SQLite itself refuses to write
        r = await rpad.heartbeat("a")
        assert (r.status_code, r.json()) == (503, err(
            "storage_unavailable",
            "the database cannot commit right now; retry later"))
        assert r.headers["Retry-After"] == "5"
        store._db.execute("PRAGMA query_only = OFF")
        r = await rpad.heartbeat("b")
        assert r.status_code == 200


async def test_no_input_produces_a_500(boot: Boot) -> None:
    bodies: list[bytes] = [
        b"", b"null", b"0", b"{}", b"[]", b"{" * 5000, b"[" * 100_000, b"\x00",
        b'{"clientId": "a", "metadata": {"x": NaN}}',
        b'{"clientId": "a", "metadata": {"x": Infinity}, "metrics": {"load1": -Infinity}}',
        b'{"clientId": "a", "intervalSeconds": 1' + b"0" * 400 + b"}",
        b'{"clientId": "a", "timestamp": 1' + b"0" * 400 + b"}",
        b'{"clientId": "a", "timestamp": 1e300}', b'{"clientId": "a", "timestamp": -1}',
        b'{"clientId": "a", "timestamp": "9999-12-31T23:59:59-14:00"}',
        b'{"clientId": "a", "timestamp": "0001-01-01T00:00:00+14:00"}',
        b'{"clientId": 1' + b"0" * 5000 + b"}",
        b'{"clientId": "a", "metadata": ' + b'{"a":' * 2000 + b"1" + b"}" * 2000 + b"}",
        b'{"clientId": "a", "name": "\\ud800"}', b'{"clientId": "\\u0000"}',
        b'{"clientId": "a", "\\udc80": 1}', b'{"clientId": "a", "metadata": {"\\ud800": 1}}',
        b'{"clientId": "a", "tags": ["\\udfff"], "version": "\\udfff"}',
        b'{"heartbeats": [null, 1, "x", [], {"clientId": {"x": 1}}]}',
        b'{"clientId": "a", "tags": [' + b'"t",' * 40 + b'"t"]}',
        b'{"clientId": "a", "heartbeatTimeoutSeconds": 1e400}',
        b'{"ttl": 5}', b'{"ttl": "1' + b"0" * 400 + b'd"}', b'{"ttl": "never"}',
    ]
    paths = [HB, "/api/v1/client/heartbeats", "/api/v1/clients", "/api/v1/clients/a/tokens"]
    with trio.fail_after(60):
        rpad = await boot(presence={"min_interval_seconds": 0},
                                                  logging={"level": "error"})
        for path in paths:
            for body in bodies:
                r = await rpad.request("POST", path, content=body)
                assert r.status_code < 500, (path, body[:60], r.text)
                data = r.json()
                assert isinstance(data, dict)
                if r.status_code >= 400:
                    assert set(data) == {"error", "message", "details"}, data
        for path in ("/api/v1/clients?limit=" + "9" * 5000, "/api/v1/clients?q=%00%ff",
                     "/api/v1/clients?tag=" + "x" * 10000, "/api/v1/clients/%ff%fe",
                     "/api/v1/clients/a/events?limit=1e3", "/api/v1/clients/" + "a" * 5000):
            r = await rpad.request("GET", path)
            assert r.status_code < 500, (path[:60], r.text)
        # After all that, every stored view still serializes.
        r = await rpad.request("GET", "/api/v1/clients")
        assert r.status_code == 200


# -- the endpoints' behaviour -----------------------------------------------------------------


async def test_batch_gives_per_item_results_with_one_commit(
        boot: Boot) -> None:
    with trio.fail_after(20):
        rpad = await boot(presence={"min_interval_seconds": 10})
        assert (await rpad.heartbeat("limited")).status_code == 200
        commits_before = rpad.daemon.store.commits  # type: ignore[union-attr]
        r = await rpad.request("POST", "/api/v1/client/heartbeats", role="service", json={
            "heartbeats": [
                {"client_id": 10, "ip_address": "10.0.0.10"},
                {"clientId": "bad id"},
                "not an object",
                {"clientId": "limited"},
                {"clientId": "ok-2", "status": "busy"},
            ]})
        assert r.status_code == 200, r.text
        body = r.json()
        results = body["results"]
        server_time = results[0]["serverTime"]
        ok = {"status": "online", "serverTime": server_time, "timeoutSeconds": 60.0,
              "nextHeartbeatInSeconds": 20.0, "clockSkewSeconds": None}
        assert body == {"accepted": 2, "rejected": 3, "results": [
            {"index": 0, "ok": True, "clientId": "10", **ok},
            {"index": 1, "ok": False, "error": "validation_failed",
             "message": "invalid field: heartbeats[1].clientId",
             "details": [{"field": "heartbeats[1].clientId",
                          "message": "must be 1 to 128 characters of A-Z a-z 0-9 . _ : -"}]},
            {"index": 2, "ok": False, "error": "validation_failed",
             "message": "invalid field: heartbeats[2]",
             "details": [{"field": "heartbeats[2]",
                          "message": "must be a JSON object, got a string"}]},
            {"index": 3, "clientId": "limited", "ok": False, "error": "rate_limited",
             "message": "heartbeats from this client are too frequent",
             "retryAfterSeconds": results[3]["retryAfterSeconds"]},
            {"index": 4, "ok": True, "clientId": "ok-2", **ok},
        ]}
        assert 9 < results[3]["retryAfterSeconds"] <= 10
        assert rpad.daemon.store.commits - commits_before == 1  # type: ignore[union-attr]
        r = await rpad.request("GET", "/api/v1/clients/10")
        assert r.json()["ipAddress"] == "10.0.0.10"


async def test_list_filters_search_and_paging(boot: Boot) -> None:
    with trio.fail_after(20):
        rpad = await boot()
        await rpad.request("POST", "/api/v1/clients",
                           json={"clientId": "reg-1", "name": "Paint Shop", "tags": ["line-a"]})
        await rpad.heartbeat("web-1", version="3.1.4", ipAddress="10.0.0.5")
        await rpad.heartbeat("web-2", version="1.0", ipAddress="10.0.0.6")
        await rpad.heartbeat("db-1", status="offline")
        await rpad.request("POST", "/api/v1/clients",
                           json={"clientId": "web-2", "tags": ["LINE-B"]})

        async def ids(query: str) -> list[str]:
            r = await rpad.request("GET", "/api/v1/clients" + query, role="viewer")
            assert r.status_code == 200, r.text
            return [c["clientId"] for c in r.json()["clients"]]

        assert await ids("") == ["db-1", "reg-1", "web-1", "web-2"]
        assert await ids("?status=online") == ["web-1", "web-2"]
        assert await ids("?status=offline") == ["db-1"]
        assert await ids("?status=unknown") == ["reg-1"]
        assert await ids("?q=paint") == ["reg-1"]        # name, case-insensitive
        assert await ids("?q=10.0.0.6") == ["web-2"]     # ip
        assert await ids("?q=3.1") == ["web-1"]          # version
        assert await ids("?q=line") == ["reg-1", "web-2"]  # tags
        assert await ids("?q=WEB") == ["web-1", "web-2"]  # id
        assert await ids("?tag=line-a") == ["reg-1"]
        assert await ids("?tag=line") == []              # a tag matches exactly
        assert await ids("?limit=2") == ["db-1", "reg-1"]
        assert await ids("?limit=2&offset=2") == ["web-1", "web-2"]
        assert await ids("?offset=10") == []
        r = await rpad.request("GET", "/api/v1/clients?q=web&status=online&limit=1")
        body = r.json()
        assert (body["total"], body["limit"], body["offset"], body["counts"]) == (
            2, 1, 0, {"online": 2, "offline": 0, "unknown": 0})


async def test_register_read_remove_and_events(boot: Boot) -> None:
    with trio.fail_after(20):
        rpad = await boot(presence={"min_interval_seconds": 0})
        r = await rpad.request("POST", "/api/v1/clients", json={
            "clientId": "r1", "name": "Robot", "tags": ["a"], "heartbeatTimeoutSeconds": 120,
            "metadata": {"site": "x"}})
        assert r.status_code == 201, r.text
        view = r.json()
        assert (view["status"], view["name"], view["tags"], view["heartbeatTimeoutSeconds"],
                view["metadata"], view["lastHeartbeatAt"]) == (
            "unknown", "Robot", ["a"], 120.0, {"site": "x"}, None)
        r = await rpad.request("POST", "/api/v1/clients", json={"client_id": "r1", "name": "R"})
        assert r.status_code == 200 and r.json()["name"] == "R"
        assert r.json()["registeredAt"] == view["registeredAt"]

        first = (await rpad.heartbeat("r1")).json()["serverTime"]
        second = (await rpad.heartbeat("r1", status="offline")).json()["serverTime"]
        third = (await rpad.heartbeat("r1")).json()["serverTime"]
        r = await rpad.request("GET", "/api/v1/clients/r1/events", role="viewer")
        assert r.json() == {"clientId": "r1", "events": [
            {"at": third, "status": "online", "reason": "heartbeat"},
            {"at": second, "status": "offline", "reason": "agent_shutdown"},
            {"at": first, "status": "online", "reason": "heartbeat"},
        ]}
        r = await rpad.request("GET", "/api/v1/clients/r1/events?limit=1")
        assert len(r.json()["events"]) == 1

        store = rpad.daemon.store
        assert store is not None
        # The 2xx of a registration came after its commit: it is in the database.
        assert db_rows(store.path, "SELECT client_id, name FROM clients") == [("r1", "R")]
        r = await rpad.request("DELETE", "/api/v1/clients/r1")
        assert r.status_code == 200
        # ...and so did the 2xx of the removal.
        assert db_rows(store.path, "SELECT client_id FROM clients") == []
        body = r.json()
        assert body["removed"] is True and body["client"]["clientId"] == "r1"
        assert body["client"]["reason"] == "removed"
        r = await rpad.request("GET", "/api/v1/clients/r1")
        assert r.status_code == 404
        r = await rpad.request("GET", "/api/v1/clients/r1/events")
        assert r.status_code == 404


async def test_an_integer_client_id_is_its_decimal_string_on_every_route(boot: Boot) -> None:
    """What Schemathesis reported as "created resource not found" (POST /api/v1/clients
    {"clientId": 2789}, then 404 from GET /api/v1/client/heartbeat/status/2789): the id is
    found on every route, by every role that may read it, until a DELETE removes it (which its
    stateful run had done in between, and left out of its reproduction)."""
    with trio.fail_after(20):
        rpad = await boot()
        for raw, cid in ((2789, "2789"), (274.0, "274")):
            r = await rpad.request("POST", "/api/v1/clients", json={"clientId": raw,
                                                                    "name": "n"})
            assert (r.status_code, r.json()["clientId"]) == (201, cid)
            paths = (f"/api/v1/client/heartbeat/status/{cid}", f"/api/v1/clients/{cid}",
                     f"/api/v1/clients/{cid}/events")
            for path in paths:
                for role, sub in (("admin", "a"), ("viewer", "v"), ("service", "s")):
                    r = await rpad.request("GET", path, role=role, sub=sub)
                    assert (r.status_code, r.json()["clientId"]) == (200, cid), (path, role)
            r = await rpad.request("GET", paths[0], role="agent", sub=cid)
            assert r.status_code == 200 and r.json()["clientId"] == cid
            assert (await rpad.request("DELETE", f"/api/v1/clients/{cid}")).status_code == 200
            for path in paths:
                r = await rpad.request("GET", path)
                assert (r.status_code, r.json()["error"]) == (404, "unknown_client"), path


async def test_mint_and_revoke_agent_tokens(boot: Boot) -> None:
    with trio.fail_after(20):
        rpad = await boot(presence={"min_interval_seconds": 0})
        r = await rpad.request("POST", "/api/v1/clients/robot/tokens")
        assert r.status_code == 201, r.text
        minted = r.json()
        assert (minted["clientId"], minted["generation"], minted["expiresAt"]) == (
            "robot", 0, None)
        token = minted["token"]
        r = await rpad.request("POST", HB, token=token, json={"clientId": "robot"})
        assert r.status_code == 200, r.text
        r = await rpad.request("POST", HB, token=token, json={"clientId": "not-robot"})
        assert r.status_code == 403

        r = await rpad.request("POST", "/api/v1/clients/robot/tokens", json={"ttl": "1h"})
        with_ttl = r.json()
        assert parse_time(with_ttl["expiresAt"]) == pytest.approx(
            rpad.daemon.wall_clock() + 3600, abs=5)

        r = await rpad.request("DELETE", "/api/v1/clients/robot/tokens")
        assert (r.status_code, r.json()) == (200, {"clientId": "robot", "revoked": True,
                                                   "generation": 1})
        for old in (token, with_ttl["token"]):
            r = await rpad.request("POST", HB, token=old, json={"clientId": "robot"})
            assert (r.status_code, r.json()) == (401, err("token_revoked",
                                                          "the token has been revoked"))
        r = await rpad.request("POST", "/api/v1/clients/robot/tokens")
        assert r.json()["generation"] == 1
        r = await rpad.request("POST", HB, token=r.json()["token"], json={"clientId": "robot"})
        assert r.status_code == 200
        # The revocation is durable: it is in the database already.
        store = rpad.daemon.store
        assert store is not None
        assert db_rows(store.path, "SELECT gen FROM token_generations "
                                   "WHERE client_id = 'robot'") == [(1,)]


async def test_concurrent_heartbeats_share_commits(boot: Boot) -> None:
    with trio.fail_after(60):
        rpad = await boot(presence={"min_interval_seconds": 0},
                          storage={"commit_interval_ms": 200})
        store = rpad.daemon.store
        assert store is not None
        before = store.commits
        acked: dict[str, str] = {}

        async def beat(cid: str) -> None:
            r = await rpad.heartbeat(cid)
            assert r.status_code == 200
            acked[cid] = r.json()["serverTime"]
            # Acknowledged means committed: the row is in the database already.
            assert db_rows(store.path, f"SELECT client_id FROM clients WHERE client_id = '{cid}'")

        async with trio.open_nursery() as nursery:
            for i in range(100):
                nursery.start_soon(beat, f"g{i}")
        assert len(acked) == 100
        # A hundred acknowledged heartbeats, a handful of commits (one at once for the first
        # write after a quiet spell, then one per 200 ms interval).
        assert 1 <= store.commits - before <= 10, store.commits - before


async def test_health_needs_no_token(boot: Boot) -> None:
    with trio.fail_after(20):
        rpad = await boot()
        await rpad.heartbeat("a")
        r = await rpad.http.get(rpad.http_url + "/api/v1/health")
        assert r.status_code == 200
        body = r.json()
        assert body["status"] == "ok"
        assert (body["clients"], body["online"], body["epoch"]) == (1, 1, rpad.daemon.epoch)
        assert camel_keys_only(body)


async def test_keep_alive_connection_serves_many_heartbeats(
        boot: Boot) -> None:
    with trio.fail_after(30):
        rpad = await boot(presence={"min_interval_seconds": 0})
        token = rpad.token("service", "gw")
        async with httpx.AsyncClient(base_url=rpad.http_url,
                                     headers={"Authorization": f"Bearer {token}"}) as client:
            for i in range(50):
                r = await client.post(HB, json={"clientId": f"k{i % 5}"})
                assert r.status_code == 200
        assert len(rpad.daemon.presence.view) == 5  # type: ignore[union-attr]
