"""The alerts' admin API (issue 14): silences, policy overrides, the delivery log, test alerts.

| method and path | role | what |
|---|---|---|
| POST ``/api/v1/silences`` | admin | ``{match: {clientIds?, tags?}, startsAt?, endsAt, comment, createdBy?}`` → 201 |
| GET ``/api/v1/silences`` | viewer+ | silences not yet ended, and maintenance windows' current or next occurrence |
| DELETE ``/api/v1/silences/{id}`` | admin | end a silence now |
| GET ``/api/v1/alerts/policies`` | viewer+ | the default policy, grouping, overrides (config and API) |
| PUT / DELETE ``/api/v1/alerts/policies/tags/{tag}`` | admin | a tag's override |
| PUT / DELETE ``/api/v1/alerts/policies/clients/{clientId}`` | admin | a client's override |
| GET ``/api/v1/alerts/deliveries`` | admin | targets, pending deliveries, the delivery log (``?target=&limit=``) |
| POST ``/api/v1/alerts/test`` | admin | ``{target}``: a test alert to a *configured* target, by name |

Targets are only ever the configured ones: a request names one, it never gives a URL (an API
that sends to a URL from a request is a server-side request forgery waiting to happen).
Changes are logged with the token's subject, and acknowledged once durable.
"""

from __future__ import annotations

from typing import Any

from quart import Quart, Response, request

from ..config_alerts import TARGET_NAME_RE
from ..core.errors import ValidationFailed
from ..core.principal import Principal, require_role
from ..core.times import iso
from ..core.validation import TAG_RE, client_id_from_path
from ..service.alerts import parse_override
from . import schemas as S
from .alert_schemas import TAG as S_TAG
from .alert_schemas import TARGET_NAME
from .bodies import int_arg, request_json_object
from .context import ApiContext
from .errors import ApiError, invalid_parameter, json_response
from .openapi import ADMIN, VIEWER_UP, Answer, Link, Param, Refusal, operation
from .security import request_principal

TARGET_NAME_MESSAGE = "must be a target's name: 1 to 64 characters of A-Z a-z 0-9 . _ -"
DEFAULT_LOG_LIMIT = 100
MAX_LOG_LIMIT = 1000


