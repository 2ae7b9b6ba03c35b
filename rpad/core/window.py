"""The windowed fleet view: one page of the client list, filtered, searched and sorted, kept
current incrementally so that a fleet of 100,000 clients costs a dashboard only its page.

A *view* is ``{filter, q, tag, sort, offset, limit}``: ``filter`` one of all / online /
offline / unknown; ``q`` a case-insensitive substring of the id, name, address, version or a
tag (as ``GET /api/v1/clients``); ``tag`` an exact tag; ``sort`` a key (``status``, ``name``,
``id``, ``version``, ``heartbeat``, ``cpu``, ``memory``), ``-`` in front for descending;
``offset`` and ``limit`` the page. Its answer is the page (client ids, in order) and counts:
total / online / offline / unknown, and ``matching`` (what filter, q and tag leave).

The order. Each key orders ascending with a missing value lowest (no version, no heartbeat,
no metrics), ties broken by the client id; descending is exactly the reverse. ``status`` orders
offline, unknown, online (the operator's problems first), then by name; ``name`` is the name
(else the id) without case. This order is total, so a page is well defined.

How. :class:`WindowEngine` keeps, for each (status partition, sort key) in use, a sorted list
of every client's key (``sortedcontainers.SortedList``: position lookups in O(log n)). Its
:meth:`WindowEngine.refresh` reads the registry's journal of changed clients and moves only
their keys (a heartbeat moves a client in the heartbeat, CPU and memory orders; its name,
status and version orders do not change); a view without ``q`` or ``tag`` is then a slice of
one list. A ``q``/``tag`` family keeps its member set (re-checked only for clients whose text
changed), and its page is sorted from its members when they are few, else found by walking the
list and skipping non-members. Lists and families nobody used for :data:`IDLE_REFRESHES`
refreshes are dropped.

Pure: no I/O, no clock; :func:`brute_force` is the reference it is tested against.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs
from sortedcontainers import SortedList

from .errors import ValidationFailed
from .model import OFFLINE, ONLINE, UNKNOWN, Client
from .registry import ChangeJournal, Registry

FILTERS = ("all", ONLINE, OFFLINE, UNKNOWN)
SORT_KEYS = ("status", "name", "id", "version", "heartbeat", "cpu", "memory")
MAX_LIMIT = 200
MAX_OFFSET = 10_000_000
MAX_Q_CHARS = 128
# A q/tag family with at most this many members is sorted directly for each page.
SMALL_FAMILY = 2000
# Indexes and families unused for this many refreshes are dropped.
IDLE_REFRESHES = 30
_STATUS_RANK = {OFFLINE: 0, UNKNOWN: 1, ONLINE: 2}

Key = tuple[Any, ...]


def _name(c: Client) -> str:
    return (c.name or c.client_id).lower()


def _metric(c: Client, name: str) -> float | None:
    m = c.latest_metrics
    if not m:
        return None
    return m.get(name)


def _memory(c: Client) -> float | None:
    m = c.latest_metrics
    if not m:
        return None
    used, total = m.get("memoryUsageBytes"), m.get("memoryTotalBytes")
    if used is None or not total:
        return None
    return used / total


def _opt(value: Any) -> tuple[int, Any]:
    return (0, 0) if value is None else (1, value)


# Each key: client → a tuple ending with the client id (the tie-breaker, and how an index entry
# names its client).
KEY_FUNCTIONS: Mapping[str, Callable[[Client], Key]] = {
    "status": lambda c: (_STATUS_RANK.get(c.status, 1), _name(c), c.client_id),
    "name": lambda c: (_name(c), c.client_id),
    "id": lambda c: (c.client_id,),
    "version": lambda c: (*_opt(c.version), c.client_id),
    "heartbeat": lambda c: (*_opt(c.last_heartbeat_at), c.client_id),
    "cpu": lambda c: (*_opt(_metric(c, "cpuUsagePercent")), c.client_id),
    "memory": lambda c: (*_opt(_memory(c)), c.client_id),
}


@attrs.frozen
class View:
    filter: str = "all"
    q: str = ""
    tag: str | None = None
    sort: str = "status"
    desc: bool = False
    offset: int = 0
    limit: int = 50

    def as_json(self) -> dict[str, Any]:
        return {"filter": self.filter, "q": self.q, "tag": self.tag,
                "sort": ("-" if self.desc else "") + self.sort, "offset": self.offset,
                "limit": self.limit}


def parse_view(data: Any, prefix: str = "view.") -> View:
    """A view from a client message; every bad field named (``view.sort``, ...)."""
    if not isinstance(data, dict):
        raise ValidationFailed([{"field": prefix.rstrip("."), "message": "must be an object"}])
    errors: list[dict[str, str]] = []

    def fail(name: str, message: str) -> None:
        errors.append({"field": prefix + name, "message": message})

    known = {"filter", "q", "tag", "sort", "offset", "limit"}
    for k in data:
        if k not in known:
            fail(str(k)[:64], "is not a known field (filter, q, tag, sort, offset, limit)")
    filt = data.get("filter", "all")
    if filt not in FILTERS:
        fail("filter", "must be one of " + ", ".join(FILTERS))
    q = data.get("q", "")
    if q is None:
        q = ""
    if not isinstance(q, str) or len(q) > MAX_Q_CHARS or "\x00" in q:
        fail("q", f"must be a string of at most {MAX_Q_CHARS} characters, without NUL")
        q = ""
    tag = data.get("tag")
    if tag is not None and (not isinstance(tag, str) or not 0 < len(tag) <= 64):
        fail("tag", "must be a string of 1 to 64 characters, or null")
        tag = None
    sort = data.get("sort", "status")
    desc = isinstance(sort, str) and sort.startswith("-")
    key = sort[1:] if desc else sort
    if key not in SORT_KEYS:
        fail("sort", "must be one of " + ", ".join(SORT_KEYS) + ", with - in front for "
                     "descending")
    offset, limit = data.get("offset", 0), data.get("limit", 50)
    if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset <= MAX_OFFSET:
        fail("offset", f"must be an integer from 0 to {MAX_OFFSET}")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        fail("limit", f"must be an integer from 1 to {MAX_LIMIT}")
    if errors:
        raise ValidationFailed(errors)
    return View(filt, q.strip().lower(), tag, key, desc, offset, limit)


def haystack(c: Client) -> str:
    """The client's searchable text, lower case, fields apart (``q`` holds no NUL)."""
    return "\x00".join(v.lower() for v in (c.client_id, c.name, c.ip_address, c.version, *c.tags)
                       if v)


