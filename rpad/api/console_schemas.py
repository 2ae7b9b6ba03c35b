"""The console's part of the contract: the JSON Schemas of batch tasks, the audit log and the
agents' channels (components of the OpenAPI document, :mod:`rpad.api.openapi`), and of the
console's WebSocket messages — ``terminal.*`` actions and their answers, task updates sent to
their creator, and the agent's control channel (``$defs`` of :mod:`rpad.api.wsschema`).

Answers are closed like the rest (a field the code sends and the schema lacks fails the tests).
Plain data, built on demand; nothing does I/O.
"""

from __future__ import annotations

from typing import Any

from ..core import tasks as t
from ..service.console import MAX_COMMAND_CHARS
from ..service.tasks import MAX_TARGETS
from . import schemas as S

Schema = dict[str, Any]

TASK_ID = S.string(100, pattern=S.anchored(t.TASK_ID_RE), examples=["3f9c2a1b7d4e5f60"])
SESSION_ID = S.string(64, minLength=1)
COMMAND_ID = S.string(64, pattern="^[A-Za-z0-9_-]{1,64}$")
COMMAND = S.text(MAX_COMMAND_CHARS, minLength=1)
RESULT_STATUS = {"enum": ["success", "error", "timeout", "cancelled"]}
AUDIT_KINDS = ("session", "command", "task", "denied")
# TERMINAL_ERROR's codes (rpad.service.console, rpad.service.commands, the agent's refusals).
CONSOLE_CODES = ("forbidden", "session_not_found", "unknown_client", "too_many_sessions",
                 "agent_not_connected", "commands_disabled", "not_allowed", "invalid_command",
                 "busy", "duplicate", "not_running", "agent_disconnected", "no_answer",
                 "storage_unavailable", "console_disabled", "invalid_field", "refused")


def _update() -> Schema:
    return S.obj({
        "taskId": S.string(), "status": {"enum": list(t.TASK_STATUSES)},
        "progress": {"type": "number", "minimum": 0, "maximum": 100},
        "currentDevice": S.nullable(S.string()), "totalDevices": S.COUNT,
        "completedDevices": S.COUNT, "failedDevices": S.COUNT,
    }, ("taskId", "status", "progress", "currentDevice", "totalDevices", "completedDevices",
        "failedDevices"))


def _task() -> Schema:
    update = _update()
    props = {**update["properties"],
             "source": {"enum": ["rpad", "publish"]}, "command": S.nullable(S.string()),
             "createdBy": S.nullable(S.string()), "createdAt": S.TIME,
             "startedAt": S.nullable(S.TIME), "endedAt": S.nullable(S.TIME),
             "concurrency": S.nullable(S.COUNT), "timeoutSeconds": S.nullable(S.NUMBER),
             "clientIds": {"type": "array", "items": S.CLIENT_ID}, "tag": S.nullable(S.string()),
             "topic": S.TOPIC}
    required = (*update["required"], "source", "command", "createdBy", "createdAt",
                "startedAt", "endedAt", "concurrency", "timeoutSeconds")
    return S.obj(props, required)


def _result() -> Schema:
    return S.obj({
        "clientId": S.CLIENT_ID,
        "status": {"enum": [t.R_PENDING, t.R_RUNNING, t.R_SUCCESS, t.R_ERROR, t.R_TIMEOUT,
                            t.R_CANCELLED, t.R_FAILED, t.R_INTERRUPTED]},
        "exitCode": S.nullable({"type": "integer"}), "signal": S.nullable({"type": "integer"}),
        "startedAt": S.nullable(S.TIME), "endedAt": S.nullable(S.TIME),
        "durationMs": S.nullable(S.COUNT), "outputBytes": S.COUNT,
        "truncated": {"type": "boolean"},
        "error": S.nullable(S.string(description="why it failed (a code, a colon, a sentence)")),
        "outputTail": S.string(description="the last bytes of its output"),
    }, ("clientId", "status", "exitCode", "signal", "startedAt", "endedAt", "durationMs",
        "outputBytes", "truncated", "error", "outputTail"))


