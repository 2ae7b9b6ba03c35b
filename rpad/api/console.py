"""The console's HTTP routes: batch tasks, the audit log and the agents' control channels.

| method and path | who | what |
|---|---|---|
| POST ``/api/v1/tasks`` | admin, operator | ``{command, clientIds? \\| tag?, concurrency?, timeoutSeconds?}`` → 202 ``{taskId, ...}`` |
| GET ``/api/v1/tasks`` | admin (all), operator (own) | ``?status=&limit=&offset=`` → ``{items, total, limit, offset}`` |
| GET ``/api/v1/tasks/{taskId}`` | admin, operator (own) | the task with ``results`` per client |
| POST ``/api/v1/tasks/{taskId}/cancel`` | admin, operator (own) | 202: pending clients are skipped, running ones cancelled |
| GET ``/api/v1/audit`` | admin | ``?clientId=&userId=&kind=&status=&sessionId=&taskId=&since=&until=&limit=&offset=`` |
| GET ``/api/v1/agents`` | admin | the agents' control channels on this node |

Handlers are thin: check the token, read and validate (every bad field named by its camelCase
path, unknown fields refused), call :class:`~rpad.service.tasks.Tasks` or the audit log.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from quart import Quart, Response, request

from ..backend.base import AuditLog, AuditQuery
from ..core.errors import ValidationFailed
from ..core.principal import Principal, require_role
from ..core.tasks import TASK_ID_RE, TASK_STATUSES
from ..core.times import parse_iso
from ..core.validation import Fields, client_id_of
from ..service.console import MAX_COMMAND_CHARS
from ..service.tasks import MAX_TARGETS, TaskError, TaskRequest, Tasks
from . import schemas as S
from .bodies import int_arg, request_json_object
from .context import ApiContext
from .errors import ApiError, invalid_parameter, json_response
from .openapi import ADMIN, EXEC_ROLES, Answer, Link, Param, Refusal, operation
from .security import request_peer, request_principal

TAG_MAX_CHARS = 64
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
_TASK_FIELDS = ("command", "clientIds", "client_ids", "tag", "concurrency", "timeoutSeconds",
                "timeout_seconds")
AUDIT_KINDS = ("session", "command", "task", "denied")
_PAGE = (Param("limit", "page size", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT,
                                      "default": DEFAULT_LIMIT}),
         Param("offset", "skip this many", {"type": "integer", "minimum": 0, "default": 0}))
_TASK_LINKS = {"getTask": Link("get_task", {"taskId": "$response.body#/taskId"},
                               "the task with its results per client"),
               "cancelTask": Link("cancel_task", {"taskId": "$response.body#/taskId"})}


def _task_request(data: dict[str, Any], max_concurrency: int,
                  max_timeout: float) -> TaskRequest:
    f = Fields(data, "", [])
    for key in data:
        if key not in _TASK_FIELDS:
            f.fail(str(key)[:64], "is not a known field (command, clientIds, tag, concurrency, "
                                  "timeoutSeconds)")
    command = f.string("command", max_chars=MAX_COMMAND_CHARS)
    if command is None and not any(e["field"] == "command" for e in f.errors):
        f.fail("command", "is required")  # (absent or null; null means absent)
    elif command is not None and not command.strip():
        f.fail("command", "must not be empty")
    raw_ids = f.get("clientIds", "client_ids")
    tag = f.string("tag", max_chars=TAG_MAX_CHARS)
    client_ids: tuple[str, ...] | None = None
    if raw_ids is not None:
        if not isinstance(raw_ids, list) or not raw_ids:
            f.fail("clientIds", "must be a non-empty array of client ids")
        elif len(raw_ids) > MAX_TARGETS:
            f.fail("clientIds", f"must name at most {MAX_TARGETS} clients")
        else:
            ids = []
            for i, cid in enumerate(raw_ids):
                try:
                    ids.append(client_id_of(cid))
                except ValueError as exc:
                    f.fail(f"clientIds[{i}]", f"must be a client id: {exc}")
            client_ids = tuple(ids)
    if (raw_ids is None) == (tag is None) and not f.errors:
        f.fail("clientIds", "give either clientIds or tag (exactly one of them)")
    # Whole numbers, written 4 or 4.0 (JSON Schema's integers); the upper limits are the
    # configuration's (console.task_max_concurrency, console.max_command_timeout_seconds).
    concurrency: int | None = None
    raw_concurrency = f.number("concurrency", minimum=1)
    if raw_concurrency is not None:
        if raw_concurrency != int(raw_concurrency):
            f.fail("concurrency", "must be a whole number")
        elif raw_concurrency > max_concurrency:
            f.fail("concurrency", f"must be at most {max_concurrency} "
                                  "(console.task_max_concurrency)")
        else:
            concurrency = int(raw_concurrency)
    timeout = f.number("timeoutSeconds", "timeout_seconds", minimum=1, maximum=max_timeout)
    if f.errors:
        raise ValidationFailed(f.errors)
    assert command is not None
    return TaskRequest(command=command, client_ids=client_ids, tag=tag,
                       concurrency=concurrency, timeout_seconds=timeout)


def _time_arg(name: str) -> float | None:
    raw = request.args.get(name)
    if raw is None:  # (given empty, it is not a time: 422)
        return None
    try:
        return parse_iso(raw)
    except ValueError:
        raise invalid_parameter(name, "must be an ISO 8601 time, such as "
                                "2026-01-01T00:00:00Z") from None


def _str_arg(name: str, max_chars: int = 128) -> str | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    if len(raw) > max_chars or "\x00" in raw:
        raise invalid_parameter(name, f"must be at most {max_chars} characters")
    return raw


def add_routes(app: Quart, ctx: ApiContext, tasks: Tasks, audit: AuditLog,
               agents: Callable[[], list[dict[str, Any]]]) -> None:
    def principal() -> Principal:
        return request_principal(ctx)

    def task_id_of(raw: str) -> str:
        if not TASK_ID_RE.fullmatch(raw):
            raise ApiError(404, "not_found", "there is no such task")
        return raw

    async def answer(call: Any) -> Any:
        try:
            return await call
        except TaskError as exc:
            raise ApiError(exc.status, exc.code, exc.message,
                           [{"field": f, "message": m} for f, m in exc.details]) from None

    @app.post("/api/v1/tasks")
    @operation(
        "Run a command on many clients (a task)", tag="console", roles=EXEC_ROLES,
        description="Recorded (and audited) before it is answered, then run in the background, "
                    "`concurrency` clients at a time. A client that cannot take the command "
                    "(offline, no control channel, commands disabled by its owner) fails at "
                    "once. Progress: TASK_UPDATE on the topic `task.<taskId>`, and to the "
                    "creator directly.",
        body="TaskRequest",
        answer=Answer(202, "accepted: the task", "Task",
                      headers={"Location": "the task's URL"}),
        errors=("console_disabled", "too_many_tasks", "storage_unavailable", "not_ready"),
        links={202: _TASK_LINKS},
        refusals=(Refusal("clientIds[]", "there is no client"),
                  Refusal("tag", "no client has the tag"),
                  Refusal("clientIds", "too many clients"),
                  Refusal("concurrency", "must be at most"),
                  Refusal("timeoutSeconds", "must be at most")))
    async def create_task() -> Response:
        p = principal()
        try:
            tasks.require_creator(p)
        except TaskError as exc:
            raise ApiError(exc.status, exc.code, exc.message) from None
        cfg = ctx.config.console
        body = await request_json_object(ctx.config.http.max_body_bytes)
        req = _task_request(body, cfg.task_max_concurrency, cfg.max_command_timeout_seconds)
        rec = await answer(tasks.create(p, req, address=request_peer(
            ctx.config.http.trusted_proxies)))
        return json_response({**rec.to_json(), "topic": f"task.{rec.task_id}"}, 202,
                             {"Location": f"/api/v1/tasks/{rec.task_id}"})

    @app.get("/api/v1/tasks")
    @operation("List tasks", tag="console", roles=EXEC_ROLES,
               description="Newest first: every task for an admin (rpad's own and those other "
                           "systems report by publishing TASK_UPDATE), an operator's own for "
                           "an operator.",
               query=(Param("status", "only tasks in this state",
                            {"enum": list(TASK_STATUSES)}), *_PAGE),
               answer=Answer(200, "a page of tasks", "Tasks"))
    async def list_tasks() -> Response:
        p = principal()
        status = request.args.get("status")  # (given empty, not one of them: 422)
        if status is not None and status not in TASK_STATUSES:
            raise invalid_parameter("status", f"must be one of {', '.join(TASK_STATUSES)}")
        limit = int_arg(request.args.get("limit"), "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        offset = int_arg(request.args.get("offset"), "offset", 0, 0, 10**9)
        return json_response(await answer(tasks.list(p, limit=limit, offset=offset,
                                                     status=status)))

    @app.get("/api/v1/tasks/<task_id>")
    @operation("Read a task and its result on each client", tag="console", roles=EXEC_ROLES,
               description="An operator reads its own tasks only (another's is not found).",
               answer=Answer(200, "the task", "TaskDetail"))
    async def get_task(task_id: str) -> Response:
        p = principal()
        return json_response(await answer(tasks.get(p, task_id_of(task_id))))

    @app.post("/api/v1/tasks/<task_id>/cancel")
    @operation("Cancel a running task", tag="console", roles=EXEC_ROLES,
               description="Clients not started yet are skipped (cancelled), running commands "
                           "get SIGINT, then SIGKILL after their host's grace.",
               answer=Answer(202, "cancelling", "TaskCancelling"), errors=("not_running",))
    async def cancel_task(task_id: str) -> Response:
        p = principal()
        rec = await answer(tasks.cancel(p, task_id_of(task_id)))
        return json_response({"taskId": rec.task_id, "status": rec.status,
                              "cancelling": True}, 202)

    @app.get("/api/v1/audit")
    @operation(
        "Read the audit log", tag="console", roles=ADMIN,
        description="Every console session, every command (of a session or a task), every task "
                    "and every refused attempt: who, from which address, which client, the "
                    "command line, start, end, exit status, bytes of output. Newest first.",
        query=(Param("clientId", "only this client", S.text(128)),
               Param("userId", "only this user", S.text(128)),
               Param("kind", "only this kind", {"enum": list(AUDIT_KINDS)}),
               Param("status", "only this status", S.text(32)),
               Param("sessionId", "only this session", S.text(128)),
               Param("taskId", "only this task", S.text(128)),
               Param("since", "started at or after (ISO 8601)",
                     {"type": "string", "format": "date-time"}),
               Param("until", "started before (ISO 8601)",
                     {"type": "string", "format": "date-time"}),
               *_PAGE),
        answer=Answer(200, "a page of records", "AuditPage"))
    async def read_audit() -> Response:
        require_role(principal(), "admin")
        kind = request.args.get("kind")  # (given empty, not one of them: 422)
        if kind is not None and kind not in AUDIT_KINDS:
            raise invalid_parameter("kind", f"must be one of {', '.join(AUDIT_KINDS)}")
        q = AuditQuery(client_id=_str_arg("clientId"), user_id=_str_arg("userId"), kind=kind,
                       status=_str_arg("status", 32), session_id=_str_arg("sessionId"),
                       task_id=_str_arg("taskId"), since=_time_arg("since"),
                       until=_time_arg("until"),
                       limit=int_arg(request.args.get("limit"), "limit", DEFAULT_LIMIT, 1,
                                     MAX_LIMIT),
                       offset=int_arg(request.args.get("offset"), "offset", 0, 0, 10**9))
        items, total = await audit.query(q)
        return json_response({"items": items, "total": total, "limit": q.limit,
                              "offset": q.offset})

    @app.get("/api/v1/agents")
    @operation("List the agents' control channels", tag="console", roles=ADMIN,
               description="The agents connected to this rpad for commands, with what they "
                           "advertise.",
               answer=Answer(200, "the channels", "Agents"))
    async def list_agents() -> Response:
        require_role(principal(), "admin")
        found = agents()
        return json_response({"agents": found, "total": len(found)})
