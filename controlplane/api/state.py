"""The application's typed state keys (aiohttp ``web.AppKey``), shared by every handler module."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from controlplane.api.auth import TokenTable, User
from controlplane.api.metrics import ApiMetrics
from controlplane.errors import Unauthorized
from controlplane.registry import Registry
from controlplane.store.base import Store

REGISTRY = web.AppKey("registry", Registry)
STORE = web.AppKey("store", Store)  # type: ignore[type-abstract]
METRICS = web.AppKey("metrics", ApiMetrics)
TOKENS = web.AppKey("tokens", TokenTable)
CONFIG = web.AppKey("config", dict)
SERVICES = web.AppKey("services", dict)  # long-lived helpers by name, e.g. "controllers" (api/leadership.py)
BOOKMARK_SECONDS = web.AppKey("bookmark_seconds", float)  # watch BOOKMARK period; tests shorten it
USER_KEY = web.RequestKey("cp_user", User)


def user_of(request: web.Request) -> User:
    """The authenticated user; the auth middleware always sets one (anonymous admin only with
    --insecure-no-auth), so a missing user means a route escaped the middleware: refuse it."""
    user: Any = request.get(USER_KEY)
    if not isinstance(user, User):
        raise Unauthorized("not authenticated")
    return user