def _task_request() -> Schema:
    """What the task route's reader accepts: the command (not blank), exactly one of the client
    ids (clientIds or, deprecated, client_ids; an integer id is its decimal string) and a tag,
    null meaning absent; the limits the configuration sets are refusals of the operation."""
    ids = {"type": "array", "items": S.CLIENT_ID_IN, "minItems": 1, "maxItems": MAX_TARGETS}
    tag = S.text(64, minLength=1)
    targets = {"clientIds": ids, "client_ids": ids, "tag": tag}
    return {
        **S.obj(S.optional({
            "command": S.not_blank(MAX_COMMAND_CHARS),
            "clientIds": ids,
            "client_ids": {**ids, "deprecated": True},
            "tag": tag,
            "concurrency": {"type": "integer", "minimum": 1},
            "timeoutSeconds": {"type": "number", "minimum": 1},
            "timeout_seconds": {"type": "number", "minimum": 1, "deprecated": True},
        }, ("command",)), ("command",)),
        "allOf": [
            # Exactly one way to name the clients (the others absent or null).
            {"anyOf": [{"required": [k], "properties": {
                k: schema, **{o: S.NULL for o in targets if o != k}}}
                for k, schema in targets.items()]},
            *S.one_spelling([("timeoutSeconds", "timeout_seconds")]),
        ],
        "description": "Exactly one of clientIds and tag. Every client must be reachable by "
                       "the token (admin, or an operator's exec claim).",
        "examples": [{"command": "systemctl status nginx", "tag": "web", "concurrency": 10,
                      "timeoutSeconds": 30}],
    }


def components() -> dict[str, Schema]:
    """The schemas the console's routes name (merged into the OpenAPI components)."""
    task = _task()
    return {
        "TaskRequest": _task_request(),
        "Task": task,
        "TaskDetail": S.obj({**task["properties"], "results": {"type": "array",
                                                               "items": _result()}},
                            (*task["required"], "results")),
        "Tasks": S.obj({"items": {"type": "array", "items": task}, "total": S.COUNT,
                        "limit": S.COUNT, "offset": S.COUNT},
                       ("items", "total", "limit", "offset")),
        "TaskCancelling": S.obj({"taskId": S.string(), "status": {"enum": list(t.TASK_STATUSES)},
                                 "cancelling": {"const": True}},
                                ("taskId", "status", "cancelling")),
        "AuditPage": S.obj({"items": {"type": "array", "items": S.obj({
            "id": S.COUNT, "kind": {"enum": list(AUDIT_KINDS)}, "userId": S.string(),
            "role": S.string(), "address": S.nullable(S.string()),
            "clientId": S.nullable(S.string()), "sessionId": S.nullable(S.string()),
            "taskId": S.nullable(S.string()), "command": S.nullable(S.string()),
            "startedAt": S.TIME, "endedAt": S.nullable(S.TIME), "status": S.string(),
            "exitCode": S.nullable({"type": "integer"}),
            "outputBytes": S.nullable(S.COUNT), "truncated": S.nullable({"type": "boolean"}),
            "detail": S.nullable(S.string()),
        }, ("id", "kind", "userId", "role", "address", "clientId", "sessionId", "taskId",
            "command", "startedAt", "endedAt", "status", "exitCode", "outputBytes", "truncated",
            "detail"))}, "total": S.COUNT, "limit": S.COUNT, "offset": S.COUNT},
            ("items", "total", "limit", "offset")),
        "Agents": S.obj({"agents": {"type": "array", "items": S.obj({
            "clientId": S.CLIENT_ID, "connectionId": S.string(), "connectedAt": S.TIME,
            "remoteAddress": S.string(), "agentVersion": S.nullable(S.string()),
            "capabilities": S.CAPABILITIES, "lastPing": S.nullable(S.TIME),
            "lastPong": S.nullable(S.TIME), "isAlive": {"type": "boolean"},
            "queued": S.COUNT}, ("clientId", "connectionId", "connectedAt", "remoteAddress",
                                 "agentVersion", "capabilities", "lastPing", "lastPong",
                                 "isAlive", "queued"))},
            "total": S.COUNT}, ("agents", "total")),
    }


# -- the WebSocket protocol ----------------------------------------------------------------------