def matches(c: Client, view: View) -> bool:
    if view.filter != "all" and c.status != view.filter:
        return False
    if view.tag is not None and view.tag not in c.tags:
        return False
    return not view.q or view.q in haystack(c)


@attrs.frozen
class Window:
    ids: list[str]
    counts: dict[str, int]


def _counts(statuses: Iterable[str], matching: int) -> dict[str, int]:
    counts = {"total": 0, ONLINE: 0, OFFLINE: 0, UNKNOWN: 0}
    for s in statuses:
        counts["total"] += 1
        counts[s] = counts.get(s, 0) + 1
    counts["matching"] = matching
    return counts


def brute_force(clients: Iterable[Client], view: View) -> Window:
    """The reference: filter, sort and slice the whole list."""
    clients = list(clients)
    keyfn = KEY_FUNCTIONS[view.sort]
    chosen = sorted((c for c in clients if matches(c, view)), key=keyfn, reverse=view.desc)
    page = chosen[view.offset: view.offset + view.limit]
    return Window([c.client_id for c in page],
                  _counts((c.status for c in clients), len(chosen)))


class _Rec:
    __slots__ = ("hay", "keys", "status", "tags", "text")

    def __init__(self, status: str, text: tuple[Any, ...], hay: str,
                 tags: tuple[str, ...]) -> None:
        self.status = status
        self.text = text
        self.hay = hay
        self.tags = tags
        self.keys: dict[str, Key] = {}


class _Family:
    """The clients matching a (q, tag) pair, with their count by status."""

    __slots__ = ("by_status", "members", "q", "tag", "used")

    def __init__(self, q: str, tag: str | None) -> None:
        self.q, self.tag = q, tag
        self.members: dict[str, str] = {}  # id -> status
        self.by_status = {ONLINE: 0, OFFLINE: 0, UNKNOWN: 0}
        self.used = 0

    def accepts(self, rec: _Rec) -> bool:
        return (self.tag is None or self.tag in rec.tags) and (not self.q or self.q in rec.hay)

    def put(self, cid: str, rec: _Rec | None) -> None:
        old = self.members.pop(cid, None)
        if old is not None:
            self.by_status[old] -= 1
        if rec is not None and self.accepts(rec):
            self.members[cid] = rec.status
            self.by_status[rec.status] = self.by_status.get(rec.status, 0) + 1

    def count(self, filt: str) -> int:
        return len(self.members) if filt == "all" else self.by_status.get(filt, 0)


