"""Silences and maintenance windows: when matching clients raise no alerts.

A :class:`Silence` is made by an admin (``POST /api/v1/silences``): a match on client ids
and/or tags, and a time range. A :class:`MaintenanceWindow` comes from the config and recurs
weekly at a local time in a named time zone (``zoneinfo``), so "Saturdays 02:00-04:00
Europe/Berlin" stays at 02:00 local time across daylight-saving changes. :class:`SilenceBook`
answers the one question the alert policy asks: is this client silenced at this moment, and
until when?

Pure: no I/O, no clock (times are passed in, wall-clock epoch seconds).

Error handling: :func:`parse_silence` raises :class:`~rpad.core.errors.ValidationFailed`
naming every bad field by its camelCase path (``match.tags[0]``, ``endsAt``, ...).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import attrs

from .errors import ValidationFailed
from .times import iso, parse_iso
from .validation import TAG_RE, Fields, client_id_of, kind_of

# A silence may last at most this long (a forgotten silence is a blind spot).
MAX_SILENCE_SECONDS = 366 * 86400.0
MAX_MATCH_ITEMS = 1000
MAX_COMMENT_CHARS = 1024
# Characters of a tag pattern that rpad does not interpret: tags match exactly.
_WILDCARDS = re.compile(r"[*?\[\]]")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@attrs.frozen
class Match:
    """Which clients: any of ``client_ids``, or any client carrying one of ``tags``."""

    client_ids: frozenset[str] = frozenset()
    tags: frozenset[str] = frozenset()

    def matches(self, client_id: str, tags: Iterable[str]) -> bool:
        if client_id in self.client_ids:
            return True
        return bool(self.tags) and any(t in self.tags for t in tags)

    def to_json(self) -> dict[str, Any]:
        return {"clientIds": sorted(self.client_ids), "tags": sorted(self.tags)}


@attrs.frozen
class Silence:
    id: str
    match: Match
    starts_at: float
    ends_at: float
    comment: str
    created_by: str
    created_at: float

    def active(self, now: float) -> bool:
        return self.starts_at <= now < self.ends_at

    def to_json(self, now: float) -> dict[str, Any]:
        return {"id": self.id, "match": self.match.to_json(), "startsAt": iso(self.starts_at),
                "endsAt": iso(self.ends_at), "comment": self.comment,
                "createdBy": self.created_by, "createdAt": iso(self.created_at),
                "active": self.active(now), "kind": "silence"}


@attrs.frozen
class MaintenanceWindow:
    """A weekly window: on each of ``days`` (0 = Monday) at ``start`` (minutes after local
    midnight) in ``zone``, for ``duration_seconds``."""

    name: str
    match: Match
    days: frozenset[int]
    start_minutes: int
    duration_seconds: float
    zone: str

    def _occurrences(self, now: float, back_days: int, ahead_days: int) -> list[tuple[float, float]]:
        tz = ZoneInfo(self.zone)
        today = datetime.fromtimestamp(now, tz).date()
        out = []
        for offset in range(-back_days, ahead_days + 1):
            day = today + timedelta(days=offset)
            if day.weekday() not in self.days:
                continue
            local = datetime(day.year, day.month, day.day, self.start_minutes // 60,
                             self.start_minutes % 60, tzinfo=tz)
            start = local.timestamp()
            out.append((start, start + self.duration_seconds))
        return out

    def covering(self, now: float) -> tuple[float, float] | None:
        """The occurrence in force at ``now`` (start, end), or None."""
        back = int(self.duration_seconds // 86400) + 1
        found = None
        for start, end in self._occurrences(now, back, 0):
            if start <= now < end and (found is None or end > found[1]):
                found = (start, end)
        return found

    def next_start(self, now: float) -> tuple[float, float] | None:
        """The next occurrence that starts after ``now``."""
        for start, end in self._occurrences(now, 0, 8):
            if start > now:
                return start, end
        return None


class SilenceBook:
    """The silences and maintenance windows in force; answers :meth:`silenced_until`."""

    def __init__(self, silences: Iterable[Silence] = (),
                 windows: Sequence[MaintenanceWindow] = ()) -> None:
        self.silences: dict[str, Silence] = {s.id: s for s in silences}
        self.windows = list(windows)
        # Bumped on every change, so the policy knows to look at deferred alerts again.
        self.version = 0

    def add(self, silence: Silence) -> None:
        self.silences[silence.id] = silence
        self.version += 1

    def remove(self, silence_id: str) -> Silence | None:
        s = self.silences.pop(silence_id, None)
        if s is not None:
            self.version += 1
        return s

    def set_windows(self, windows: Sequence[MaintenanceWindow]) -> None:
        self.windows = list(windows)
        self.version += 1

    def prune(self, now: float) -> list[Silence]:
        """Forget silences that have ended; returns them."""
        gone = [s for s in self.silences.values() if s.ends_at <= now]
        for s in gone:
            del self.silences[s.id]
        if gone:
            self.version += 1
        return gone

    def silenced_until(self, client_id: str, tags: Iterable[str], now: float) -> float | None:
        """The end of the silence (or chain of overlapping silences and windows) that covers
        the client at ``now``, or None when it is not silenced."""
        tag_list = list(tags)
        until: float | None = None
        t = now
        # Follow overlapping silences: one ending at 10:00 and another from 09:30 to 11:00
        # silence the client until 11:00. Bounded: each step moves strictly later.
        for _ in range(64):
            end = self._end_at(client_id, tag_list, t)
            if end is None or (until is not None and end <= until):
                break
            until = t = end
        return until

    def _end_at(self, client_id: str, tags: list[str], t: float) -> float | None:
        end: float | None = None
        for s in self.silences.values():
            if s.active(t) and s.match.matches(client_id, tags):
                end = s.ends_at if end is None else max(end, s.ends_at)
        for w in self.windows:
            if w.match.matches(client_id, tags):
                occ = w.covering(t)
                if occ is not None:
                    end = occ[1] if end is None else max(end, occ[1])
        return end

    def next_change(self, now: float) -> float | None:
        """The next time a silence or window starts (alerts due then may have to wait)."""
        starts = [s.starts_at for s in self.silences.values() if s.starts_at > now]
        for w in self.windows:
            occ = w.next_start(now)
            if occ is not None:
                starts.append(occ[0])
        return min(starts, default=None)

    def active_json(self, now: float) -> list[dict[str, Any]]:
        """Silences not yet ended, and each window's current or next occurrence."""
        out = [s.to_json(now) for s in sorted(self.silences.values(), key=lambda s: s.starts_at)
               if s.ends_at > now]
        for w in self.windows:
            occ = w.covering(now) or w.next_start(now)
            if occ is None:
                continue
            out.append({"id": f"maintenance:{w.name}", "match": w.match.to_json(),
                        "startsAt": iso(occ[0]), "endsAt": iso(occ[1]),
                        "comment": f"maintenance window {w.name}", "createdBy": "config",
                        "createdAt": None, "active": occ[0] <= now < occ[1],
                        "kind": "maintenance"})
        return out


