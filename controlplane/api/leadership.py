"""cleanup_ctx that runs the leader's controllers beside the API for as long as the app runs.

The process shell starts the controllers and the arrow points one way: this module reads the
app's state (registry, store, metrics, config) and hands ``Controllers`` what it needs; the
controllers never import the API or aiohttp.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import web

from controlplane.api.state import CONFIG, METRICS, REGISTRY, SERVICES, STORE
from controlplane.controllers.leader import candidate_id
from controlplane.controllers.manager import DEFAULT_LEADER_TTL, Controllers
from controlplane.tasks import guarded


async def leadership_context(app: web.Application) -> AsyncIterator[None]:
    """Campaign for leadership in the background; stop campaigning (and leading) on cleanup."""
    config = app[CONFIG]
    identity = candidate_id(str(config.get("listen", "")))
    ttl = int(config.get("leader_ttl") or config.get("machine_ttl") or DEFAULT_LEADER_TTL)
    controllers = Controllers(app[REGISTRY], app[STORE], app[METRICS].controllers, identity=identity, ttl=ttl)
    app[SERVICES]["controllers"] = controllers
    task = guarded(controllers.campaign(), "leader-election")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
