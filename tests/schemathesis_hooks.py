"""Schemathesis hooks for tests/test_schemathesis.py: two checks of rpad's own on top of
Schemathesis's (loaded by ``schemathesis run`` through ``SCHEMATHESIS_HOOKS``).

The test runs Schemathesis once per role with one token; the environment says which:
``RPAD_ST_TOKEN`` (the token), ``RPAD_ST_ROLE`` and ``RPAD_ST_SUB`` (its role and subject) and
``RPAD_ST_RECORD`` (a file for :class:`rpad_record`).

* :func:`rpad_roles` holds every answer to a request made with that token to the roles the
  document declares for the operation (``x-rpad-roles``): a role not listed never gets a 2xx,
  nor a 404 ``unknown_client`` (which would tell it whether a client exists), and neither does
  an agent for a client other than its own.
* :func:`rpad_resource_availability` is Schemathesis's ``ensure_resource_availability``
  (a client just created is found by the operations its links lead to, unless deleted since),
  which the test runs in its place, knowing one thing more: ``DELETE /api/v1/clients/{id}``
  removes ``/api/v1/client/heartbeat/status/{id}`` too. Schemathesis counts a DELETE only
  against the paths below its own, and the contract keeps a client's status at that other
  path; so it reported "created resource not found" for a client a DELETE of the same
  scenario had just removed (its reproduction leaves that DELETE out).
* :func:`filter_failure` lets a "schema-valid request rejected" go when the answer is a 422
  whose every detail is a rule the operation documents beyond its schemas
  (``x-rpad-refusals``: between two fields, or against the server's clock or state, which JSON
  Schema cannot state, such as a silence's ``endsAt`` in the future). Any other 422 to a
  schema-valid request still fails; Schemathesis reports how many it let go.
* :func:`before_call` moves a schema-valid silence's times next to the present (``startsAt``
  a minute ago, ``endsAt`` some minutes to a day ahead): the document can only say "in the
  future, within a year" in words, and times drawn from the years 1 to 9999 almost never are,
  so the silences' success path (and the links from it) would otherwise go untested. Other
  fields are left as generated, and requests meant to be invalid are left alone.
* :class:`rpad_record` writes, once the run is over, which operations were called and which of
  them answered this token with a 2xx, so that the test can tell that every route was reached
  (a run that only ever met 401s and 422s would otherwise pass).

Not a test module (no ``test_`` prefix): pytest does not collect it.
"""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import schemathesis
from schemathesis.openapi.checks import EnsureResourceAvailability, RejectedPositiveData
from schemathesis.specs.openapi.checks import ensure_resource_availability

TOKEN = os.environ.get("RPAD_ST_TOKEN", "")
ROLE = os.environ.get("RPAD_ST_ROLE", "")
SUB = os.environ.get("RPAD_ST_SUB", "")
RECORD = os.environ.get("RPAD_ST_RECORD", "")


def _with_our_token(response: Any, case: Any) -> bool:
    """Whether the request was the operation's own (Schemathesis also tries other methods on
    its path) and carried the run's token (it also sends requests with no token or a broken
    one, to check that authentication is enforced)."""
    return (bool(TOKEN) and response.request.method == case.operation.method.upper()
            and response.request.headers.get("Authorization") == f"Bearer {TOKEN}")


def _client_ids(case: Any) -> set[str]:
    """The client ids a request names: its path's, a heartbeat body's (either spelling; an
    integer id is its decimal string)."""
    ids: set[str] = set()
    path_id = (case.path_parameters or {}).get("clientId")
    if path_id is not None:
        ids.add(str(path_id))
    body = case.body if isinstance(case.body, dict) else {}
    if case.operation.path == "/api/v1/client/heartbeat":
        for key in ("clientId", "client_id"):
            value = body.get(key)
            if isinstance(value, str | int) and not isinstance(value, bool):
                ids.add(str(value))
            elif isinstance(value, float) and value.is_integer():
                ids.add(str(int(value)))
    return ids


def _error_code(response: Any) -> str | None:
    try:
        body = json.loads(response.content)
    except ValueError:
        return None
    return body.get("error") if isinstance(body, dict) else None


