"""The agent's log endpoint: ``GET /logs/INSTANCE?follow=1&tail=N`` streams a container's output.

Only the API server may read it, and only for one request at a time: the request must carry
``Authorization: CP-Ticket <ticket>``, a ticket the API server signed (controlplane/logticket.py)
for this machine, this instance and these parameters, unexpired and not seen before. Anything
else is refused with a Status object: no header or another scheme (a bearer token of any role
included) 401, a ticket that does not fit 403. The public keys come from the heartbeat replies
(``signing_keys()``), so before the first heartbeat every ticket is refused. The agent never
sees a user's token and never calls the API on a caller's behalf. The same app serves
``POST /exec/INSTANCE`` (agent/execserver.py), under the same rules with exec tickets.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from aiohttp import web

from agent.execserver import add_exec_route
from agent.runtime.base import Runtime, RuntimeFailure
from controlplane.errors import CPError, NotFound, Unauthorized
from controlplane.logticket import TICKET_SCHEME, LogParams, TicketVerifier, parse_log_params

log = logging.getLogger(__name__)


def _status(err: CPError) -> web.Response:
    return web.json_response(err.to_status(), status=err.code)


def check_request(request: web.Request, verifier: TicketVerifier, keys: Iterable[object], *,
                  now: float) -> LogParams:
    """The request's parameters if its ticket authorizes it; Unauthorized or TicketRefused otherwise."""
    name = request.match_info["instance"]
    scheme, _, ticket = request.headers.get("Authorization", "").partition(" ")
    if scheme != TICKET_SCHEME or not ticket.strip():
        raise Unauthorized(f"this endpoint takes only a log ticket from the API server ({TICKET_SCHEME} ...)")
    params = parse_log_params(request.query)
    verifier.check(ticket.strip(), keys, instance=name, params=params, now=now)
    return params


def make_log_app(runtime: Runtime, *, machine: str, containers: Callable[[], dict[str, str]],
                 signing_keys: Callable[[], Iterable[object]],
                 clock: Callable[[], float] = time.time) -> web.Application:
    """``containers()`` maps instance name -> container id for this machine's containers;
    ``signing_keys()`` is the ``logSigningKeys`` of the last heartbeat reply."""
    verifier = TicketVerifier(machine)

    async def logs(request: web.Request) -> web.StreamResponse:
        name = request.match_info["instance"]
        try:
            params = check_request(request, verifier, signing_keys(), now=clock())
        except CPError as err:
            log.info("log request for %s refused: %s", name, err.message)
            return _status(err)
        container_id = containers().get(name)
        if container_id is None:
            return _status(NotFound(f'instance "{name}" has no container on machine {machine}'))
        response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
        await response.prepare(request)
        try:
            async for chunk in runtime.logs(container_id, tail=params.tail, follow=params.follow):
                await response.write(chunk)
        except (RuntimeFailure, ConnectionResetError) as err:
            log.info("log stream of %s ended: %s", name, err)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/logs/{instance}", logs)
    add_exec_route(app, runtime, machine=machine, verifier=verifier, containers=containers,
                   signing_keys=signing_keys, clock=clock)
    return app
