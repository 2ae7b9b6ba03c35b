"""Who may run commands on which client (the console and tasks): the ``exec`` claim.

- ``admin`` tokens may reach every client.
- ``operator`` tokens may reach the clients their ``exec`` claim names: each entry is a glob
  on the client id (``rpa-*``) or, prefixed with ``tag:``, a glob on one of the client's tags
  (``tag:lab``, ``tag:site-*``). An operator token without ``exec`` reaches nothing.
- ``viewer``, ``service`` and ``agent`` tokens never, whatever claims they carry.

This is only rpad's half of the decision: the agent on the host decides whether it runs
commands at all, and which (see :mod:`rpad.client.policy`).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence

TAG_PREFIX = "tag:"
# The roles whose tokens may ever run commands.
EXEC_ROLES = ("admin", "operator")
MAX_EXEC_ENTRIES = 100
MAX_EXEC_ENTRY_CHARS = 200


def exec_claim_problem(value: object) -> str | None:
    """Why an ``exec`` claim is malformed, or None if it is a list of usable globs."""
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        return "the exec claim must be a list of non-empty strings"
    if len(value) > MAX_EXEC_ENTRIES:
        return f"the exec claim may hold at most {MAX_EXEC_ENTRIES} entries"
    if any(len(v) > MAX_EXEC_ENTRY_CHARS for v in value):
        return f"the exec claim's entries may be at most {MAX_EXEC_ENTRY_CHARS} characters"
    if any(v == TAG_PREFIX for v in value):
        return "the exec claim's entry tag: needs a tag glob after it"
    return None


def may_exec(role: str, exec_globs: Sequence[str], client_id: str,
             tags: Iterable[str]) -> bool:
    """Whether a token of ``role`` with ``exec_globs`` may run commands on this client."""
    if role == "admin":
        return True
    if role != "operator":
        return False
    tag_list: list[str] | None = None
    for glob in exec_globs:
        if glob.startswith(TAG_PREFIX):
            if tag_list is None:
                tag_list = [t for t in tags if isinstance(t, str)]
            pattern = glob[len(TAG_PREFIX):]
            if any(fnmatch.fnmatchcase(t, pattern) for t in tag_list):
                return True
        elif fnmatch.fnmatchcase(client_id, glob):
            return True
    return False


def may_exec_anywhere(role: str, exec_globs: Sequence[str]) -> bool:
    """Whether the token could reach any client at all (to show the console and tasks)."""
    return role == "admin" or (role == "operator" and bool(exec_globs))
