"""The client's address and the page's origin behind a trusted reverse proxy.

When the direct peer is one of ``http.trusted_proxies``, ``X-Forwarded-For`` names the real
client: rpad walks it from the right (the entries its own proxies appended) and takes the first
address that is not itself a trusted proxy. ``X-Forwarded-Host`` / ``X-Forwarded-Proto`` say
which origin the browser used. From any other peer these headers are ignored, so nobody can
choose the address the rate limiter and the logs see by sending a header.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Collection

Getter = Callable[[str], "str | None"]


def _valid_ip(text: str) -> str | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # "[::1]:1234"
        text = text[1:text.index("]")]
    elif text.count(":") == 1:  # "1.2.3.4:1234"
        text = text.split(":", 1)[0]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def client_address(peer: str, header: Getter, trusted: Collection[str]) -> str:
    """The address to attribute a request to (``header(name)`` reads a lower-case header)."""
    if not trusted or peer not in trusted:
        return peer
    forwarded = header("x-forwarded-for")
    if not forwarded:
        return peer
    hops = [h for h in (_valid_ip(p) for p in forwarded.split(",")) if h is not None]
    for hop in reversed(hops):
        if hop not in trusted:
            return hop
    return hops[0] if hops else peer


def forwarded_origin(peer: str, header: Getter, trusted: Collection[str],
                     host: str, secure: bool) -> tuple[str, bool]:
    """(host, secure) as the browser saw them: the proxy's forwarded values when the peer is a
    trusted proxy, else the request's own."""
    if not trusted or peer not in trusted:
        return host, secure
    fwd_host = (header("x-forwarded-host") or "").split(",")[0].strip()
    fwd_proto = (header("x-forwarded-proto") or "").split(",")[0].strip().lower()
    return (fwd_host or host), (fwd_proto in ("https", "wss") if fwd_proto else secure)
