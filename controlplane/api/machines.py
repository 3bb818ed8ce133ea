"""Machine presence (heartbeats on etcd leases), registration, and a deleted machine's tombstone.

A heartbeat keeps the machine's lease alive; the lease carries the key ``presence/<machine>``,
so when heartbeats stop for ``--machine-ttl`` etcd deletes the key by itself and the leader's
machine controller sees the DELETE at once (no polling of timestamps). The Machine object's
status is rewritten only when something in it changes (state, address, capacity, version) or
every ``HEARTBEAT_STAMP_SECONDS``, so 1,000 machines heartbeating do not mean 1,000 etcd
writes a second and watch events to every watcher (Kubernetes moved node heartbeats to Leases
for the same reason).

A heartbeat is a node writing about itself: its address must be an IP literal (schemas.py), it may
not send labels under ``controlplane.io/`` (api/node_policy.py), and its labels apply only when it
first registers, never after an admin deleted the Machine (``delete_machine``'s tombstone). The
reply carries the public log signing keys, which the agent's log endpoint checks tickets with
(api/logproxy.py). The log proxy itself lives in api/logproxy.py.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any

from aiohttp import web

from controlplane.api.auth import User, authorize
from controlplane.api.execproxy import instance_exec
from controlplane.api.http import json_response, read_json
from controlplane.api.logproxy import LOG_SIGNING, LogSigningKeys, instance_log
from controlplane.api.node_policy import check_node_labels
from controlplane.api.state import CONFIG, REGISTRY, STORE, user_of
from controlplane.api.tokens import revoke_machine_tokens
from controlplane.errors import (
    AlreadyExists,
    BadRequest,
    Cause,
    Conflict,
    Invalid,
    NotFound,
    ServiceUnavailable,
)
from controlplane.model import machine_tombstone_key, now_rfc3339, presence_key
from controlplane.schemas import load_object, load_status

HEARTBEAT_STAMP_SECONDS = 30.0


def _parse_heartbeat(user: User, name: str, body: Any) -> dict[str, Any]:
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
    check_node_labels(user, "Machine", name, labels)
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


async def _register(request: web.Request, name: str, status: dict[str, Any],
                    labels: dict[str, str]) -> dict[str, Any]:
    """Create the Machine of a first heartbeat; without the node's labels if an admin deleted it before."""
    registry = request.app[REGISTRY]
    if await request.app[STORE].get(machine_tombstone_key(name)) is not None:
        labels = {}
    status["lastHeartbeatTime"] = now_rfc3339()
    obj = load_object("Machine", {"metadata": {"name": name, "labels": labels}})
    obj["status"] = status
    try:
        return await registry.create("machines", obj)
    except AlreadyExists:
        return registry.get("machines", name)


async def heartbeat(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    user = user_of(request)
    authorize(user, "update", "machines", name=name, subresource="heartbeat")
    beat = _parse_heartbeat(user, name, await read_json(request))
    ttl = int(request.app[CONFIG].get("machine_ttl", 5))
    registry = request.app[REGISTRY]
    lease = await keep_presence(request, name, ttl)
    now = time.time()
    status = beat["status"]
    current = registry.find("machines", name)
    if current is None:
        current = await _register(request, name, status, beat["labels"])
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
    keys = await request.app[LOG_SIGNING].public_keys()
    return json_response({"machine": current, "leaseTTL": ttl, "lease": lease, "logSigningKeys": keys})


async def delete_machine(request: web.Request, name: str) -> dict[str, Any]:
    """An admin's DELETE of a Machine. It revokes every stored token bound to the machine (the token
    file's stay: edit the file), and leaves a tombstone, so a node that heartbeats again gets its
    Machine back without the labels it sends (those apply only at first registration). A machine
    that dies stays listed, NotReady, until an admin deletes it (as in Kubernetes)."""
    store = request.app[STORE]
    key = machine_tombstone_key(name)
    existed = await store.get(key) is not None
    # before the delete, so no heartbeat can slip in between and re-create the machine with labels
    await store.put(key, json.dumps({"deletedAt": now_rfc3339(), "by": user_of(request).name}).encode())
    await revoke_machine_tokens(request.app[REGISTRY], name)  # also when the machine never registered
    try:
        return await request.app[REGISTRY].delete("machines", name)
    except NotFound:
        if not existed:
            await store.delete(key)
        raise


def add_routes(app: web.Application) -> None:
    app[LOG_SIGNING] = LogSigningKeys(app[STORE])
    app.router.add_post("/api/v1/machines/{name}/heartbeat", heartbeat)
    app.router.add_get("/api/v1/instances/{name}/log", instance_log)
    app.router.add_post("/api/v1/instances/{name}/exec", instance_exec)
