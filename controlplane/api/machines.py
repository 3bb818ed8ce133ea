"""Machine presence (heartbeats on etcd leases) and the log proxy to a machine's agent.

A heartbeat keeps the machine's lease alive; the lease carries the key ``presence/<machine>``,
so when heartbeats stop for ``--machine-ttl`` etcd deletes the key by itself and the leader's
machine controller sees the DELETE at once (no polling of timestamps). The Machine object's
status is rewritten only when something in it changes (state, address, capacity, version) or
every ``HEARTBEAT_STAMP_SECONDS``, so 1,000 machines heartbeating do not mean 1,000 etcd
writes a second and watch events to every watcher (Kubernetes moved node heartbeats to Leases
for the same reason).
"""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any

import aiohttp
from aiohttp import web

from controlplane.api.auth import authorize
from controlplane.api.http import json_response, read_json
from controlplane.api.state import CONFIG, REGISTRY, STORE, user_of
from controlplane.errors import (
    AlreadyExists,
    BadRequest,
    Cause,
    Conflict,
    Invalid,
    NotFound,
    ServiceUnavailable,
)
from controlplane.model import now_rfc3339, presence_key
from controlplane.schemas import load_object, load_status

HEARTBEAT_STAMP_SECONDS = 30.0


def _parse_heartbeat(name: str, body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest("a heartbeat body must be a JSON object")
    allowed = {"address", "capacity", "agentVersion", "agentPort", "labels"}
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise Invalid(
            f"heartbeat for {name!r} is invalid: unknown fields {unknown}",
            kind="Machine", name=name, causes=[Cause(f, "Unknown field.", "FieldValueNotSupported") for f in unknown],
        )
    status_fields = {k: body[k] for k in ("address", "capacity", "agentVersion", "agentPort") if k in body}
    status = load_status("Machine", name, {**status_fields, "state": "Ready"})
    labels = body.get("labels", {})  # a wrong type is refused below, not taken as "no labels"
    load_object("Machine", {"metadata": {"name": name, "labels": labels}})  # validates name and labels
    return {"status": status, "labels": labels}


def _stamp_due(previous: str, now: float) -> bool:
    if not previous:
        return True
    try:
        then = dt.datetime.strptime(previous, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC).timestamp()
    except ValueError:
        return True
    return now - then >= HEARTBEAT_STAMP_SECONDS


async def keep_presence(request: web.Request, name: str, ttl: int) -> int:
    """Refresh the machine's presence lease, or grant a new one and attach the presence key."""
    store = request.app[STORE]
    kv = await store.get(presence_key(name))
    if kv is not None and kv.lease:
        try:
            if await store.refresh_lease(kv.lease) > 0:
                return kv.lease
        except NotFound:
            pass
    lease = await store.grant_lease(ttl)
    value = json.dumps({"machine": name, "since": time.time()}).encode()
    try:
        await store.create(presence_key(name), value, lease=lease)
    except AlreadyExists:
        # another API server attached one between our get and create: use theirs
        await store.revoke_lease(lease)
        kv = await store.get(presence_key(name))
        if kv is None:
            raise ServiceUnavailable("machine presence changed concurrently; retry the heartbeat") from None
        return kv.lease
    return lease


async def heartbeat(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    authorize(user_of(request), "update", "machines", name=name, subresource="heartbeat")
    beat = _parse_heartbeat(name, await read_json(request))
    ttl = int(request.app[CONFIG].get("machine_ttl", 5))
    registry = request.app[REGISTRY]
    lease = await keep_presence(request, name, ttl)
    now = time.time()
    status = beat["status"]
    current = registry.find("machines", name)
    if current is None:
        status["lastHeartbeatTime"] = now_rfc3339()
        obj = load_object("Machine", {"metadata": {"name": name, "labels": beat["labels"]}})
        obj["status"] = status
        try:
            current = await registry.create("machines", obj)
        except AlreadyExists:
            current = registry.get("machines", name)
    old = current.get("status") or {}
    observed = {k: old.get(k) for k in ("state", "address", "capacity", "agentVersion", "agentPort")}
    wanted = {k: status.get(k) for k in observed}
    if observed != wanted or _stamp_due(old.get("lastHeartbeatTime", ""), now):

        def refresh(obj: dict[str, Any]) -> dict[str, Any]:
            obj["status"] = {**(obj.get("status") or {}), **wanted, "lastHeartbeatTime": now_rfc3339()}
            return obj

        try:
            current = await registry.mutate("machines", name, refresh)
        except Conflict:
            pass  # the next heartbeat writes it
    return json_response({"machine": current, "leaseTTL": ttl, "lease": lease})


async def instance_log(request: web.Request) -> web.StreamResponse:
    """Proxy ``GET /api/v1/instances/NAME/log`` to the agent of the instance's machine.

    The caller's own bearer token is forwarded; the agent checks it against this API (it must
    allow reading the instance), so no extra secret is shared between server and agents."""
    name = request.match_info["name"]
    authorize(user_of(request), "get", "instances", name=name, subresource="log")
    registry = request.app[REGISTRY]
    instance = registry.get("instances", name)
    machine_name = instance["spec"].get("machine")
    if not machine_name:
        raise BadRequest(f'instance "{name}" is not bound to a machine yet')
    machine = registry.get("machines", machine_name)
    status = machine.get("status") or {}
    if not status.get("address") or not status.get("agentPort"):
        raise ServiceUnavailable(f'machine "{machine_name}" has not reported an agent address')
    url = f"http://{status['address']}:{status['agentPort']}/logs/{name}"
    params = {k: v for k, v in request.query.items() if k in ("follow", "tail")}
    headers = {}
    if "Authorization" in request.headers:
        headers["Authorization"] = request.headers["Authorization"]
    timeout = aiohttp.ClientTimeout(total=None, connect=3, sock_read=None)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.get(url, params=params, headers=headers) as upstream:
                if upstream.status != 200:
                    body = await upstream.read()
                    return web.Response(body=body, status=upstream.status, content_type="application/json")
                response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
                return response
    except aiohttp.ClientError as err:
        raise ServiceUnavailable(f'the agent of machine "{machine_name}" is unreachable: {err}') from err


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/v1/machines/{name}/heartbeat", heartbeat)
    app.router.add_get("/api/v1/instances/{name}/log", instance_log)
