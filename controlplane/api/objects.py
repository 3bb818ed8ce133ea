"""Generic handlers for every resource: list, get, create, replace, merge-patch, delete, status, scale.

Handlers stay thin: parse (controlplane.api.http), validate (controlplane.schemas), authorize
(controlplane.api.auth), then one Registry call.
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Callable
from typing import Any

from aiohttp import web
from marshmallow import ValidationError

from controlplane.admission import admit, policy_of
from controlplane.api.auth import authorize
from controlplane.api.dryrun import dry_run_of
from controlplane.api.http import PATCH_TYPES, bytes_response, json_response, merge_patch, read_json
from controlplane.api.machines import delete_machine
from controlplane.api.node_policy import (
    NodeEventLimiter,
    RecentBindings,
    check_node_event,
    check_node_instance_address,
)
from controlplane.api.revisions import forget as forget_revisions
from controlplane.api.state import CONFIG, REGISTRY, user_of
from controlplane.api.watch import serve_watch
from controlplane.errors import BadRequest, Cause, Conflict, Invalid, NotFound
from controlplane.events import record_event
from controlplane.model import API_VERSION, HAS_STATUS, MAX_SAFE_INTEGER, RESOURCES
from controlplane.registry import not_found
from controlplane.schema_errors import invalid_from
from controlplane.schemas import ScaleSchema, load_object, load_status
from controlplane.timeline import mark

NODE_EVENT_LIMITER = web.AppKey("node_event_limiter", NodeEventLimiter)
RECENT_BINDINGS = web.AppKey("recent_bindings", RecentBindings)


def resource_of(request: web.Request) -> tuple[str, str]:
    resource = request.match_info["resource"]
    if resource not in RESOURCES:
        raise NotFound(f"the server could not find the requested resource {resource!r}")
    return resource, RESOURCES[resource]


# The query strings the list endpoint accepts, as ECMA/Python regexes the OpenAPI document also
# states: the server takes exactly what the spec says (a selector outside them is 400).
# Unambiguous on purpose (a run of spaces has one way to match), so no input backtracks for long.
_KEY, _VALUE = r"[A-Za-z0-9_./-]+", r"[A-Za-z0-9_.-]+"
_EQ = rf"{_KEY} *(==|!=|=)( *{_VALUE})?"
_SET = rf"{_KEY} +(in|notin) +\( *({_VALUE} *(, *{_VALUE} *)*)?\)"
_LABEL_TERM = rf" *({_SET}|{_EQ}|(! *)?{_KEY}) *"
_FIELD_TERM = rf" *{_EQ} *"
LABEL_SELECTOR_PATTERN = rf"^({_LABEL_TERM}(,{_LABEL_TERM})*| *)$"
FIELD_SELECTOR_PATTERN = rf"^({_FIELD_TERM}(,{_FIELD_TERM})*| *)$"
_SELECTORS = {"labelSelector": re.compile(LABEL_SELECTOR_PATTERN), "fieldSelector": re.compile(FIELD_SELECTOR_PATTERN)}
LIST_QUERY = ("labelSelector", "fieldSelector", "limit", "continue", "watch", "resourceVersion", "timeoutSeconds")
_DIGITS = re.compile(r"[0-9]{1,16}")


def _query(request: web.Request, name: str) -> str | None:
    """The one value of query parameter ``name`` (None when absent); given twice is a 400."""
    values = request.query.getall(name, [])
    if len(values) > 1:
        raise BadRequest(f"query parameter {name} is given {len(values)} times; give it once")
    return values[0] if values else None


def _int_param(request: web.Request, name: str) -> int:
    """A non-negative integer query parameter (0 when absent); an empty or non-decimal value is a 400."""
    raw = _query(request, name)
    if raw is None:
        return 0
    if not _DIGITS.fullmatch(raw) or int(raw) > MAX_SAFE_INTEGER:
        raise BadRequest(f"{name} must be an integer from 0 to {MAX_SAFE_INTEGER}, got {raw[:40]!r}")
    return int(raw)


def _selector_param(request: web.Request, name: str) -> str | None:
    raw = _query(request, name)
    if raw is not None and not _SELECTORS[name].fullmatch(raw):
        what, terms = (("label selector", "k=v, k!=v, 'k in (a,b)', k, !k") if name == "labelSelector"
                       else ("field selector", "dotted.path=v, dotted.path!=v"))
        raise BadRequest(f"invalid {what} {raw[:80]!r}: expected comma-separated terms such as {terms}")
    return raw


def _truthy(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes")


def wants_watch(request: web.Request) -> bool:
    return _truthy(_query(request, "watch"))


async def list_objects(request: web.Request) -> web.StreamResponse:
    resource, kind = resource_of(request)
    verb = "watch" if wants_watch(request) else "list"
    authorize(user_of(request), verb, resource)
    return await list_or_watch(request, resource, kind, watch=verb == "watch")


async def list_or_watch(request: web.Request, resource: str, kind: str, *, watch: bool,
                        present: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> web.StreamResponse:
    """The list (or watch) of ``resource`` after authorization, with the query checked as the spec
    says; ``present`` is what the caller may see of each object (a Secret redacted)."""
    for name in LIST_QUERY:
        _query(request, name)  # none of them twice
    label_selector, field_selector = _selector_param(request, "labelSelector"), _selector_param(request, "fieldSelector")
    if watch:
        return await serve_watch(request, resource, present=present)
    items, revision, token = request.app[REGISTRY].list(
        resource,
        label_selector=label_selector,
        field_selector=field_selector,
        limit=_int_param(request, "limit"),
        continue_token=_query(request, "continue") or None,
    )
    metadata: dict[str, Any] = {"resourceVersion": str(revision)}
    if token:
        metadata["continue"] = token
    if present is not None:
        items = [present(item) for item in items]
    return json_response({"kind": f"{kind}List", "apiVersion": API_VERSION, "metadata": metadata, "items": items})


def _check_body(kind: str, body: Any, *, name: str | None = None, require_metadata: bool = False) -> None:
    """What the schemas cannot say: the body is an object of this kind, and a PUT names its object."""
    if not isinstance(body, dict):
        raise BadRequest(f"the body must be a {kind} object")
    if body.get("apiVersion") not in (None, API_VERSION):
        raise BadRequest(f"apiVersion {body.get('apiVersion')!r} is not served; use v1")
    if body.get("kind") not in (None, kind):
        raise BadRequest(f"the body is a {body.get('kind')!r}, this endpoint takes {kind}")
    meta = body.get("metadata")
    if require_metadata and "metadata" not in body:
        raise Invalid(
            f"{kind} is invalid: metadata: Missing data for required field.", kind=kind, name=name,
            causes=[Cause("metadata", "Missing data for required field.", "FieldValueRequired")],
        )
    if "metadata" in body and not isinstance(meta, dict):
        raise Invalid(
            f"{kind} is invalid: metadata: must be an object", kind=kind, name=name,
            causes=[Cause("metadata", "must be an object")],
        )
    if name is not None and isinstance(meta, dict) and meta.get("name") not in (None, name):
        raise BadRequest(f"metadata.name {meta.get('name')!r} does not match the URL's name {name!r}")


@functools.cache
def _default_status(kind: str) -> dict[str, Any]:
    return load_status(kind, "", {})


def _initial_status(kind: str) -> dict[str, Any] | None:
    return copy.deepcopy(_default_status(kind)) if kind in HAS_STATUS else None


def _bound_machine(request: web.Request, instance: str) -> str | None:
    found = request.app[REGISTRY].find("instances", instance)
    return str((found.get("spec") or {}).get("machine") or "") if found else None


async def create_object(request: web.Request) -> web.Response:
    resource, kind = resource_of(request)
    user = user_of(request)
    authorize(user, "create", resource)
    dry_run = dry_run_of(request)
    if resource == "events":
        request.app[NODE_EVENT_LIMITER].admit(user)  # nodes only; counts refused attempts too
    body = await read_json(request)
    _check_body(kind, body)
    obj = admit(kind, load_object(kind, body), policy_of(request.app[CONFIG]))
    if resource == "events":
        check_node_event(user, obj, bound_machine=lambda instance: _bound_machine(request, instance),
                         was_bound=request.app[RECENT_BINDINGS].was_bound)
        if not dry_run:
            return json_response(await record_event(request.app[REGISTRY], obj), status=201)  # a repeat: counted
    status = _initial_status(kind)
    if status is not None:
        obj["status"] = status
    mark("api.create.received", resource, (obj.get("metadata") or {}).get("name", ""))
    created = await request.app[REGISTRY].create(resource, obj, dry_run=dry_run)
    mark("api.create.stored", resource, created["metadata"]["name"])
    return json_response(created, status=201)


async def get_object(request: web.Request) -> web.Response:
    resource, kind = resource_of(request)
    name = request.match_info["name"]
    authorize(user_of(request), "get", resource, name=name)
    data = request.app[REGISTRY].caches[resource].encoded(name)
    if data is None:
        raise not_found(resource, name)
    return bytes_response(data)


async def replace_object(request: web.Request) -> web.Response:
    resource, kind = resource_of(request)
    name = request.match_info["name"]
    authorize(user_of(request), "update", resource, name=name)
    body = await read_json(request)
    _check_body(kind, body, name=name, require_metadata=True)
    obj = admit(kind, load_object(kind, body), policy_of(request.app[CONFIG]))
    return json_response(await request.app[REGISTRY].replace(resource, name, obj, dry_run=dry_run_of(request)))


async def patch_object(request: web.Request) -> web.Response:
    resource, kind = resource_of(request)
    name = request.match_info["name"]
    authorize(user_of(request), "patch", resource, name=name)
    dry_run = dry_run_of(request)
    patch = await read_json(request, accept=PATCH_TYPES)
    if not isinstance(patch, dict):
        raise BadRequest("a merge patch must be a JSON object")
    registry = request.app[REGISTRY]
    # a resourceVersion in the patch is a precondition (409 when stale), as in Kubernetes
    wanted_rv = (patch.get("metadata") or {}).get("resourceVersion") if isinstance(patch.get("metadata"), dict) else None
    for attempt in range(5):
        current = registry.get(resource, name)
        merged = merge_patch(current, patch)
        _check_body(kind, merged, name=name)
        merged.setdefault("metadata", {})["name"] = name
        obj = admit(kind, load_object(kind, merged), policy_of(request.app[CONFIG]))
        try:
            return json_response(
                await registry.replace(
                    resource, name, obj, expected_rv=str(wanted_rv) if wanted_rv else current["metadata"]["resourceVersion"],
                    dry_run=dry_run,
                )
            )
        except Conflict:
            if wanted_rv or attempt == 4:
                raise
    raise AssertionError("unreachable")


async def delete_object(request: web.Request) -> web.Response:
    resource, kind = resource_of(request)
    name = request.match_info["name"]
    authorize(user_of(request), "delete", resource, name=name)
    if dry_run_of(request):
        return json_response(request.app[REGISTRY].get(resource, name))
    if resource == "machines":
        return json_response(await delete_machine(request, name))
    deleted = await request.app[REGISTRY].delete(resource, name)
    if resource == "units":
        await forget_revisions(request.app[REGISTRY], deleted)
    return json_response(deleted)


async def get_status(request: web.Request) -> web.Response:
    resource, kind = resource_of(request)
    name = request.match_info["name"]
    authorize(user_of(request), "get", resource, name=name, subresource="status")
    if kind not in HAS_STATUS:
        raise NotFound(f"{resource} have no status subresource")
    return json_response(request.app[REGISTRY].get(resource, name))


async def put_status(request: web.Request) -> web.Response:
    resource, kind = resource_of(request)
    name = request.match_info["name"]
    registry = request.app[REGISTRY]
    if kind not in HAS_STATUS:
        raise NotFound(f"{resource} have no status subresource")
    current = registry.get(resource, name)
    user = user_of(request)
    authorize(user, "update", resource, name=name, subresource="status", obj=current)
    body = await read_json(request)
    _check_body(kind, body, name=name, require_metadata=True)
    # the whole body is validated as the kind (only its status is written); without a spec the
    # stored one stands in, so a status writer need not send it
    status = load_object(kind, {"spec": current.get("spec"), **body} if "spec" in current else body)["status"]
    if kind == "Instance" and user.role == "node":
        machine = registry.find("machines", user.machine) or {}
        check_node_instance_address(user, name, status["address"], (machine.get("status") or {}).get("address", ""))
    expected = (body.get("metadata") or {}).get("resourceVersion") or None
    written = await registry.update_status(resource, name, status, expected_rv=expected)
    mark("api.status.stored", resource, name, status.get("phase", ""), status.get("ready", ""))
    return json_response(written)


def _scale_of(unit: dict[str, Any]) -> dict[str, Any]:
    meta = unit["metadata"]
    return {
        "apiVersion": API_VERSION,
        "kind": "Scale",
        "metadata": {"name": meta["name"], "resourceVersion": meta.get("resourceVersion", "")},
        "spec": {"replicas": unit["spec"].get("replicas", 0)},
        "status": {"replicas": (unit.get("status") or {}).get("replicas", 0)},
    }


async def get_scale(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    authorize(user_of(request), "get", "units", name=name, subresource="scale")
    return json_response(_scale_of(request.app[REGISTRY].get("units", name)))


async def put_scale(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    authorize(user_of(request), "update", "units", name=name, subresource="scale")
    body = await read_json(request)
    if not isinstance(body, dict):
        raise BadRequest("the body must be a Scale object")
    try:
        replicas = ScaleSchema().load(body)["spec"]["replicas"]
    except ValidationError as err:
        raise invalid_from("Scale", name, err) from err
    registry = request.app[REGISTRY]
    current = registry.get("units", name)
    unit = copy.deepcopy(current)
    unit["spec"]["replicas"] = replicas
    load_object("Unit", unit)  # validates the range with the same rules as any Unit write
    expected = (body.get("metadata") or {}).get("resourceVersion") or None

    def set_replicas(obj: dict[str, Any]) -> dict[str, Any]:
        obj["spec"]["replicas"] = replicas
        return obj

    updated = await registry.mutate("units", name, set_replicas, expected_rv=expected, dry_run=dry_run_of(request))
    return json_response(_scale_of(updated))


def add_routes(app: web.Application) -> None:
    app[NODE_EVENT_LIMITER] = NodeEventLimiter()
    bindings = app[RECENT_BINDINGS] = RecentBindings()
    app[REGISTRY].caches["instances"].listeners.append(lambda change: bindings.observe(change.object, change.previous))
    base = "/api/v1/{resource}"
    app.router.add_get("/api/v1/units/{name}/scale", get_scale)
    app.router.add_put("/api/v1/units/{name}/scale", put_scale)
    app.router.add_get(base, list_objects)
    app.router.add_post(base, create_object)
    app.router.add_get(base + "/{name}", get_object)
    app.router.add_put(base + "/{name}", replace_object)
    app.router.add_patch(base + "/{name}", patch_object)
    app.router.add_delete(base + "/{name}", delete_object)
    app.router.add_get(base + "/{name}/status", get_status)
    app.router.add_put(base + "/{name}/status", put_status)