def ws_actions(action: Any) -> dict[str, Schema]:
    """The console's client actions; ``action(name, description, fields, required)`` builds
    one as :mod:`rpad.api.wsschema` does."""
    sid = {"sessionId": SESSION_ID}
    return {
        "terminal.open": action("terminal.open", "Open a console session to a client "
                                "(admin, or an operator whose exec claim covers it).",
                                {"clientId": S.CLIENT_ID, "ref": S.string(64)}, ("clientId",)),
        "terminal.command": action("terminal.command", "Run a command in a session (one at a "
                                   "time).", {**sid, "command": COMMAND,
                                              "timeoutSeconds": {"type": "number",
                                                                 "exclusiveMinimum": 0},
                                              "maxOutputBytes": {"type": "integer",
                                                                 "minimum": 1}},
                                   ("sessionId", "command")),
        "terminal.ack": action("terminal.ack", "The running command's output shown so far (raw "
                               "bytes, in all): credit for the agent.",
                               {**sid, "commandId": COMMAND_ID, "shownBytes": S.COUNT},
                               ("sessionId", "commandId", "shownBytes")),
        "terminal.cancel": action("terminal.cancel", "Cancel the running command (SIGINT, then "
                                  "SIGKILL after the host's grace).", sid, ("sessionId",)),
        "terminal.history": action("terminal.history", "The session's commands.", sid,
                                   ("sessionId",)),
        "terminal.attach": action("terminal.attach", "Receive a session's messages (its user, or "
                                  "an admin).", sid, ("sessionId",)),
        "terminal.list": action("terminal.list", "The user's open sessions.", {}),
        "terminal.close": action("terminal.close", "Close a session (its command is cancelled).",
                                 sid, ("sessionId",)),
    }


def ws_messages(control: Any) -> dict[str, Schema]:
    """The console's server messages (all with ``topic`` and ``seq`` null); ``control(type,
    data, description)`` builds one as :mod:`rpad.api.wsschema` does."""
    sid = {"sessionId": SESSION_ID}
    caps = S.nullable(S.CAPABILITIES)
    done = {**sid, "commandId": COMMAND_ID, "command": S.string(), "status": RESULT_STATUS,
            "exitCode": S.nullable({"type": "integer"}), "signal": S.nullable({"type": "integer"}),
            "durationMs": S.nullable(S.COUNT), "truncated": {"type": "boolean"},
            "outputBytes": S.COUNT}
    history_item = S.obj({
        "commandId": COMMAND_ID, "command": S.string(), "startedAt": S.TIME,
        "endedAt": S.nullable(S.TIME),
        "status": {"enum": ["running", "success", "error", "timeout", "cancelled", "refused",
                            "lost"]},
        "exitCode": S.nullable({"type": "integer"}), "signal": S.nullable({"type": "integer"}),
        "durationMs": S.nullable(S.COUNT), "truncated": {"type": "boolean"},
        "outputBytes": S.COUNT, "output": S.string(description="its last 16 KiB"),
    }, ("commandId", "command", "startedAt", "endedAt", "status", "output"))
    return {
        "TERMINAL_CONNECTED": control("TERMINAL_CONNECTED", S.obj({
            **sid, "clientId": S.CLIENT_ID, "capabilities": caps,
            "running": S.nullable(COMMAND_ID), "ref": S.string(64),
            "attached": {"const": True}}, ("sessionId", "clientId", "capabilities", "running")),
            "A console session is open (terminal.open), or this user is attached to one."),
        "TERMINAL_ERROR": control("TERMINAL_ERROR", S.obj({
            "code": {"enum": list(CONSOLE_CODES)}, "message": S.string(),
            # What the refused action named, echoed (it may not exist).
            "sessionId": S.string(64), "commandId": COMMAND_ID, "ref": S.string(64),
            "clientId": S.string(128)},
            ("code", "message")),
            "A console action refused, or a command refused by the agent or lost with it."),
        "TERMINAL_CLOSED": control("TERMINAL_CLOSED", S.obj({
            **sid, "reason": {"enum": ["closed", "idle", "detached"]}},
            ("sessionId", "reason")), "A session ended."),
        "TERMINAL_SESSIONS": control("TERMINAL_SESSIONS", S.obj({"sessions": {
            "type": "array", "items": S.obj({
                **sid, "clientId": S.CLIENT_ID, "userId": S.USER_ID, "openedAt": S.TIME,
                "running": S.nullable(COMMAND_ID)},
                ("sessionId", "clientId", "userId", "openedAt", "running"))}}, ("sessions",)),
            "Answers terminal.list."),
        "COMMAND_START": control("COMMAND_START", S.obj({
            **sid, "commandId": COMMAND_ID, "command": S.string(), "startedAt": S.TIME,
            "timeoutSeconds": S.NUMBER, "maxOutputBytes": S.COUNT},
            ("sessionId", "commandId", "command", "startedAt", "timeoutSeconds",
             "maxOutputBytes")), "The agent has started a session's command."),
        "COMMAND_OUTPUT": control("COMMAND_OUTPUT", S.obj({
            **sid, "commandId": COMMAND_ID, "chunk": S.string(),
            "stream": {"enum": ["stdout", "stderr"]}, "bytes": S.COUNT},
            ("sessionId", "commandId", "chunk", "stream", "bytes")),
            "Output of a session's command, as produced (acknowledge with terminal.ack)."),
        "COMMAND_DONE": control("COMMAND_DONE", S.obj(done, tuple(done)),
                                "A session's command has ended."),
        "COMMAND_HISTORY": control("COMMAND_HISTORY", S.obj({
            **sid, "clientId": S.CLIENT_ID, "commands": {"type": "array",
                                                         "items": history_item}},
            ("sessionId", "clientId", "commands")), "Answers terminal.history."),
        "TASK_UPDATE.direct": control(t.TASK_UPDATE, _update(),
                                      "A task's progress, to the user who created it."),
    }


