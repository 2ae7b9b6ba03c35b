"""Who is asking: the principal a verified token names, its role, and the role checks (SPEC §2).

| role | may |
|---|---|
| agent | heartbeat for ``sub`` only; read its own status |
| viewer | read clients and status; subscribe to built-in topics and its ``topics`` claim |
| service | what a viewer may, plus heartbeats for any client and publish/notify |
| admin | everything |
"""

from __future__ import annotations

import attrs

from .errors import AuthError

ROLES = ("agent", "viewer", "operator", "service", "admin")
# An operator reads like a viewer; what it may run is its exec claim (core/exec_access.py).
_RANK = {"agent": 0, "viewer": 1, "operator": 1, "service": 2, "admin": 3}


@attrs.frozen(slots=True)
class Principal:
    sub: str
    role: str
    topics: tuple[str, ...] = ()
    publish: tuple[str, ...] = ()
    exp: float | None = None
    gen: int = 0
    # Clients (id globs, tag:<glob>) an operator may run commands on (core/exec_access.py).
    exec: tuple[str, ...] = ()

    def at_least(self, role: str) -> bool:
        return _RANK[self.role] >= _RANK[role]

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def require_role(p: Principal, role: str) -> None:
    if not p.at_least(role):
        raise AuthError(403, f"this needs the {role} role or higher; the token's role is {p.role}")


def require_client_access(p: Principal, client_id: str, *, write: bool) -> None:
    """Agents may only touch their own client; viewers may read; service/admin may write."""
    if p.role == "agent":
        if p.sub != client_id:
            raise AuthError(403, "an agent token may only be used for its own client id")
        return
    if write and not p.at_least("service"):
        raise AuthError(403, f"sending heartbeats needs the agent, service or admin role; the token's role is {p.role}")
