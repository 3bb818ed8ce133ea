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

A heartbeat is cheap when nothing changed (2,000 machines beat 2,000 times a second): the lease
is kept alive without reading the presence key (api/presence.py), and a body equal to the
machine's previous one (same user) is not validated again (``ParsedBeats``).
"""

from __future__ import annotations

import json
import time
from typing import Any

from aiohttp import web

from controlplane import jsoncodec
from controlplane.api.auth import User, authorize
from controlplane.api.execproxy import instance_exec
from controlplane.api.http import json_response, parse_json, read_body
from controlplane.api.logproxy import LOG_SIGNING, LogSigningKeys, instance_log
from controlplane.api.node_policy import check_node_labels
from controlplane.api.presence import PresenceLeases, keep_presence
from controlplane.api.state import CONFIG, REGISTRY, STORE, user_of
from controlplane.api.tokens import revoke_machine_tokens
from controlplane.errors import (
    AlreadyExists,
    BadRequest,
    Cause,
    Conflict,
    Invalid,
    NotFound,
)
from controlplane.model import machine_tombstone_key, now_rfc3339
from controlplane.schemas import load_object, load_status
from controlplane.tokens import parse_time

HEARTBEAT_STAMP_SECONDS = 30.0
PRESENCE_LEASES = web.AppKey("presence_leases", PresenceLeases)


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


class ParsedBeats:
    """The last valid heartbeat body of each machine, parsed: the same body text from the same user
    parses to the same result, so it is neither decoded nor validated again (an agent sends the
    same bytes every beat while nothing changes). Pure; one entry per machine. Each answer is a
    fresh copy (decoded from the stored bytes), which its caller may change."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[User, str, bytes]] = {}

    def parse(self, user: User, name: str, text: str) -> dict[str, Any]:
        last = self._last.get(name)
        if last is not None and last[0] == user and last[1] == text:
            parsed: dict[str, Any] = jsoncodec.loads(last[2])
            return parsed
        parsed = _parse_heartbeat(user, name, parse_json(text))
        self._last[name] = (user, text, jsoncodec.dumps(parsed))
        return parsed


PARSED_BEATS = web.AppKey("parsed_heartbeats", ParsedBeats)


def _stamp_due(previous: str, now: float) -> bool:
    then = parse_time(previous)
    return then is None or now - then >= HEARTBEAT_STAMP_SECONDS


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
    beat = request.app[PARSED_BEATS].parse(user, name, await read_body(request))
    ttl = int(request.app[CONFIG].get("machine_ttl", 5))
    registry = request.app[REGISTRY]
    lease = await keep_presence(request.app[STORE], request.app[PRESENCE_LEASES], name, ttl)
    now = time.time()
    status = beat["status"]
    current = registry.peek("machines", name)  # read only: answered as it is, or replaced below
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
    app[PRESENCE_LEASES] = PresenceLeases()
    app[PARSED_BEATS] = ParsedBeats()
    app.router.add_post("/api/v1/machines/{name}/heartbeat", heartbeat)
    app.router.add_get("/api/v1/instances/{name}/log", instance_log)
    app.router.add_post("/api/v1/instances/{name}/exec", instance_exec)
