"""The agent's log endpoint: ``GET /logs/INSTANCE?follow=1&tail=N`` streams a container's output.

The API server proxies ``GET /api/v1/instances/NAME/log`` here with the caller's own bearer
token; the agent asks the API whether that token may read the instance (a TokenReview in
Kubernetes terms), so no secret is shared between server and agents and a stolen agent port
gives nothing without a valid token.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web

from agent.runtime.base import Runtime, RuntimeFailure
from controlplane.client import Client
from controlplane.errors import CPError, Forbidden, NotFound, Unauthorized

log = logging.getLogger(__name__)


def _status(err: CPError) -> web.Response:
    return web.json_response(err.to_status(), status=err.code)


def make_log_app(runtime: Runtime, *, server: str, ca: str | None, cluster: str, machine: str,
                 containers: Callable[[], dict[str, str]]) -> web.Application:
    """``containers()`` maps instance name -> container id for this machine's containers."""

    async def logs(request: web.Request) -> web.StreamResponse:
        name = request.match_info["instance"]
        header = request.headers.get("Authorization", "")
        token = header[len("Bearer "):].strip() if header.startswith("Bearer ") else None
        try:
            async with Client(server, token=token, ca=ca, timeout=5) as client:
                await client.get("instances", name)  # the API decides whether this caller may read it
        except (Unauthorized, Forbidden, NotFound) as err:
            return _status(err)
        except CPError as err:
            return _status(err)
        container_id = containers().get(name)
        if container_id is None:
            return _status(NotFound(f'instance "{name}" has no container on machine {machine}'))
        try:
            tail = int(request.query["tail"]) if request.query.get("tail") else None
        except ValueError:
            tail = None
        follow = request.query.get("follow", "") in ("1", "true")
        response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
        await response.prepare(request)
        try:
            async for chunk in runtime.logs(container_id, tail=tail, follow=follow):
                await response.write(chunk)
        except (RuntimeFailure, ConnectionResetError) as err:
            log.info("log stream of %s ended: %s", name, err)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/logs/{instance}", logs)
    return app
