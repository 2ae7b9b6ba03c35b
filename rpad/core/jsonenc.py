"""JSON out: the one compact encoder rpad uses for responses, pushes, views and alerts, and the
WebSocket envelope around data that is already serialized.

The encoder is built once (``json.dumps`` with options builds a new one per call). It writes
UTF-8 text as it is (``ensure_ascii=False``) and refuses NaN and infinities, which JSON cannot
carry: :func:`dumps` raises ValueError for them and TypeError for values that are not JSON data.
"""

from __future__ import annotations

import json
from typing import Any

_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
# What the encoder makes of a str, ASCII-escaped (envelope fields are short and mostly ASCII).
_json_str = json.encoder.encode_basestring_ascii


def dumps(value: Any) -> str:
    """``value`` as compact JSON text. Raises ValueError (NaN, infinity) or TypeError."""
    return _ENCODER.encode(value)


def dumps_bytes(value: Any) -> bytes:
    """:func:`dumps`, encoded as UTF-8 (for HTTP bodies)."""
    return _ENCODER.encode(value).encode()


def quote(text: str) -> str:
    """A string as a JSON string literal (ASCII-escaped)."""
    result: str = _json_str(text)
    return result


def envelope(type_: str, topic: str | None, seq: int | None, ts: str | None, data_json: str) -> str:
    """The one server → client message shape, ``{"type","topic","seq","ts","data"}``, around data
    that is already serialized (so a payload is serialized once however often it is wrapped).

    The result is always valid UTF-8 text: JSON input may carry lone surrogates (``"\\ud800"``
    parses to a Python string that UTF-8 cannot encode), and one such string must not break
    the socket writes of every subscriber; they are sent escaped instead."""
    text = (f'{{"type":{_json_str(type_)},'
            f'"topic":{"null" if topic is None else _json_str(topic)},'
            f'"seq":{"null" if seq is None else int.__repr__(seq)},'
            f'"ts":{"null" if ts is None else _json_str(ts)},"data":{data_json}}}')
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = json.dumps(json.loads(text), separators=(",", ":"), ensure_ascii=True)
    return text
