"""The dashboard (SPEC §8): ``GET /``, its static files, and where the page finds the hub.

The page is plain HTML, CSS and JavaScript shipped inside the package (``rpad/static``): no
build step, no CDN, works offline. Routes:

- ``GET /``: ``index.html``;
- ``GET /static/<name>``: the other files of ``rpad/static``, by exact name only;
- ``GET /api/v1/dashboard-config``: ``{"wsUrl", "version"}`` — where the page opens its
  WebSocket: ``websocket.public_url`` when set (behind a reverse proxy), else the hub's port
  on the host name the browser used for this page (``ws://<host>:<hub port>/ws``).

None of these need a token (the page asks for one and sends it to the hub itself).

Resource handling: the files are read once when the routes are registered and served from
memory with an ETag; ``If-None-Match`` answers 304.

Error handling: a name that is not one of the shipped files — including any attempt at
``..``, an encoded slash or an absolute path — gets the JSON 404 of every other unknown path;
the file system is never consulted with a name from a request.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Callable
from importlib import resources
from urllib.parse import urlsplit

import attrs
from quart import Quart, Response, request

from .. import __version__
from ..config import Config
from ..core.proxy import forwarded_origin
from .errors import ApiError, json_response
from .openapi import Answer, Param, operation

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".json": "application/json",
}
# The page talks to its own origin and to the hub (another port, or the proxy's public URL).
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    # The token may be in the page's URL (?token=) until the script moves it to sessionStorage.
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}
INDEX = "index.html"


@attrs.frozen
class StaticFile:
    body: bytes
    content_type: str
    etag: str


def load_static() -> dict[str, StaticFile]:
    """Every file shipped in ``rpad/static`` (one level, known types), by name."""
    files: dict[str, StaticFile] = {}
    root = resources.files("rpad") / "static"
    for entry in root.iterdir():
        suffix = "." + entry.name.rpartition(".")[2] if "." in entry.name else ""
        if not entry.is_file() or suffix not in CONTENT_TYPES or entry.name.startswith("."):
            continue
        body = entry.read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
        files[entry.name] = StaticFile(body, CONTENT_TYPES[suffix], etag)
    return files


def _browser_host(host_header: str) -> str:
    """The host name part of a Host header, bracketed if it is an IPv6 address."""
    host = host_header.strip()
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    if host.count(":") == 1:
        host = host.partition(":")[0]
    elif host.count(":") > 1:  # a bare IPv6 address (no port)
        return f"[{host}]"
    return host


def hub_url(cfg: Config, ws_url: str | None, host_header: str, secure: bool) -> str | None:
    """The WebSocket URL a browser that loaded this page from ``host_header`` should use."""
    if cfg.websocket.public_url:
        return cfg.websocket.public_url
    if not ws_url:
        return None
    parts = urlsplit(ws_url)
    host = _browser_host(host_header) if host_header else ""
    if not host:
        host = parts.hostname or "127.0.0.1"
        try:
            if ipaddress.ip_address(host).version == 6:
                host = f"[{host}]"
        except ValueError:
            pass
    scheme = "wss" if secure or parts.scheme == "wss" else "ws"
    port = f":{parts.port}" if parts.port else ""
    return f"{scheme}://{host}{port}{parts.path or '/ws'}"


def add_routes(app: Quart, config: Callable[[], Config], ws_url: Callable[[], str | None]) -> None:
    """Add the dashboard's routes to the app. ``config`` and ``ws_url`` are read per request
    (the hub binds after the app is made; a reload may change ``websocket.public_url``)."""
    files = load_static()

    def serve(name: str) -> Response:
        f = files.get(name)
        if f is None:
            raise ApiError(404, "not_found", "no such file")
        if request.headers.get("If-None-Match") == f.etag:
            resp = Response(b"", status=304)
        else:
            resp = Response(f.body, status=200, content_type=f.content_type)
        resp.headers["ETag"] = f.etag
        resp.headers["Cache-Control"] = "no-cache"
        resp.headers.update(SECURITY_HEADERS)
        return resp

    @app.get("/")
    @operation("The dashboard", tag="service", roles=None,
               description="The page asks for a token (any role from viewer up) and talks "
                           "to the WebSocket hub.",
               answer=(Answer(200, "the page", {"type": "string"}, "text/html; charset=utf-8",
                              {"ETag": "the page's version"}),
                       Answer(304, "unchanged since If-None-Match")))
    async def dashboard_index() -> Response:
        return serve(INDEX)

    @app.get("/static/<path:name>", merge_slashes=False)
    @operation("The dashboard's files", tag="service", roles=None,
               description="Only the files shipped in the package, by exact name "
                           f"({', '.join(sorted(files))}).",
               path=(Param("name", "a file's name", {"enum": sorted(files)}, "path", True),),
               answer=(Answer(200, "the file", {"type": "string"}, "*/*",
                              {"ETag": "the file's version"}),
                       Answer(304, "unchanged since If-None-Match")))
    async def dashboard_static(name: str) -> Response:
        return serve(name)

    @app.get("/api/v1/dashboard-config")
    @operation("Where the dashboard finds the hub", tag="service", roles=None,
               answer=Answer(200, "the hub's URL for this page", "DashboardConfig"))
    async def dashboard_config() -> Response:
        cfg = config()
        host, secure = forwarded_origin(
            request.remote_addr or "", request.headers.get, cfg.http.trusted_proxies,
            request.headers.get("Host", ""), request.scheme in ("https", "wss"))
        if cfg.websocket.public_url or (request.remote_addr or "") not in cfg.http.trusted_proxies:
            url = hub_url(cfg, ws_url(), host, secure)
        else:  # through a trusted reverse proxy: the hub is at /ws on the page's own origin
            url = f"{'wss' if secure else 'ws'}://{host}/ws"
        return json_response({"wsUrl": url, "version": __version__},
                             headers={"Cache-Control": "no-store"})
