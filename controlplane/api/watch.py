"""Watch streams: newline-delimited JSON events served from the watch cache.

``?watch=1&resourceVersion=RV`` replays the cache's events after RV, then follows live ones;
without RV (or with RV 0) the current objects come first as ADDED. BOOKMARK events carry the
current revision so an idle client can resume cheaply; a revision older than the cache's
window is 410 Gone before the stream starts, or an ERROR event with code 410 after.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp import web

from controlplane import jsoncodec
from controlplane.api.state import BOOKMARK_SECONDS as BOOKMARK_KEY
from controlplane.api.state import METRICS, REGISTRY
from controlplane.errors import BadRequest, Gone
from controlplane.model import API_VERSION, RESOURCES
from controlplane.selectors import parse_field_selector, parse_label_selector, required_field_value
from controlplane.watchcache import INDEXED_FIELD, CacheEvent, Subscription, WatchCache

BOOKMARK_SECONDS = 5.0


def _line(event_type: str, obj: dict[str, Any]) -> bytes:
    return jsoncodec.dumps({"type": event_type, "object": obj}) + b"\n"


def _bookmark(kind: str, revision: int) -> bytes:
    return _line("BOOKMARK", {"kind": kind, "apiVersion": API_VERSION, "metadata": {"resourceVersion": str(revision)}})


def _watch_params(request: web.Request) -> tuple[int, float]:
    """``resourceVersion`` (0: start with the current objects) and ``timeoutSeconds`` (0: none)."""
    raw_rv = request.query.get("resourceVersion", "")
    try:
        from_rv = int(raw_rv) if raw_rv else 0
        timeout = float(request.query.get("timeoutSeconds") or 0)
    except ValueError as err:
        raise BadRequest(f"invalid resourceVersion or timeoutSeconds: {err}") from err
    return from_rv, timeout


def _event_line(event: CacheEvent, present: Callable[[dict[str, Any]], dict[str, Any]] | None) -> bytes:
    return event.line() if present is None else _line(event.type, present(event.object))


async def serve_watch(request: web.Request, resource: str, *,
                      present: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> web.StreamResponse:
    """``present``, when given, is what the caller may see of each object (a Secret redacted): the
    events are then encoded per watcher instead of the shared bytes."""
    registry = request.app[REGISTRY]
    cache = registry.caches[resource]
    kind = RESOURCES[resource]
    by_label = parse_label_selector(request.query.get("labelSelector"))
    by_field = parse_field_selector(request.query.get("fieldSelector"))
    indexed = required_field_value(request.query.get("fieldSelector"), INDEXED_FIELD)

    def matches(obj: dict[str, Any]) -> bool:
        return by_label(obj) and by_field(obj)

    from_rv, timeout = _watch_params(request)
    bookmark_every = request.app.get(BOOKMARK_KEY, BOOKMARK_SECONDS)

    initial: list[bytes] = []
    if from_rv <= 0:
        sub, _ = cache.subscribe(None, matches, indexed=indexed)
        initial = [_line("ADDED", present(obj) if present else obj) for obj in cache.items() if matches(obj)]
    else:
        sub, replay = cache.subscribe(from_rv, matches, indexed=indexed)  # raises Gone before any byte is sent
        initial = [_event_line(event, present) for event in replay]

    metrics = request.app[METRICS]
    response = web.StreamResponse(headers={"Content-Type": "application/json; stream=watch"})
    metrics.watches.labels(resource).inc()
    try:
        await response.prepare(request)
        if initial:
            await response.write(b"".join(initial))
        await _follow(response, sub, cache, kind=kind, timeout=timeout, bookmark_every=bookmark_every,
                      present=present)
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        sub.close()
        metrics.watches.labels(resource).dec()
    return response


async def _follow(response: web.StreamResponse, sub: Subscription, cache: WatchCache, *, kind: str,
                  timeout: float, bookmark_every: float,
                  present: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
    """Live events (up to 256 a write) and a BOOKMARK when idle, until the timeout or the cache ends us."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout if timeout > 0 else None
    while True:
        wait = bookmark_every
        if deadline is not None:
            wait = min(wait, deadline - loop.time())
            if wait <= 0:
                break
        try:
            event = await asyncio.wait_for(sub.queue.get(), timeout=wait)
        except TimeoutError:
            await response.write(_bookmark(kind, cache.revision))
            continue
        if event is None:
            gone = Gone(f"watch closed: {sub.closed_reason or 'server shutting down'}; re-list and watch again")
            await response.write(_line("ERROR", gone.to_status()))
            break
        chunk = [_event_line(event, present)]
        while not sub.queue.empty() and len(chunk) < 256:
            more = sub.queue.get_nowait()
            if more is None:
                sub.queue.put_nowait(None)
                break
            chunk.append(_event_line(more, present))
        await response.write(b"".join(chunk))
