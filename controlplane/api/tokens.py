"""``/api/v1/tokens``: bearer tokens as API objects (TOKEN_API.md), and their use by the auth path.

Admins create, list, read and revoke (DELETE) tokens; every other role gets 403 (api/auth.py). A
token is stored as its Token object plus the SHA-256 of its secret (``secretHash``); the value
``<name>.<secret>`` is in the create (and exchange) response only, and no read, list or watch ever
shows the hash. ``StoredTokenTable`` is what api/auth.py's TokenTable asks about values that are not
in the token file: it looks the id up in this server's tokens watch cache, so a token created or
revoked on any API server works or stops working here as soon as the watch delivers it (well
within a second). It records ``status.lastUsed`` at most once a minute per token (a background
compare-and-swap write; never one per request) and never for join tokens.

A join token (``spec.join``, role node) is good for one call: ``POST /api/v1/tokens/exchange``,
which creates a long-lived node token for the same machine, then deletes the join token with a
compare-and-swap on its revision, so of two exchanges racing on two servers one wins and the other
is 401 (and its new token is removed). Deleting a Machine revokes its tokens
(``revoke_machine_tokens``, called by api/machines.py).

These routes are added before the generic ``/api/v1/{resource}`` ones and take every method on
their paths (405 for the others), so no generic handler ever reads or writes a Token.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web

from controlplane.api.auth import User, authorize
from controlplane.api.http import json_response, read_json
from controlplane.api.state import REGISTRY, TOKENS, user_of
from controlplane.errors import (
    AlreadyExists,
    BadRequest,
    Cause,
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    Unauthorized,
)
from controlplane.model import API_VERSION, RESOURCES, rfc3339
from controlplane.registry import Registry
from controlplane.schemas import load_object
from controlplane.tokens import (
    EXCHANGE_PATH,
    HASH_FIELD,
    LAST_USED_EVERY_SECONDS,
    NOT_A_JOIN_TOKEN,
    TOKENS_RESOURCE,
    hash_matches,
    last_used_due,
    new_secret,
    new_token_name,
    public_view,
    secret_hash,
    split_value,
)
from controlplane.tokens import expired as token_expired

log = logging.getLogger(__name__)
RESOURCE = TOKENS_RESOURCE
KIND = RESOURCES[RESOURCE]
RESERVED_NAMES = frozenset({"exchange"})  # a path of its own


class StoredTokenTable:
    """api/auth.py's ``StoredTokens`` over the registry's tokens watch cache."""

    def __init__(self, registry: Registry, *, clock: Callable[[], float] = time.time) -> None:
        self.registry = registry
        self.clock = clock
        self._recorded: dict[str, float] = {}  # name -> when this server last wrote its lastUsed
        self._tasks: set[asyncio.Task[None]] = set()

    def user_of(self, value: str) -> User | None:
        parts = split_value(value)
        if parts is None:
            return None
        name, secret = parts
        obj = self.registry.caches[RESOURCE].get(name)
        if obj is None or not hash_matches(str(obj.get(HASH_FIELD) or ""), secret):
            return None
        now = self.clock()
        if token_expired(obj.get("status") or {}, now):
            raise Unauthorized("bearer token expired")
        spec = obj.get("spec") or {}
        join = bool(spec.get("join"))
        if not join:
            self._note_use(name, obj, now)
        return User(name=name, role=str(spec.get("role")), machine=str(spec.get("machine") or ""), token=name,
                    join=join)

    def _note_use(self, name: str, obj: dict[str, Any], now: float) -> None:
        if not last_used_due(str((obj.get("status") or {}).get("lastUsed") or ""), now):
            return
        if now - self._recorded.get(name, float("-inf")) < LAST_USED_EVERY_SECONDS:
            return  # this server's write is on its way (or its watch event is)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if len(self._recorded) > 4096:
            self._recorded = {k: t for k, t in self._recorded.items() if now - t < LAST_USED_EVERY_SECONDS}
        self._recorded[name] = now
        task = loop.create_task(self._write_last_used(name, str(obj["metadata"]["resourceVersion"]), now))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write_last_used(self, name: str, revision: str, now: float) -> None:
        def stamp(obj: dict[str, Any]) -> dict[str, Any]:
            obj.setdefault("status", {})["lastUsed"] = rfc3339(now)
            return obj

        try:
            await self.registry.mutate(RESOURCE, name, stamp, expected_rv=revision)
        except (Conflict, NotFound):
            pass  # revoked, or changed (by another server's stamp, say) since: that one will do
        except Exception as err:  # the store is down: the next use after a minute tries again
            log.warning("could not record lastUsed of token %s: %s", name, err)

    async def close(self, app: web.Application | None = None) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


STORED = web.AppKey("stored_tokens", StoredTokenTable)


def _invalid(name: str, field: str, message: str) -> Invalid:
    return Invalid(f'Token "{name}" is invalid: {field}: {message}', kind=KIND, name=name,
                   causes=[Cause(field, message, "FieldValueInvalid")])


def token_from_body(body: Any) -> tuple[dict[str, Any], bool]:
    """The validated Token of a create request and whether its name was generated (``tok-<hex>``)."""
    if not isinstance(body, dict):
        raise BadRequest("the body must be a Token object")
    for key, wanted in (("apiVersion", API_VERSION), ("kind", KIND)):
        if body.get(key) not in (None, wanted):
            raise BadRequest(f"{key} {body.get(key)!r} is not served here; use {wanted}")
    meta = body.get("metadata", {})
    if not isinstance(meta, dict):
        raise _invalid("", "metadata", "must be an object")
    generated = "name" not in meta
    obj = load_object(KIND, {**body, "metadata": {**meta, "name": new_token_name()} if generated else meta})
    name = obj["metadata"]["name"]
    if name in RESERVED_NAMES:
        raise _invalid(name, "metadata.name", f"{name!r} is reserved ({EXCHANGE_PATH})")
    return obj, generated


async def store_new_token(registry: Registry, obj: dict[str, Any], *, generated: bool,
                          clock: Callable[[], float] = time.time) -> tuple[dict[str, Any], str]:
    """Create the Token ``obj`` with a fresh secret; (the stored object as served, the value)."""
    secret = new_secret()
    now = clock()
    ttl = int(obj["spec"].get("ttlSeconds") or 0)
    obj["status"] = {"expiresAt": rfc3339(now + ttl) if ttl else "", "createdAt": rfc3339(now), "lastUsed": ""}
    obj[HASH_FIELD] = secret_hash(secret)
    for attempt in range(3):
        try:
            created = await registry.create(RESOURCE, obj)
            break
        except AlreadyExists:
            if not generated or attempt == 2:
                raise
            obj["metadata"]["name"] = new_token_name()
    return public_view(created), f"{created['metadata']['name']}.{secret}"


def _created(obj: dict[str, Any], value: str) -> web.Response:
    return json_response({**obj, "value": value}, status=201)


async def create_token(request: web.Request) -> web.Response:
    authorize(user_of(request), "create", RESOURCE)
    obj, generated = token_from_body(await read_json(request))
    return _created(*await store_new_token(request.app[REGISTRY], obj, generated=generated))


async def list_tokens(request: web.Request) -> web.StreamResponse:
    from controlplane.api.objects import list_or_watch, wants_watch  # objects -> machines -> tokens

    watch = wants_watch(request)
    authorize(user_of(request), "watch" if watch else "list", RESOURCE)
    if HASH_FIELD in (request.query.get("fieldSelector") or ""):
        raise BadRequest(f"{HASH_FIELD} cannot be selected on")
    return await list_or_watch(request, RESOURCE, KIND, watch=watch, present=public_view)


async def get_token(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    authorize(user_of(request), "get", RESOURCE, name=name)
    return json_response(public_view(request.app[REGISTRY].get(RESOURCE, name)))


async def revoke_token(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    authorize(user_of(request), "delete", RESOURCE, name=name)
    return json_response(public_view(await request.app[REGISTRY].delete(RESOURCE, name)))


async def exchange(request: web.Request) -> web.Response:
    """A join token for a node token of the same machine, once."""
    user = user_of(request)
    if not user.join:
        raise Forbidden(f'the token of user "{user.name}" ({user.role}) is {NOT_A_JOIN_TOKEN}; '
                        f"POST {EXCHANGE_PATH} takes a join token, once")
    registry = request.app[REGISTRY]
    join = registry.find(RESOURCE, user.token)
    if join is None:
        raise Unauthorized("the join token was already exchanged")
    spec = {"role": "node", "machine": user.machine, "description": f"from join token {user.token}"}
    node = load_object(KIND, {"metadata": {"name": new_token_name()}, "spec": spec})
    created, value = await store_new_token(registry, node, generated=True)
    try:
        await registry.delete(RESOURCE, user.token, expected_rv=join["metadata"]["resourceVersion"])
    except Exception as err:
        try:
            await registry.delete(RESOURCE, created["metadata"]["name"])
        except Exception:
            log.warning("could not remove token %s of a failed exchange", created["metadata"]["name"])
        if isinstance(err, Conflict | NotFound):
            raise Unauthorized("the join token was already exchanged") from err
        raise
    return _created(created, value)


async def revoke_machine_tokens(registry: Registry, machine: str) -> list[str]:
    """Delete every stored token bound to ``machine``; the names deleted."""
    names = sorted(str(obj["metadata"]["name"]) for obj in registry.objects(RESOURCE)
                   if (obj.get("spec") or {}).get("machine") == machine)
    revoked = []
    for name in names:
        try:
            await registry.delete(RESOURCE, name)
        except NotFound:
            continue
        revoked.append(name)
    return revoked


def _method_not_allowed(allowed: Sequence[str]) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def refuse(request: web.Request) -> web.StreamResponse:
        raise web.HTTPMethodNotAllowed(request.method, list(allowed))

    return refuse


def add_routes(app: web.Application) -> None:
    stored = StoredTokenTable(app[REGISTRY])
    app[STORED] = stored
    table = app.get(TOKENS)
    if table is not None:
        table.stored = stored
    app.on_shutdown.append(stored.close)
    base = f"/api/v1/{RESOURCE}"
    router = app.router
    router.add_post(EXCHANGE_PATH, exchange)
    router.add_route("*", EXCHANGE_PATH, _method_not_allowed(["POST"]))
    router.add_get(base, list_tokens)
    router.add_post(base, create_token)
    router.add_route("*", base, _method_not_allowed(["GET", "HEAD", "POST"]))
    router.add_get(base + "/{name}", get_token)
    router.add_delete(base + "/{name}", revoke_token)
    router.add_route("*", base + "/{name}", _method_not_allowed(["GET", "HEAD", "DELETE"]))
