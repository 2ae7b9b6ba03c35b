"""One client's story over HTTP: ``GET /api/v1/clients/{id}/metrics`` (its metrics over
time, from the right tier of the history) and ``GET /api/v1/clients/{id}/uptime`` (its
availability and status timeline, rpad's own downtime apart).

Every bad query parameter is a 422 naming it: a time that is not ISO 8601 or epoch seconds, a
range reversed, a step that is not a whole number of seconds, too small for the tier that
holds data that old or giving too many points, an unknown metric name.
"""

from __future__ import annotations

import re

from quart import Quart, Response, request

from ..core.history import METRIC_NAMES, PlanError
from ..core.principal import require_role
from ..core.times import parse_iso
from ..core.validation import MAX_EPOCH_SECONDS, client_id_from_path
from ..service.client_history import TIMELINE_WINDOWS_SECONDS, ClientHistory
from .context import ApiContext
from .errors import invalid_parameter, json_response, unknown_client
from .openapi import VIEWER_UP, Answer, Param, Refusal, operation
from .schemas import PY_SPACE, Schema
from .security import request_principal

DEFAULT_RANGE_SECONDS = 3600.0
_STEP_RE = re.compile(r"([0-9]{1,9})([smhd]?)")
_NUMBER_RE = re.compile(r"-?[0-9]+(?:[.][0-9]+)?(?:[eE][-+]?[0-9]+)?")
# A time in the query: ISO 8601, or epoch seconds or milliseconds (from 1970).
_TIME: Schema = {"anyOf": [{"type": "string", "format": "date-time"},
                           {"type": "number", "minimum": 0,
                            "maximum": MAX_EPOCH_SECONDS * 1000}]}
# Comma-separated metric names (spaces around each allowed); empty: all.
_SPACE = f"[{PY_SPACE}]*"
_NAME = "(?:" + "|".join(METRIC_NAMES) + ")"
NAMES_PATTERN = f"^(?:{_SPACE}|{_SPACE}{_NAME}{_SPACE}(?:,{_SPACE}{_NAME}{_SPACE})*)$"
# The refusals a query valid by the schemas can still get (rpad.core.history.plan_query).
_PLAN_REFUSALS = (
    Refusal("from", "must be before to"), Refusal("from", "the range may span at most"),
    Refusal("from", "no metrics history is kept"), Refusal("step", "must be at least"),
    Refusal("step", "must be at most"), Refusal("step", "gives "),
    Refusal("step", "must be a multiple of"))
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_NAMES_CHARS = 1024


def parse_time(raw: str, name: str) -> float:
    """ISO 8601, or epoch seconds (milliseconds above 1e11) from 1970 to 9999, written as
    the document says (a plain number: no spaces, no "_", no "inf")."""
    if _NUMBER_RE.fullmatch(raw):
        value = float(raw)
        if value > 1e11:
            value /= 1000.0
        if not 0 <= value <= MAX_EPOCH_SECONDS:
            raise invalid_parameter(name, "must be a time from 1970 to 9999")
        return value
    try:
        return parse_iso(raw)
    except (ValueError, OverflowError):
        raise invalid_parameter(name, "must be an ISO 8601 time such as "
                                      "2026-01-01T12:00:00Z or epoch seconds") from None


def parse_step(raw: str) -> int:
    m = _STEP_RE.fullmatch(raw)
    if m is None:
        raise invalid_parameter("step", "must be a whole number of seconds, or with a unit: "
                                        "30s, 1m, 15m, 1h, 1d")
    return int(m.group(1)) * _UNITS[m.group(2)]


def parse_names(raw: str | None) -> list[str]:
    if raw is not None and len(raw) > MAX_NAMES_CHARS:
        raise invalid_parameter("names", f"must be at most {MAX_NAMES_CHARS} characters")
    if raw is None or not raw.strip():
        return list(METRIC_NAMES)
    names: list[str] = []
    for name in raw.split(","):
        name = name.strip()
        if name not in METRIC_NAMES:
            shown = name[:64].encode("utf-8", "replace").decode("utf-8")
            raise invalid_parameter("names", f"unknown metric {shown!r}; known: "
                                             + ", ".join(METRIC_NAMES))
        if name not in names:
            names.append(name)
    return names


def add_routes(app: Quart, ctx: ApiContext, history: ClientHistory) -> None:
    presence = ctx.presence

    def known_client(client_id: str) -> str:
        require_role(request_principal(ctx), "viewer")
        cid = client_id_from_path(client_id)
        if presence.view.get(cid) is None:
            raise unknown_client()
        return cid

    @app.get("/api/v1/clients/<client_id>/metrics")
    @operation(
        "Read a client's metrics over time", tag="clients", roles=VIEWER_UP,
        description="Buckets of `step` seconds from `from` to `to`, each with its number of "
                    "samples and each metric's min/avg/max, from the tier that holds that "
                    "range: raw samples, 1-minute, 15-minute or 1-hour buckets (`tier`).",
        query=(Param("from", "ISO 8601 or epoch seconds; default `to` minus 1 h", _TIME),
               Param("to", "ISO 8601 or epoch seconds; default now", _TIME),
               Param("step", "seconds (or 30s, 1m, 15m, 1h, 1d); a multiple of the tier's; "
                             "default about 720 buckets",
                     {"type": "string", "pattern": f"^(?:{_STEP_RE.pattern})$"}),
               Param("names", "comma-separated metric names; default all",
                     {"type": "string", "maxLength": MAX_NAMES_CHARS,
                      "pattern": NAMES_PATTERN})),
        answer=Answer(200, "the metrics on a regular grid", "ClientMetrics"),
        errors=("unknown_client", "storage_unavailable"), refusals=_PLAN_REFUSALS)
    async def client_metrics(client_id: str) -> Response:
        cid = known_client(client_id)
        args = request.args
        now = presence.wall_clock()
        # A parameter given empty is a bad value, not an absent one (as the document says).
        end = parse_time(args["to"], "to") if "to" in args else now
        start = (parse_time(args["from"], "from") if "from" in args
                 else end - DEFAULT_RANGE_SECONDS)
        names = parse_names(args.get("names"))
        if not end > start:
            raise invalid_parameter("from", "must be before to")
        step = parse_step(args["step"]) if "step" in args else history.default_step(start, end)
        try:
            body = await history.metrics(cid, start, end, step, names)
        except PlanError as exc:
            raise invalid_parameter(exc.field, exc.message) from None
        return json_response(body)

    @app.get("/api/v1/clients/<client_id>/uptime")
    @operation(
        "Read a client's availability", tag="clients", roles=VIEWER_UP,
        description="Uptime over 24 h, 7 d and 30 d from the client's status events; rpad's "
                    "own downtime and start-up grace are reported apart and never count "
                    "against the client. With the timeline of its states over `timeline`.",
        query=(Param("timeline", "the timeline's window",
                     {"enum": list(TIMELINE_WINDOWS_SECONDS), "default": "24h"}),),
        answer=Answer(200, "uptime figures and timeline", "ClientUptime"),
        errors=("unknown_client", "storage_unavailable"))
    async def client_uptime(client_id: str) -> Response:
        cid = known_client(client_id)
        window = request.args.get("timeline", "24h")
        if window not in TIMELINE_WINDOWS_SECONDS:
            raise invalid_parameter("timeline", "must be one of "
                                                + ", ".join(TIMELINE_WINDOWS_SECONDS))
        return json_response(await history.uptime(cid, window))