def ws_agent_messages(control: Any, action: Any) -> tuple[dict[str, Schema], dict[str, Schema]]:
    """The agent's control channel (``/api/v1/agent/ws``): (agent actions, rpad's messages)."""
    cid = {"commandId": COMMAND_ID}
    actions = {
        "agent.hello": action("agent.hello", "An agent's first message on its control channel.",
                              {"protocol": {"const": 1}, "agentVersion": S.string(),
                               "capabilities": S.CAPABILITIES}, ("protocol", "capabilities")),
        "command.started": action("command.started", "The agent started a command.", cid,
                                  ("commandId",)),
        "command.refused": action("command.refused", "The agent will not run a command.",
                                  {**cid, "code": S.string(), "message": S.string()},
                                  ("commandId", "code")),
        "command.output": action("command.output", "Output, within the credit granted.",
                                 {**cid, "stream": {"enum": ["stdout", "stderr"]},
                                  "chunk": S.string(), "bytes": S.COUNT},
                                 ("commandId", "stream", "chunk", "bytes")),
        "command.done": action("command.done", "A command ended.",
                               {**cid, "status": RESULT_STATUS,
                                "exitCode": S.nullable({"type": "integer"}),
                                "signal": S.nullable({"type": "integer"}),
                                "durationMs": S.nullable(S.COUNT),
                                "truncated": {"type": "boolean"}, "outputBytes": S.COUNT},
                               ("commandId", "status")),
    }
    messages = {
        "AGENT_REGISTERED": control("AGENT_REGISTERED", S.obj({
            "clientId": S.CLIENT_ID, "protocol": {"const": 1}, "maxMessageBytes": S.COUNT},
            ("clientId", "protocol", "maxMessageBytes")), "Answers agent.hello."),
        "COMMAND_RUN": control("COMMAND_RUN", S.obj({
            **cid, "command": COMMAND, "timeoutSeconds": S.NUMBER, "maxOutputBytes": S.COUNT,
            "creditBytes": S.COUNT},
            ("commandId", "command", "timeoutSeconds", "maxOutputBytes", "creditBytes")),
            "Run a command (to an agent)."),
        "COMMAND_CREDIT": control("COMMAND_CREDIT", S.obj({**cid, "bytes": S.COUNT},
                                                          ("commandId", "bytes")),
                                  "More output may be sent (to an agent)."),
        "COMMAND_CANCEL": control("COMMAND_CANCEL", S.obj({**cid, "reason": S.string()},
                                                          ("commandId", "reason")),
                                  "Stop a command (to an agent)."),
    }
    return actions, messages
