"""The reads of ``/api/v1/secrets``: who sees a Secret's values.

Writes (create, replace, patch, delete: admins only) go through the generic handlers
(controlplane.api.objects). Reads are here because what they return depends on the reader:

- an admin gets the values;
- a node gets one Secret by name, and only one that the secretEnv of an instance bound to its
  machine names (checked against the stored instances, not anything the node says); it may not
  list or watch;
- a viewer lists, gets and watches Secrets with every value replaced by ``<redacted>``; the keys
  stay visible.

These routes are added before the generic ``/api/v1/{resource}`` ones, so they win for secrets.
"""

from __future__ import annotations

import re

from aiohttp import web

from controlplane.api.auth import User, authorize
from controlplane.api.http import json_response
from controlplane.api.objects import list_or_watch, wants_watch
from controlplane.api.state import REGISTRY, user_of
from controlplane.errors import Forbidden
from controlplane.registry import Registry
from controlplane.secretref import redacted, secrets_used_on

RESOURCE = "secrets"


def sees_values(user: User) -> bool:
    """Admins, and nodes (whose reads ``authorize`` has limited to the Secrets they run)."""
    return user.role in ("admin", "node")


def _node_secrets(user: User, registry: Registry) -> frozenset[str]:
    if user.role != "node":
        return frozenset()
    return secrets_used_on(user.machine, registry.objects("instances"))


def _refuse_value_selectors(text: str | None) -> None:
    """A field selector on ``data.KEY=guess`` would let a reader who sees no values test guesses:
    for them only ``metadata.*`` paths are allowed."""
    for term in (text or "").split(","):
        if not term.strip():
            continue
        path = re.split(r"!?=", term, maxsplit=1)[0].strip()
        if not path.startswith("metadata."):
            raise Forbidden(f"field selector {path!r} on secrets: only metadata.* fields may be selected "
                            "by a reader who cannot see the values")


async def list_secrets(request: web.Request) -> web.StreamResponse:
    user = user_of(request)
    watch = wants_watch(request)
    authorize(user, "watch" if watch else "list", RESOURCE)
    present = None if sees_values(user) else redacted
    if present is not None:
        _refuse_value_selectors(request.query.get("fieldSelector"))
    return await list_or_watch(request, RESOURCE, "Secret", watch=watch, present=present)


async def get_secret(request: web.Request) -> web.Response:
    user = user_of(request)
    name = request.match_info["name"]
    registry = request.app[REGISTRY]
    authorize(user, "get", RESOURCE, name=name, node_secrets=_node_secrets(user, registry))
    secret = registry.get(RESOURCE, name)
    return json_response(secret if sees_values(user) else redacted(secret))


def add_routes(app: web.Application) -> None:
    app.router.add_get(f"/api/v1/{RESOURCE}", list_secrets)
    app.router.add_get(f"/api/v1/{RESOURCE}/{{name}}", get_secret)