# -- validation --------------------------------------------------------------------------------


def parse_match(value: Any, f: Fields, name: str = "match") -> Match | None:
    """``{clientIds?, tags?}``: at least one client id or tag, tags named exactly."""
    if not isinstance(value, dict):
        f.fail(name, f"must be an object with clientIds and/or tags, got {kind_of(value)}")
        return None
    errors_before = len(f.errors)
    ids: set[str] = set()
    tags: set[str] = set()
    for key in value:
        if key not in ("clientIds", "tags"):
            f.fail(f"{name}.{str(key)[:64]}", "is not a known field (clientIds, tags)")
    raw_ids = value.get("clientIds")
    if raw_ids is not None:
        if not isinstance(raw_ids, list) or len(raw_ids) > MAX_MATCH_ITEMS:
            f.fail(f"{name}.clientIds", f"must be an array of at most {MAX_MATCH_ITEMS} client ids")
        else:
            for i, raw in enumerate(raw_ids):
                try:
                    ids.add(client_id_of(raw))
                except ValueError as exc:
                    f.fail(f"{name}.clientIds[{i}]", f"must be a client id: {exc}")
    raw_tags = value.get("tags")
    if raw_tags is not None:
        if not isinstance(raw_tags, list) or len(raw_tags) > MAX_MATCH_ITEMS:
            f.fail(f"{name}.tags", f"must be an array of at most {MAX_MATCH_ITEMS} tags")
        else:
            for i, tag in enumerate(raw_tags):
                if not isinstance(tag, str) or not TAG_RE.fullmatch(tag):
                    f.fail(f"{name}.tags[{i}]", "must be a tag: 1 to 64 printable characters")
                elif _WILDCARDS.search(tag):
                    f.fail(f"{name}.tags[{i}]", "tags match exactly: wildcards (* ? [ ]) are "
                           "not supported; name each tag")
                else:
                    tags.add(tag)
    if len(f.errors) == errors_before and not ids and not tags:
        f.fail(name, "must name at least one client id or tag")
    if len(f.errors) > errors_before:
        return None
    return Match(frozenset(ids), frozenset(tags))


