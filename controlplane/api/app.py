"""make_app: the aiohttp application of cp-apiserver, its middlewares and its lifecycle.

The middlewares turn every failure into a Status object (never a traceback or an HTML
page), authenticate bearer tokens, and record request metrics by route. Resources (the
store, the registry and its watch caches, the controllers) are opened in ``cleanup_ctx``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from controlplane import __version__
from controlplane.api import dist, objects, ui
from controlplane.api.auth import ANONYMOUS_ADMIN, TokenTable, authorize
from controlplane.api.http import MAX_BODY, error_response, json_response, too_large
from controlplane.api.metrics import ApiMetrics
from controlplane.api.priority import DEFAULT_SEATS, SEATS, Seats, seats_middleware
from controlplane.api.state import CONFIG, METRICS, REGISTRY, SERVICES, STORE, TOKENS, USER_KEY, user_of
from controlplane.errors import (
    CPError,
    Forbidden,
    InternalError,
    MethodNotAllowed,
    NotFound,
    ServiceUnavailable,
    from_status,
)
from controlplane.model import RESOURCES
from controlplane.registry import Registry
from controlplane.store.base import Store

log = logging.getLogger(__name__)
# no token needed; /readyz tells an anonymous caller only "ok" or "not ready", and /metrics is
# public only with config["metrics_anonymous"] (cp-apiserver --metrics-anonymous); /dist/... too
# (api/dist.py: the wheelhouse a joining machine installs from) and /ui/... (api/ui.py: the web view's
# static files; its data comes from the API with the user's token)
PUBLIC_PATHS = {"/healthz", "/readyz", "/openapi.json", "/version"}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _route_label(request: web.Request) -> str:
    info = request.match_info
    route = getattr(info, "route", None)
    resource = getattr(route, "resource", None)
    if resource is None or getattr(info, "http_exception", None) is not None:
        return "unmatched"
    label = resource.canonical
    if "{resource}" in label and info.get("resource") in RESOURCES:  # bounded: no label per typo
        label = label.replace("{resource}", info["resource"])
    return label


@web.middleware
async def status_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error becomes a Status; every request is counted and timed by route."""
    metrics = request.app[METRICS]
    started = time.perf_counter()
    code = 500
    try:
        response = await handler(request)
        code = response.status
        return response
    except CPError as err:
        code = err.code
        return error_response(err)
    except web.HTTPMethodNotAllowed as err:
        code = 405
        allowed = ", ".join(sorted(err.allowed_methods))
        response = error_response(MethodNotAllowed(f"method {request.method} is not allowed on {request.path}; "
                                                   f"allowed: {allowed}"))
        response.headers["Allow"] = allowed  # RFC 9110: a 405 names the allowed methods
        return response
    except web.HTTPNotFound:
        code = 404
        return error_response(NotFound(f"the server could not find the requested resource {request.path!r}"))
    except web.HTTPRequestEntityTooLarge:
        code = 413
        return error_response(too_large())
    except web.HTTPException as err:
        code = err.status
        return error_response(from_status({"code": err.status, "message": err.reason or "error"}))
    except (ConnectionError, TimeoutError, OSError) as err:
        code = 503
        log.warning("store unavailable during %s %s: %s", request.method, request.path, err)
        return error_response(ServiceUnavailable(f"the store is unavailable: {err.__class__.__name__}"))
    except Exception:
        log.exception("internal error on %s %s", request.method, request.path)
        code = 500
        return error_response(InternalError("internal error; see the server log"))
    finally:
        metrics.observe_request(_route_label(request), request.method, code, time.perf_counter() - started,
                                watch=_is_watch(request))


def _is_watch(request: web.Request) -> bool:
    """A ``GET ?watch=1`` (as api/objects.py reads it): a stream, kept out of the latency histogram."""
    return request.method == "GET" and request.query.get("watch", "").lower() in ("1", "true", "yes")


