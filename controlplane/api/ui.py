"""``/ui/``: the live web view, as static files served without a token.

The page (controlplane/api/ui/: one HTML file, one JS module, one stylesheet; no build step, no CDN)
asks for a token, keeps it in sessionStorage and reads everything through the REST API and its
watches with that token as a bearer header. So the files themselves hold nothing secret and are
public, like /dist/; every datum still needs a token that may read it.

Only the files named in ``UI_FILES`` are served, from memory (read once, at start), each with a
strict Content-Security-Policy (no inline script or style, nothing from another origin, no
framing) and ``X-Content-Type-Options: nosniff``. ``/ui`` redirects to ``/ui/``. None of this is in
the OpenAPI document: it is not part of the REST API.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from controlplane.errors import NotFound

UI_DIR = Path(__file__).with_name("ui")
UI_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}


def is_ui_path(path: str) -> bool:
    return path == "/ui" or path.startswith("/ui/")


def read_ui_files(folder: Path = UI_DIR) -> dict[str, bytes]:
    """Every served file's bytes; a missing one is a broken install, so it fails the start."""
    return {name: (folder / name).read_bytes() for name in UI_FILES}


UI_CONTENT = web.AppKey("ui_content", dict)


def _file_response(request: web.Request, name: str) -> web.Response:
    body = request.app[UI_CONTENT].get(name)
    if body is None:
        raise NotFound(f"/ui/ has no file {name[:80]!r}")
    return web.Response(body=body, headers={"Content-Type": UI_FILES[name], **SECURITY_HEADERS})


async def index_handler(request: web.Request) -> web.Response:
    return _file_response(request, "index.html")


async def file_handler(request: web.Request) -> web.Response:
    return _file_response(request, request.match_info["file"])


async def redirect_handler(request: web.Request) -> web.Response:
    return web.Response(status=308, headers={"Location": "/ui/", **SECURITY_HEADERS})


def add_routes(app: web.Application) -> None:
    app[UI_CONTENT] = read_ui_files()
    app.router.add_get("/ui", redirect_handler)
    app.router.add_get("/ui/", index_handler)
    app.router.add_get("/ui/{file}", file_handler)