class WindowEngine:
    """Pages of the registry's clients for any number of views (see the module's doc)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._journal: ChangeJournal = registry.watch_changes()
        self._recs: dict[str, _Rec] = {}
        self._status_counts = {ONLINE: 0, OFFLINE: 0, UNKNOWN: 0}
        # (partition, key) -> sorted keys; partition "all" or a status.
        self._indexes: dict[tuple[str, str], SortedList] = {}
        self._index_used: dict[tuple[str, str], int] = {}
        self._keys_in_use: dict[str, int] = {}
        self._families: dict[tuple[str, str | None], _Family] = {}
        self.refreshes = 0
        for c in registry:
            self._put(c)

    # -- keeping current -----------------------------------------------------------------------

    def refresh(self) -> None:
        """Apply every change the registry journaled since the last refresh; drop indexes and
        families nobody used for a while."""
        changed, removed = self._journal.take()
        for cid in removed:
            self._drop(cid)
        get = self.registry.get
        for cid in changed:
            c = get(cid)
            if c is None:
                self._drop(cid)
            else:
                self._put(c)
        self.refreshes += 1
        idle = self.refreshes - IDLE_REFRESHES
        for ik in [k for k, used in self._index_used.items() if used < idle]:
            del self._indexes[ik], self._index_used[ik]
            self._keys_in_use[ik[1]] -= 1
            if not self._keys_in_use[ik[1]]:
                del self._keys_in_use[ik[1]]
                for rec in self._recs.values():
                    rec.keys.pop(ik[1], None)
        for fk in [k for k, f in self._families.items() if f.used < idle]:
            del self._families[fk]

    def _drop(self, cid: str) -> None:
        rec = self._recs.pop(cid, None)
        if rec is None:
            return
        self._status_counts[rec.status] -= 1
        for (part, key), index in self._indexes.items():
            if part == "all" or part == rec.status:
                index.remove(rec.keys[key])
        for fam in self._families.values():
            fam.put(cid, None)

    def _put(self, c: Client) -> None:
        cid = c.client_id
        old = self._recs.get(cid)
        text = (c.name, c.ip_address, c.version, tuple(c.tags))
        if old is not None and old.text == text:
            rec = _Rec(c.status, text, old.hay, old.tags)
        else:
            rec = _Rec(c.status, text, haystack(c), text[3])
        for key in self._keys_in_use:
            rec.keys[key] = KEY_FUNCTIONS[key](c)
        self._recs[cid] = rec
        if old is not None:
            self._status_counts[old.status] -= 1
        self._status_counts[rec.status] = self._status_counts.get(rec.status, 0) + 1
        for (part, key), index in self._indexes.items():
            was = old is not None and (part == "all" or part == old.status)
            now = part == "all" or part == rec.status
            new_key = rec.keys[key]
            if was:
                assert old is not None
                old_key = old.keys[key]
                if now and old_key == new_key:
                    continue
                index.remove(old_key)
            if now:
                index.add(new_key)
        if old is None or old.text != text or old.status != rec.status:
            for fam in self._families.values():
                fam.put(cid, rec)

    def _index(self, part: str, key: str) -> SortedList:
        ik = (part, key)
        index = self._indexes.get(ik)
        if index is None:
            if key not in self._keys_in_use:
                fn = KEY_FUNCTIONS[key]
                get = self.registry.get
                for cid, rec in self._recs.items():
                    c = get(cid)
                    assert c is not None
                    rec.keys[key] = fn(c)
            self._keys_in_use[key] = self._keys_in_use.get(key, 0) + 1
            index = self._indexes[ik] = SortedList(
                rec.keys[key] for rec in self._recs.values()
                if part == "all" or rec.status == part)
        self._index_used[ik] = self.refreshes
        return index

    def _family(self, q: str, tag: str | None) -> _Family:
        fk = (q, tag)
        fam = self._families.get(fk)
        if fam is None:
            fam = self._families[fk] = _Family(q, tag)
            for cid, rec in self._recs.items():
                fam.put(cid, rec)
        fam.used = self.refreshes
        return fam

    # -- reading -------------------------------------------------------------------------------

    def counts(self, matching: int) -> dict[str, int]:
        sc = self._status_counts
        return {"total": len(self._recs), ONLINE: sc[ONLINE], OFFLINE: sc[OFFLINE],
                UNKNOWN: sc[UNKNOWN], "matching": matching}

    def window(self, view: View) -> Window:
        """The page of ``view`` as of the last :meth:`refresh`."""
        index = self._index(view.filter, view.sort)
        start, stop = view.offset, view.offset + view.limit
        if not view.q and view.tag is None:
            n = len(index)
            if view.desc:
                keys = list(index.islice(max(0, n - stop), max(0, n - start), reverse=True))
            else:
                keys = list(index.islice(start, stop))
            return Window([k[-1] for k in keys], self.counts(n))
        fam = self._family(view.q, view.tag)
        matching = fam.count(view.filter)
        if start >= matching:
            return Window([], self.counts(matching))
        if matching <= SMALL_FAMILY:
            want = view.filter
            recs = self._recs
            keys = sorted((recs[cid].keys[view.sort] for cid, status in fam.members.items()
                           if want == "all" or status == want), reverse=view.desc)
            return Window([k[-1] for k in keys[start:stop]], self.counts(matching))
        members = fam.members
        walk = index.islice(reverse=view.desc)
        hits = (k[-1] for k in walk if k[-1] in members)
        return Window(list(itertools.islice(hits, start, stop)), self.counts(matching))