def _is_public(request: web.Request) -> bool:
    return request.path in PUBLIC_PATHS or dist.is_dist_path(request.path) or ui.is_ui_path(request.path) or (
        request.path == "/metrics" and bool(request.app[CONFIG].get("metrics_anonymous")))


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    tokens = request.app.get(TOKENS)
    if tokens is None:
        request[USER_KEY] = ANONYMOUS_ADMIN
    elif not _is_public(request):
        request[USER_KEY] = tokens.authenticate(request.headers.get("Authorization"), method=request.method,
                                                path=request.path)
    elif "Authorization" in request.headers:  # optional on a public path: a bad token is still 401
        request[USER_KEY] = tokens.authenticate(request.headers["Authorization"], method=request.method,
                                                path=request.path)
    return await handler(request)


def may_read(request: web.Request, what: str) -> bool:
    """Whether the caller's token (if any) may read ``what`` (admin and viewer; not node)."""
    user = request.get(USER_KEY)
    if user is None:
        return False
    try:
        authorize(user, "get", what)
    except Forbidden:
        return False
    return True


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def readyz(request: web.Request) -> web.Response:
    """Say "ok", or 503; only a caller whose token may read gets the reason (it names etcd)."""
    try:
        await request.app[STORE].revision()
    except Exception as err:
        if may_read(request, "readyz"):
            raise ServiceUnavailable(f"not ready: the store is unreachable: {err}") from err
        raise ServiceUnavailable("not ready") from err
    return web.Response(text="ok")


async def metrics_handler(request: web.Request) -> web.Response:
    if not _is_public(request):
        authorize(user_of(request), "get", "metrics")
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def version_handler(request: web.Request) -> web.Response:
    return json_response({"version": __version__})


async def openapi_handler(request: web.Request) -> web.Response:
    from controlplane.api.openapi import openapi_document

    return json_response(openapi_document())


def make_app(
    store: Store,
    *,
    tokens: TokenTable | None,
    config: dict[str, Any] | None = None,
    extra_contexts: Sequence[Callable[[web.Application], AsyncIterator[None]]] = (),
) -> web.Application:
    """The API application over ``store``. ``tokens`` None means --insecure-no-auth;
    ``config["metrics_anonymous"]`` serves /metrics without a token; ``config["wheelhouse"]`` is the
    folder /dist/ serves (api/dist.py)."""
    app = web.Application(middlewares=[status_middleware, seats_middleware, auth_middleware],
                          client_max_size=MAX_BODY)
    app[STORE] = store
    app[METRICS] = ApiMetrics()
    app[CONFIG] = dict(config or {})
    app[SEATS] = Seats(int(app[CONFIG].get("max_requests_inflight") or DEFAULT_SEATS))
    app[METRICS].watch_seats(app[SEATS])
    app[SERVICES] = {}
    if tokens is not None:
        app[TOKENS] = tokens
    registry = Registry(store)
    etcd_seconds = app[METRICS].etcd_seconds
    registry.on_store_call = lambda op, seconds: etcd_seconds.labels(op).observe(seconds)
    app[REGISTRY] = registry

    async def registry_ctx(app: web.Application) -> AsyncIterator[None]:
        await registry.start()
        yield
        await registry.stop()

    app.cleanup_ctx.append(registry_ctx)
    for ctx in extra_contexts:
        app.cleanup_ctx.append(ctx)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/version", version_handler)
    app.router.add_get("/openapi.json", openapi_handler)
    dist.add_routes(app, app[CONFIG].get("wheelhouse"))
    ui.add_routes(app)
    from controlplane.api import machines, secrets

    machines.add_routes(app)
    secrets.add_routes(app)  # before the generic routes: Secret reads depend on the reader
    from controlplane.api import tokens as token_routes

    token_routes.add_routes(app)  # before them too: every method on /api/v1/tokens is its own
    from controlplane.api import revisions

    revisions.add_routes(app)  # the unit history hook, and GET /api/v1/units/NAME/revisions
    objects.add_routes(app)
    return app
