"""A unit's rollout history: the last few templates it ran, for ``cpctl rollout history|undo``.

A revision is a unit template (``model.template_of``: the spec without what does not roll, such as
replicas). The history of unit NAME is one internal etcd key (``model.unit_revisions_key``),
a JSON list of ``{revision, generation, template, timestamp, changeCause}``, oldest first. It is
written by the Registry's write hook for units, in the same etcd transaction as the unit update
that changes the template, so the unit and its history cannot disagree; a scale, a label change
or a status write leaves it alone (and costs no read).

No key is written at create: a unit with no history (or one whose key belongs to an earlier unit
of the same name: entries carry the unit's uid) has the one revision it runs. A unit's delete
removes its key afterwards (``forget``; only if it still holds that unit's entries alone, so a
unit created again meanwhile keeps its own). The history keeps
at most ``MAX_REVISIONS`` entries and ``MAX_HISTORY_BYTES`` (the oldest go first), so the
transaction stays within etcd's request size. ``GET /api/v1/units/NAME/revisions`` serves it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from controlplane.api.auth import authorize
from controlplane.api.http import json_response
from controlplane.api.state import REGISTRY, user_of
from controlplane.errors import Conflict, NotFound
from controlplane.model import API_VERSION, MAX_OBJECT_BYTES, now_rfc3339, template_of, unit_revisions_key
from controlplane.registry import Registry, WriteHook

MAX_REVISIONS = 10
MAX_HISTORY_BYTES = 3 * MAX_OBJECT_BYTES  # with the unit itself, under etcd's 1.5 MiB request limit
CHANGE_CAUSE = "controlplane.io/change-cause"  # an annotation whose value history shows per revision

Revision = dict[str, Any]


def entry_of(unit: Mapping[str, Any], revision: int, *, timestamp: str) -> Revision:
    meta = unit.get("metadata") or {}
    return {
        "revision": revision,
        "generation": int(meta.get("generation", 1)),
        "uid": str(meta.get("uid", "")),
        "template": template_of(unit.get("spec") or {}),
        "timestamp": timestamp,
        "changeCause": str((meta.get("annotations") or {}).get(CHANGE_CAUSE, "")),
    }


def history_of(unit: Mapping[str, Any], stored: list[Revision]) -> list[Revision]:
    """Pure: the unit's revisions, from what is stored (entries of another uid are dropped). When
    the newest stored one is not the unit's running template (no history yet), it is appended."""
    uid = str((unit.get("metadata") or {}).get("uid", ""))
    mine = [entry for entry in stored if entry.get("uid") == uid]
    if mine and mine[-1].get("template") == template_of(unit.get("spec") or {}):
        return mine
    number = mine[-1]["revision"] + 1 if mine else 1
    timestamp = str((unit.get("metadata") or {}).get("creationTimestamp", "")) if not mine else ""
    return [*mine, entry_of(unit, number, timestamp=timestamp)]


def next_history(current: Mapping[str, Any], new: Mapping[str, Any], stored: list[Revision], *,
                 timestamp: str) -> list[Revision] | None:
    """Pure: the history after ``current`` becomes ``new``, or None when the template is unchanged."""
    if template_of(current.get("spec") or {}) == template_of(new.get("spec") or {}):
        return None
    before = history_of(current, stored)
    return bounded([*before, entry_of(new, before[-1]["revision"] + 1, timestamp=timestamp)])


def bounded(history: list[Revision]) -> list[Revision]:
    """The newest entries within MAX_REVISIONS and MAX_HISTORY_BYTES (at least the newest one)."""
    kept = history[-MAX_REVISIONS:]
    while len(kept) > 1 and len(encode_history(kept)) > MAX_HISTORY_BYTES:
        kept = kept[1:]
    return kept


def encode_history(history: list[Revision]) -> bytes:
    return json.dumps(history, separators=(",", ":"), sort_keys=True).encode()


async def stored_history(registry: Registry, unit: str) -> list[Revision]:
    kv = await registry.store.get(unit_revisions_key(unit))
    if kv is None:
        return []
    try:
        loaded = json.loads(kv.value)
    except ValueError:
        return []
    return [entry for entry in loaded if isinstance(entry, dict)] if isinstance(loaded, list) else []


async def forget(registry: Registry, deleted: dict[str, Any]) -> None:
    """Remove the history of the ``deleted`` unit, unless the key has changed hands since."""
    key = unit_revisions_key(str(deleted["metadata"]["name"]))
    kv = await registry.store.get(key)
    if kv is None:
        return
    uid = str(deleted["metadata"].get("uid", ""))
    try:
        entries = json.loads(kv.value)
    except ValueError:
        entries = []
    if isinstance(entries, list) and any(isinstance(e, dict) and e.get("uid") != uid for e in entries):
        return
    with contextlib.suppress(NotFound, Conflict):
        await registry.store.delete(key, expected_revision=kv.mod_revision)


def history_hook(registry: Registry) -> WriteHook:
    """The Registry write hook for units: the history key to write with a template change."""

    async def hook(current: dict[str, Any], new: dict[str, Any]) -> tuple[tuple[str, bytes], ...]:
        spec, new_spec = current.get("spec") or {}, new.get("spec") or {}
        if spec == new_spec or template_of(spec) == template_of(new_spec):  # status writes: the first test
            return ()
        name = str(current["metadata"]["name"])
        history = next_history(current, new, await stored_history(registry, name), timestamp=now_rfc3339())
        return ((unit_revisions_key(name), encode_history(history)),) if history else ()

    return hook


def revision_list(unit: Mapping[str, Any], history: list[Revision]) -> dict[str, Any]:
    items = [{k: v for k, v in entry.items() if k != "uid"} for entry in history]
    return {"kind": "UnitRevisionList", "apiVersion": API_VERSION,
            "metadata": {"name": str(unit["metadata"]["name"]),
                         "resourceVersion": str(unit["metadata"].get("resourceVersion", ""))},
            "items": items}


async def get_revisions(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    authorize(user_of(request), "get", "units", name=name, subresource="revisions")
    registry = request.app[REGISTRY]
    unit = registry.get("units", name)
    return json_response(revision_list(unit, history_of(unit, await stored_history(registry, name))))


def add_routes(app: web.Application) -> None:
    app[REGISTRY].write_hooks["units"] = history_hook(app[REGISTRY])
    app.router.add_get("/api/v1/units/{name}/revisions", get_revisions)
