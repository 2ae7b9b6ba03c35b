"""A client as a Redis hash, and back.

Fields (all strings; a missing field is None): ``id``, ``reg_at``, ``name``, ``tags`` (JSON),
``meta`` (JSON), ``tmo`` (registered timeout), ``regd`` (1: registered by an admin), ``st``
(status), ``rst`` (reported status), ``ver``, ``ip``, ``os``, ``ivl`` (declared interval),
``last`` (last heartbeat), ``on``/``off`` (online/offline since), ``skew``, ``mx`` (latest
metrics, JSON), ``v`` (the hash's version: grows with every change).

Error handling: a hash that does not decode (written by something else) raises ValueError.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from ...core.jsonenc import dumps
from ...core.model import Client

Flat = Sequence[Any]  # [field, value, field, value, ...] as Redis returns them (bytes or str)


def _text(x: Any) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def fields(flat: Flat) -> dict[str, str]:
    return {_text(flat[i]): _text(flat[i + 1]) for i in range(0, len(flat) - 1, 2)}


def _num(f: dict[str, str], name: str) -> float | None:
    value = f.get(name)
    return float(value) if value not in (None, "") else None


def decode(flat: Flat) -> tuple[Client, int]:
    """(the client, the hash's version)."""
    f = fields(flat)
    if "id" not in f:
        raise ValueError(f"not a client hash: {sorted(f)}")
    reg_at = _num(f, "reg_at")
    client = Client(client_id=f["id"], registered_at=reg_at if reg_at is not None else 0.0)
    client.name = f.get("name")
    client.tags = json.loads(f["tags"]) if "tags" in f else []
    client.metadata = json.loads(f["meta"]) if "meta" in f else {}
    client.timeout_seconds = _num(f, "tmo")
    client.registered = f.get("regd") == "1"
    client.status = f.get("st", "unknown")
    client.reported_status = f.get("rst")
    client.version = f.get("ver")
    client.ip_address = f.get("ip")
    client.os_type = f.get("os")
    client.interval_seconds = _num(f, "ivl")
    client.last_heartbeat_at = _num(f, "last")
    client.online_since = _num(f, "on")
    client.offline_since = _num(f, "off")
    client.clock_skew_seconds = _num(f, "skew")
    client.latest_metrics = json.loads(f["mx"]) if "mx" in f else None
    return client, int(f.get("v", "0"))


def pairs(reply: Any) -> Iterable[tuple[str, Any]]:
    """A map's answer (HGETALL, XINFO, ...): a dict under RESP3, a flat list under RESP2 →
    (field as text, value)."""
    if isinstance(reply, dict):
        return ((_text(k), v) for k, v in reply.items())
    flat = list(reply or [])
    return ((_text(flat[i]), flat[i + 1]) for i in range(0, len(flat) - 1, 2))


def opt(value: Any) -> str:
    """An optional script argument: '' for None, else '=' and the value (numbers as Python
    writes them, dicts and lists as JSON)."""
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return "=" + dumps(value)
    if isinstance(value, float | int):
        return "=" + repr(value)
    return "=" + str(value)