def _time(f: Fields, name: str) -> float | None:
    raw = f.get(name)
    if raw is None:
        return None
    if not isinstance(raw, str):
        f.fail(name, f"must be an ISO 8601 time such as 2026-01-01T02:00:00Z, got {kind_of(raw)}")
        return None
    try:
        return parse_iso(raw)
    except (ValueError, OverflowError):
        f.fail(name, "must be an ISO 8601 time such as 2026-01-01T02:00:00Z")
        return None


def parse_silence(data: Any, *, now: float, silence_id: str, principal: str) -> Silence:
    """A silence from a request body ``{match, startsAt?, endsAt, comment, createdBy?}``.

    ``startsAt`` defaults to now; ``endsAt`` must be after it and in the future, at most
    :data:`MAX_SILENCE_SECONDS` later; a comment says why (whoever is paged while it runs will
    want to know); ``createdBy`` defaults to the token's subject."""
    if not isinstance(data, dict):
        raise ValidationFailed([{"field": "(body)", "message": f"must be a JSON object, got {kind_of(data)}"}])
    errors: list[dict[str, str]] = []
    f = Fields(data, "", errors)
    raw_match = f.get("match")
    match = None
    if raw_match is None:
        f.fail("match", "is required: {clientIds: [...]} and/or {tags: [...]}")
    else:
        match = parse_match(raw_match, f)
    starts = _time(f, "startsAt")
    ends = _time(f, "endsAt")
    if ends is None and not any(e["field"] == "endsAt" for e in errors):
        f.fail("endsAt", "is required")  # (absent or null; null means absent)
    comment = f.string("comment", max_chars=MAX_COMMENT_CHARS)
    if (comment is None or not comment.strip()) and not any(
            e["field"] == "comment" for e in errors):
        f.fail("comment", "is required: say why these clients are silenced")
    created_by = f.string("createdBy", max_chars=128)
    for k in data:
        if k not in f.seen:
            f.fail(str(k)[:64], "is not a known field (match, startsAt, endsAt, comment, createdBy)")
    start = starts if starts is not None else now
    if ends is not None:
        if ends <= start:
            f.fail("endsAt", "must be after startsAt" if starts is not None else "must be in the future")
        elif ends <= now:
            f.fail("endsAt", "must be in the future")
        elif ends - start > MAX_SILENCE_SECONDS:
            f.fail("endsAt", f"must be at most {MAX_SILENCE_SECONDS / 86400:.0f} days after startsAt")
    if errors:
        raise ValidationFailed(errors)
    assert match is not None and ends is not None and comment is not None
    return Silence(silence_id, match, start, ends, comment.strip(), created_by or principal, now)


def parse_weekdays(values: Sequence[str]) -> frozenset[int]:
    """``["mon", "sat"]`` → {0, 5}; raises ValueError naming a bad day."""
    days = set()
    for v in values:
        key = v.strip().lower()[:3]
        if key not in WEEKDAYS:
            raise ValueError(f"{v!r} is not a day of the week (mon, tue, ..., sun)")
        days.add(WEEKDAYS.index(key))
    return frozenset(days)


def parse_clock(text: str) -> int:
    """``"02:30"`` → 150 minutes after midnight; raises ValueError."""
    m = re.fullmatch(r"([01]?\d|2[0-3]):([0-5]\d)", text.strip())
    if not m:
        raise ValueError(f"{text!r} is not a time of day HH:MM")
    return int(m.group(1)) * 60 + int(m.group(2))
