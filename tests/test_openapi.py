"""The API's documents: the OpenAPI document covers every route of the app and validates with
openapi-spec-validator; the WebSocket schema is a valid JSON Schema; all three documents are
served without a token; the reference page shows every operation and loads nothing."""

from __future__ import annotations

import re
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from rpad.api.openapi import PATH_PARAMETERS, undocumented
from rpad.api.schemas import components, decimal_in, ttl_pattern
from rpad.auth import MAX_TTL_SECONDS, TTL_UNITS, parse_ttl

from .conftest import Running

RULE_PARAM = re.compile(r"<(?:\w+(?:\([^)]*\))?:)?(\w+)>")


async def test_every_route_of_the_app_is_documented(rpad: Running) -> None:
    app = rpad.daemon.app
    assert undocumented(app) == [], (
        "routes without @operation(...) (rpad/api/openapi.py) under their route decorator")
    doc = (await rpad.request("GET", "/api/v1/openapi.json", role=None)).json()
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    routes = set()
    for rule in app.url_map.iter_rules():
        path = RULE_PARAM.sub(
            lambda m: "{" + PATH_PARAMETERS.get(m.group(1), (m.group(1), None))[0] + "}",
            rule.rule)
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            routes.add((method, path))
    assert routes == documented


async def test_the_openapi_document_validates(rpad: Running) -> None:
    r = await rpad.request("GET", "/api/v1/openapi.json", role=None)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    doc = r.json()
    validate(doc)  # openapi-spec-validator: OpenAPI 3.1 and its JSON Schemas
    assert doc["openapi"] == "3.1.0"
    ops = [op for methods in doc["paths"].values() for op in methods.values()]
    for op in ops:
        # Roles are declared for every operation that takes a token, and 401/403 documented.
        if op["security"]:
            assert op["x-rpad-roles"] and {"401", "403"} <= set(op["responses"]), op
        # Every error answer has the one error shape.
        for status, resp in op["responses"].items():
            if int(status) >= 400 and op["operationId"] != "hub_health":
                assert resp["content"]["application/json"]["schema"]["allOf"][0] == {
                    "$ref": "#/components/schemas/Error"}, (op["operationId"], status)
    # operationIds are unique, and every link names one.
    ids = [op["operationId"] for op in ops]
    assert len(ids) == len(set(ids))
    for op in ops:
        for resp in op["responses"].values():
            for link in resp.get("links", {}).values():
                assert link["operationId"] in ids


def _refs(value: Any) -> set[str]:
    if isinstance(value, dict):
        found = {value["$ref"]} if isinstance(value.get("$ref"), str) else set()
        for v in value.values():
            found |= _refs(v)
        return found
    if isinstance(value, list):
        return set().union(*(_refs(v) for v in value)) if value else set()
    return set()


async def test_the_websocket_schema_is_served_and_valid(rpad: Running) -> None:
    r = await rpad.request("GET", "/api/v1/websocket/schema.json", role=None)
    assert r.status_code == 200
    schema = r.json()
    Draft202012Validator.check_schema(schema)
    defs = schema["$defs"]
    # Every reference resolves inside the document.
    for ref in _refs(schema):
        assert ref.startswith("#/$defs/") and ref.removeprefix("#/$defs/") in defs, ref
    validator = Draft202012Validator(schema)
    ok = {"type": "PONG", "topic": None, "seq": None, "ts": "2026-01-01T00:00:00.000Z",
          "data": {"serverTime": "2026-01-01T00:00:00.000Z"}}
    assert validator.is_valid(ok)
    # An undocumented field, an undocumented type, a wrong topic: refused.
    assert not validator.is_valid({**ok, "data": {**ok["data"], "extra": 1}})
    assert not validator.is_valid({**ok, "type": "PONGS"})
    assert not validator.is_valid({**ok, "type": "HEARTBEAT_RECEIVED", "topic": "heartbeat",
                                   "seq": 1})
    # App topics carry their publisher's messages.
    assert validator.is_valid({"type": "TASK_UPDATE", "topic": "task.42", "seq": 3,
                               "ts": "2026-01-01T00:00:00.000Z", "data": {"progress": 40}})
    assert validator.is_valid({"action": "subscribe", "topic": "client_status", "since": 4})
    assert not validator.is_valid({"action": "subscribe", "topic": "Bad Topic"})


async def test_the_reference_page(rpad: Running) -> None:
    r = await rpad.request("GET", "/api/v1/docs", role=None)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "script-src" not in r.headers["Content-Security-Policy"]
    page = r.text
    assert "<script" not in page and "http://" not in page and "https://" not in page
    doc = (await rpad.request("GET", "/api/v1/openapi.json", role=None)).json()
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            anchor = "op-" + re.sub(r"[^0-9A-Za-z]", "-", op["operationId"])
            assert f'id="{anchor}"' in page and path in page, (method, path)
    for name in ("CONNECTION_ESTABLISHED", "CLIENT_DISCONNECTED", "SERVER_LIST_DELTA",
                 "subscribe", "ClientView"):
        assert name in page


# -- the document says exactly what the validators accept ----------------------------------


def _accepted(text: str) -> bool:
    try:
        parse_ttl(text)
    except ValueError:
        return False
    return True


_DIGITS = st.text("0123456789", min_size=1, max_size=12)
_TTLS = st.builds(lambda i, f, u: i + ("." + f if f else "") + u, _DIGITS,
                  st.one_of(st.just(""), _DIGITS), st.sampled_from(sorted(TTL_UNITS)))


@settings(max_examples=2000, derandomize=True, deadline=None)
@given(st.one_of(_TTLS, st.text(max_size=12)))
@example("523w")
@example("523.0001w")
@example("3661d")
@example("3661.000d")
@example("3662d")
@example(str(MAX_TTL_SECONDS))
@example(str(MAX_TTL_SECONDS + 1))
@example("0.0s")
@example("0.01s")
@example("00")
@example("never ")
@example("\u0663d")
@example("1.w")
def test_the_ttl_pattern_is_what_parse_ttl_accepts(text: str) -> None:
    """The token request's ``ttl`` pattern (Schemathesis generates from it, and holds the
    answers to it) and parse_ttl agree on every string."""
    assert bool(re.fullmatch(ttl_pattern(), text)) == _accepted(text), text
    assert components()["TokenRequest"]["properties"]["ttl"]["anyOf"][0]["pattern"] == (
        ttl_pattern())


@settings(max_examples=500, derandomize=True, deadline=None)
@given(st.integers(1, 10**7), st.integers(0, 10**8), _DIGITS)
def test_decimal_in(limit: int, whole: int, fraction: str) -> None:
    from decimal import Decimal

    for text in (str(whole), f"{whole}.{fraction}", f"0{whole}"):
        assert bool(re.fullmatch(decimal_in(limit), text)) == (
            0 < Decimal(text) <= limit), (limit, text)