@schemathesis.check
def rpad_roles(ctx: Any, response: Any, case: Any) -> bool | None:
    """A role the document does not list for an operation gets neither a 2xx nor a
    404 unknown_client; nor does an agent for another client's id."""
    if not _with_our_token(response, case):
        return None
    roles = case.operation.definition.raw.get("x-rpad-roles")
    if roles is None:  # no token needed
        return None
    allowed = ROLE in roles
    foreign = ROLE == "agent" and bool(_client_ids(case) - {SUB})
    if allowed and not foreign:
        return None
    why = (f"the role {ROLE!r} is not among {roles}" if not allowed
           else f"an agent token for {SUB!r} names another client")
    if 200 <= response.status_code < 300:
        raise AssertionError(f"{case.operation.label} answered {response.status_code}, "
                             f"but {why}")
    if response.status_code == 404 and _error_code(response) == "unknown_client":
        raise AssertionError(f"{case.operation.label} told whether a client exists "
                             f"(404 unknown_client), but {why}: expected 403")
    return None


STATUS_PATH = "/api/v1/client/heartbeat/status/{clientId}"
CLIENT_PATH = "/api/v1/clients/{clientId}"


def _deleted_before(ctx: Any, case: Any) -> bool:
    """Whether the scenario deleted the client this status request names, before it."""
    recorder = ctx.internals.recorder
    client_id = str((case.path_parameters or {}).get("clientId"))
    for prior in recorder.find_all_cases():
        if prior.id == case.id:
            return False
        if (prior.operation.method.upper() == "DELETE" and prior.operation.path == CLIENT_PATH
                and str((prior.path_parameters or {}).get("clientId")) == client_id):
            answer = recorder.find_response(case_id=prior.id)
            if answer is not None and 200 <= answer.status_code < 300:
                return True
    return False


@schemathesis.check
def rpad_resource_availability(ctx: Any, response: Any, case: Any) -> bool | None:
    """ensure_resource_availability, with a client's status path removed by its DELETE."""
    try:
        return ensure_resource_availability(ctx, response, case)
    except EnsureResourceAvailability:
        if case.operation.path == STATUS_PATH and _deleted_before(ctx, case):
            return None
        raise


def _documented_refusal(case: Any, response: Any) -> bool:
    """A 422 each of whose details is one of the operation's ``x-rpad-refusals``."""
    rules = case.operation.definition.raw.get("x-rpad-refusals") or []
    if response.status_code != 422 or not rules:
        return False
    try:
        details = json.loads(response.content)["details"]
    except (ValueError, KeyError, TypeError):
        return False
    return bool(details) and all(
        any(_same_field(str(d.get("field")), r["field"])
            and str(d.get("message", "")).startswith(r["message"]) for r in rules)
        for d in details)


def _same_field(field: str, rule: str) -> bool:
    """``clientIds[3]`` is the rule's ``clientIds[]``; other fields by name."""
    if rule.endswith("[]"):
        stem = rule[:-2]
        return bool(re.fullmatch(re.escape(stem) + r"\[[0-9]+\]", field))
    return field == rule


@schemathesis.hook
def filter_failure(context: Any, failure: Any, case: Any, response: Any) -> bool:
    """Keep every failure but a schema-valid request refused for a documented rule."""
    return not (isinstance(failure, RejectedPositiveData)
                and _documented_refusal(case, response))


SILENCES_PATH = "/api/v1/silences"


def _parses(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: Any) -> None:
    """A schema-valid silence's times, moved next to the present (see the module's doc)."""
    if (case.operation.method.upper() != "POST" or case.operation.path != SILENCES_PATH
            or case.meta is None or not case.meta.generation.mode.is_positive
            or not isinstance(case.body, dict)):
        return
    now = datetime.now(UTC)
    body = case.body
    if _parses(body.get("startsAt")) is not None:
        body["startsAt"] = (now - timedelta(minutes=1)).isoformat()
    ends = _parses(body.get("endsAt"))
    if ends is not None:
        # As far ahead as the generated time's seconds into its day, plus ten minutes.
        ahead = timedelta(minutes=10, seconds=ends.hour * 3600 + ends.minute * 60 + ends.second)
        body["endsAt"] = (now + ahead).isoformat()


@schemathesis.check
class rpad_record:  # (lower case: Schemathesis names a check after its class)
    """Which operations were called, and which answered the run's token with a 2xx; written
    to ``RPAD_ST_RECORD`` as JSON at the end of the run."""

    def __init__(self) -> None:
        self.called: set[str] = set()
        self.succeeded: set[str] = set()

    def after_response(self, ctx: Any, response: Any, case: Any) -> None:
        label = case.operation.label
        self.called.add(label)
        if _with_our_token(response, case) and 200 <= response.status_code < 300:
            self.succeeded.add(label)

    def after_run(self, ctx: Any) -> None:
        if RECORD:
            Path(RECORD).write_text(json.dumps({"called": sorted(self.called),
                                                "succeeded": sorted(self.succeeded)}))