def add_routes(app: Quart, ctx: ApiContext) -> None:
    alerts = ctx.alerts

    def principal(role: str) -> Principal:
        p = request_principal(ctx)
        require_role(p, role)
        return p

    async def body() -> dict[str, Any]:
        return await request_json_object(ctx.config.http.max_body_bytes)

    # -- silences ------------------------------------------------------------------------------

    @app.post("/api/v1/silences")
    @operation("Silence clients for a while", tag="alerts", roles=ADMIN, body="SilenceRequest",
               description="Matching clients raise no alerts until `endsAt`; their events "
                           "still flow, marked `silenced`. An alert due meanwhile waits for "
                           "the end (a client still down then raises its alert).",
               answer=Answer(201, "the silence", "Silence"), errors=("storage_unavailable",),
               links={201: {"endSilence": Link("delete_silence",
                                               {"silence_id": "$response.body#/id"})}},
               refusals=(Refusal("endsAt", "must be after startsAt"),
                         Refusal("endsAt", "must be in the future"),
                         Refusal("endsAt", "must be at most")))
    async def create_silence() -> Response:
        p = principal("admin")
        silence = await alerts.add_silence(await body(), p.sub)
        return json_response(silence.to_json(alerts.wall_clock()), 201)

    @app.get("/api/v1/silences")
    @operation("List silences and maintenance windows", tag="alerts", roles=VIEWER_UP,
               description="Silences not yet ended, and each configured maintenance window's "
                           "current or next occurrence (`kind: maintenance`).",
               answer=Answer(200, "the silences", "Silences"))
    async def list_silences() -> Response:
        principal("viewer")
        await alerts.refresh()
        return json_response({"silences": alerts.silences_json(),
                              "serverTime": _iso_now(ctx)})

    @app.delete("/api/v1/silences/<silence_id>")
    @operation("End a silence now", tag="alerts", roles=ADMIN,
               path=(Param("silence_id", "the silence's id", S.string(64), where="path",
                           required=True),),
               description="Alerts it held back are looked at again at once.",
               answer=Answer(200, "ended", "SilenceDeleted"),
               errors=("unknown_silence", "storage_unavailable"))
    async def delete_silence(silence_id: str) -> Response:
        p = principal("admin")
        silence = await alerts.delete_silence(silence_id[:64], p.sub)
        if silence is None:
            raise ApiError(404, "unknown_silence", "no silence with this id is in force")
        return json_response({"deleted": True,
                              "silence": silence.to_json(alerts.wall_clock())})

    # -- policies ------------------------------------------------------------------------------

    @app.get("/api/v1/alerts/policies")
    @operation("Read the alert policies", tag="alerts", roles=VIEWER_UP,
               description="The default policy and grouping (config), and the overrides per "
                           "tag and per client: the config's and the API's.",
               answer=Answer(200, "the policies", "Policies"))
    async def policies() -> Response:
        principal("viewer")
        await alerts.refresh()
        return json_response(alerts.policies_json())

    def tag_of(tag: str) -> str:
        if not TAG_RE.fullmatch(tag):
            raise ValidationFailed([{"field": "tag",
                                     "message": "must be 1 to 64 printable characters"}])
        return tag

    async def put_override(scope: str, name: str) -> Response:
        p = principal("admin")
        override = parse_override(await body())
        await alerts.set_override(scope, name, override, p.sub)
        return json_response({"scope": scope, "name": name,
                              "policy": alerts.policies_json()[scope + "s"][name]})

    async def delete_override(scope: str, name: str) -> Response:
        p = principal("admin")
        if not await alerts.delete_override(scope, name, p.sub):
            raise ApiError(404, "unknown_override",
                           f"no override of the admin API for this {scope}")
        return json_response({"deleted": True, "scope": scope, "name": name})

    set_answer = Answer(200, "the override in force", "PolicySet")
    set_text = ("Fields of the policy (camelCase); null or absent fields are not overridden. "
                "Replaces this scope's earlier API override; the config's override stays under "
                "it, field by field.")
    deleted = Answer(200, "removed", "PolicyDeleted")
    tag_param = (Param("tag", "the tag, exactly", S_TAG, where="path", required=True),)

    @app.put("/api/v1/alerts/policies/tags/<path:tag>")
    @operation("Override the alert policy of a tag", tag="alerts", roles=ADMIN, path=tag_param,
               body="PolicyOverride", answer=set_answer, description=set_text)
    async def put_tag_policy(tag: str) -> Response:
        return await put_override("tag", tag_of(tag))

    @app.delete("/api/v1/alerts/policies/tags/<path:tag>")
    @operation("Remove a tag's override made through the API", tag="alerts", roles=ADMIN,
               path=tag_param, answer=deleted, errors=("unknown_override",))
    async def delete_tag_policy(tag: str) -> Response:
        return await delete_override("tag", tag_of(tag))

    @app.put("/api/v1/alerts/policies/clients/<client_id>")
    @operation("Override the alert policy of a client", tag="alerts", roles=ADMIN,
               body="PolicyOverride", answer=set_answer, description=set_text)
    async def put_client_policy(client_id: str) -> Response:
        return await put_override("client", client_id_from_path(client_id))

    @app.delete("/api/v1/alerts/policies/clients/<client_id>")
    @operation("Remove a client's override made through the API", tag="alerts", roles=ADMIN,
               answer=deleted, errors=("unknown_override",))
    async def delete_client_policy(client_id: str) -> Response:
        return await delete_override("client", client_id_from_path(client_id))

    # -- deliveries and tests ------------------------------------------------------------------

    @app.get("/api/v1/alerts/deliveries")
    @operation("Read the alert deliveries", tag="alerts", roles=ADMIN,
               description="Each target's counters, the deliveries waiting in the outbox, and "
                           "the finished ones (the delivery log), newest first.",
               query=(Param("target", "only this target (its name; a target no longer "
                                      "configured still has its log)", TARGET_NAME),
                      Param("limit", "log entries", {"type": "integer", "minimum": 1,
                                                     "maximum": MAX_LOG_LIMIT,
                                                     "default": DEFAULT_LOG_LIMIT})),
               answer=Answer(200, "targets, pending and finished deliveries", "Deliveries"),
               errors=("storage_unavailable",))
    async def deliveries() -> Response:
        principal("admin")
        # Any target name: the log keeps the deliveries of a target removed since (on reload).
        target = request.args.get("target")
        if target is not None and not TARGET_NAME_RE.fullmatch(target):
            raise invalid_parameter("target", TARGET_NAME_MESSAGE)
        limit = int_arg(request.args.get("limit"), "limit", DEFAULT_LOG_LIMIT, 1, MAX_LOG_LIMIT)
        return json_response(await alerts.deliveries(target, limit))

    @app.post("/api/v1/alerts/test")
    @operation("Send a test alert to a configured target", tag="alerts", roles=ADMIN,
               body="TestAlertRequest",
               description="By the target's name; a request never gives an address. Queued "
                           "like any alert (see the deliveries).",
               answer=Answer(202, "queued", "TestAlertQueued"),
               errors=("unknown_target", "test_pending"))
    async def test_alert() -> Response:
        p = principal("admin")
        data = await request_json_object(ctx.config.http.max_body_bytes)
        target = data.get("target")
        extra = [k for k in data if k != "target"]
        if extra:
            raise ValidationFailed([{"field": str(extra[0])[:64], "message":
                                     "is not a known field (target: the name of a configured "
                                     "target; addresses come only from the configuration)"}])
        if not isinstance(target, str):
            raise ValidationFailed([{"field": "target",
                                     "message": "is required: the name of a configured target"}])
        if not TARGET_NAME_RE.fullmatch(target):
            raise ValidationFailed([{"field": "target", "message": TARGET_NAME_MESSAGE}])
        delivery_id = await alerts.send_test(target, p.sub)
        return json_response({"target": target, "deliveryId": delivery_id, "queued": True}, 202)


def _iso_now(ctx: ApiContext) -> str | None:
    return iso(ctx.presence.wall_clock())
