"""Client lists: filtering, counting and paging the node's view (``GET /api/v1/clients``)."""

from __future__ import annotations

from collections.abc import Iterable

import attrs

from .model import OFFLINE, ONLINE, UNKNOWN, Client

STATUSES = (ONLINE, OFFLINE, UNKNOWN)


@attrs.frozen
class ClientQuery:
    """``status``: one of :data:`STATUSES` or None for all; ``q``: a case-insensitive substring
    of the id, name, address, version or a tag; ``tag``: an exact tag."""

    status: str | None = None
    q: str = ""
    tag: str | None = None
    limit: int = 1000
    offset: int = 0


@attrs.frozen
class ClientPage:
    clients: list[Client]
    # Clients matching the query (its status included), before paging.
    total: int
    # Clients matching ``q`` and ``tag``, by status (whatever the status filter).
    counts: dict[str, int]


def matches_text(c: Client, q: str) -> bool:
    """``q`` (lower case) is part of the client's id, name, address, version or a tag."""
    for value in (c.client_id, c.name, c.ip_address, c.version):
        if value and q in value.lower():
            return True
    return any(q in t.lower() for t in c.tags)


def query_clients(clients: Iterable[Client], query: ClientQuery) -> ClientPage:
    """The page of clients ``query`` asks for, sorted by client id."""
    q = query.q.strip().lower()
    counts = dict.fromkeys(STATUSES, 0)
    matched: list[Client] = []
    for c in clients:
        if query.tag is not None and query.tag not in c.tags:
            continue
        if q and not matches_text(c, q):
            continue
        counts[c.status] = counts.get(c.status, 0) + 1
        if query.status is None or c.status == query.status:
            matched.append(c)
    matched.sort(key=lambda c: c.client_id)
    return ClientPage(matched[query.offset: query.offset + query.limit], len(matched), counts)
