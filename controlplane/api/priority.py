"""Heartbeats first: the API server's ordinary requests share a bounded number of seats.

When 2,000 agents start their instances at once, each writes a few statuses and some re-list;
thousands of those requests in the event loop at the same time put a heartbeat behind all of
them, it misses the agent's timeout, and the agent fences: a false failure made by the control
plane's own load (seen at 1,000 hollow machines in bench_scale). Kubernetes' API Priority and
Fairness answers the same problem by giving node leases a priority level of their own. Here the
rule is simpler: a heartbeat never waits for a seat; nor do the long-lived streams (watches,
followed logs, exec, the wheel downloads of /dist/), which would hold a seat for their whole
life. Everything else takes one of ``seats`` (``cp-apiserver --max-requests-inflight``) and
waits its turn, first come first served, when all are taken: a burst of status writes is served
at the same rate, a seat count at a time, while a heartbeat goes to the front. Nothing is
refused: a waiting request costs a parked task and its connection. A heartbeat still shares the
event loop with everything in a seat (and the leader's controllers): this bounds the queue in
front of it, not the loop's own work.

A request whose client has gone while it waited (its connection closed: an agent's request timed
out and it will retry) is not run when its seat comes: under overload, work nobody waits for any
more would otherwise take the seats from the retries that replace it, and an overloaded server
would serve only abandoned requests (Kubernetes' fair queuing drops such requests from its queues
too). A handler that has started always runs to its end: it may be half-way through a write.

``exempt`` is the pure decision (table-tested); ``seats_middleware`` applies it; the gauges
``cp_apiserver_requests_inflight`` / ``cp_apiserver_requests_waiting`` show the seats in use and the queue,
``cp_apiserver_requests_abandoned_total`` the requests not run.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

DEFAULT_SEATS = 64
CLIENT_CLOSED_REQUEST = 499  # nginx's code for it; written to a closed connection, so nobody reads it
STREAM_QUERY = {"watch", "follow"}
_HEARTBEAT = re.compile(r"^/api/v1/machines/[^/]+/heartbeat$")
_STREAMS = re.compile(r"^/api/v1/instances/[^/]+/(log|exec)$")
_PLUMBING = {"/metrics", "/healthz", "/readyz", "/version", "/openapi.json"}
TRUE = ("1", "true", "yes")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def exempt(method: str, path: str, query: Mapping[str, str]) -> bool:
    """Whether a request goes past the seats: a heartbeat, a stream, or the server's own plumbing."""
    if method == "POST" and _HEARTBEAT.match(path):
        return True
    if _STREAMS.match(path):
        return True
    if method == "GET" and any(query.get(key, "").lower() in TRUE for key in STREAM_QUERY):
        return True
    # downloads of the agent's wheels (api/dist.py) may be slow on a slow link: never hold a seat
    return method == "GET" and (path in _PLUMBING or path == "/dist" or path.startswith("/dist/"))


class Seats:
    """A bounded number of requests in the handlers at once; the rest wait in arrival order."""

    def __init__(self, count: int = DEFAULT_SEATS) -> None:
        if count < 1:
            raise ValueError(f"seats must be at least 1, got {count}")
        self.count = count
        self._free = asyncio.Semaphore(count)
        self.waiting = 0
        self.in_use = 0
        self.on_abandoned: Callable[[], None] = lambda: None

    async def run(self, handler: Handler, request: web.Request) -> web.StreamResponse:
        self.waiting += 1
        try:
            await self._free.acquire()
        finally:
            self.waiting -= 1
        if request.transport is None or request.transport.is_closing():  # the client gave up waiting
            self._free.release()
            self.on_abandoned()
            return web.Response(status=CLIENT_CLOSED_REQUEST)
        self.in_use += 1
        try:
            return await handler(request)
        finally:
            self.in_use -= 1
            self._free.release()


SEATS = web.AppKey("request_seats", Seats)


@web.middleware
async def seats_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    seats = request.app.get(SEATS)
    if seats is None or exempt(request.method, request.path, request.query):
        return await handler(request)
    return await seats.run(handler, request)
