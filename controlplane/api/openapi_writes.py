"""The OpenAPI document's parts for cpctl's kubectl habits: ``?dryRun=All`` on writes, and a unit's
rollout history (``GET /api/v1/units/NAME/revisions``, api/revisions.py).

Applied to the generated document (openapi.py) as a dict, so the server (dryrun.dry_run_of) and the
document say the same: the writes that take ``dryRun`` are the generic create, replace, patch and
delete of every resource but tokens, and the scale write.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from controlplane.api.dryrun import DRY_RUN_VALUES
from controlplane.model import RESOURCES

DRY_RUN_PARAM = {
    "name": "dryRun", "in": "query", "required": False,
    "schema": {"type": "string", "enum": list(DRY_RUN_VALUES)},
    "description": "All: validate and admit the write and answer as if it were done, but store nothing",
}
WRITE_METHODS = ("post", "put", "patch", "delete")


def _dry_run_paths() -> list[str]:
    paths = ["/api/v1/units/{name}/scale"]
    for resource in RESOURCES:
        if resource != "tokens":
            paths += [f"/api/v1/{resource}", f"/api/v1/{resource}/{{name}}"]
    return paths


def _revision_list_schema() -> dict[str, Any]:
    entry = {
        "type": "object",
        "required": ["revision", "generation", "template", "timestamp", "changeCause"],
        "properties": {
            "revision": {"type": "integer", "minimum": 1},
            "generation": {"type": "integer", "minimum": 1},
            "template": {"$ref": "#/components/schemas/JsonValue",
                         "description": "the unit's spec without what does not roll (replicas)"},
            "timestamp": {"type": "string", "description": "when it became the unit's template (RFC 3339)"},
            "changeCause": {"type": "string",
                            "description": "the unit's controlplane.io/change-cause annotation at the time"},
        },
    }
    return {
        "type": "object", "required": ["kind", "apiVersion", "metadata", "items"],
        "properties": {
            "kind": {"type": "string", "const": "UnitRevisionList"},
            "apiVersion": {"type": "string"},
            "metadata": {"type": "object", "properties": {"name": {"type": "string"},
                                                          "resourceVersion": {"type": "string"}}},
            "items": {"type": "array", "items": entry},
        },
    }


def add_write_habits(doc: dict[str, Any], *, errors: Callable[..., dict[str, Any]]) -> None:
    """Add the dryRun parameter and the revisions path to ``doc``; ``errors(*codes)`` gives the
    Status responses of those codes (openapi._error_responses)."""
    for path in _dry_run_paths():
        for method, operation in doc["paths"].get(path, {}).items():
            if method in WRITE_METHODS:
                operation["parameters"] = [*operation.get("parameters", []), copy.deepcopy(DRY_RUN_PARAM)]
                operation["responses"].setdefault("400", errors("400")["400"])  # a bad dryRun value
    doc["components"]["schemas"]["UnitRevisionList"] = _revision_list_schema()
    name_param = copy.deepcopy(doc["paths"]["/api/v1/units/{name}"]["parameters"][0])
    doc["paths"]["/api/v1/units/{name}/revisions"] = {
        "parameters": [name_param],
        "get": {
            "operationId": "readUnitRevisions",
            "summary": "A unit's rollout history: its last templates, oldest first (cpctl rollout history|undo)",
            "responses": {"200": {"description": "the revisions", "content": {"application/json": {"schema": {
                "$ref": "#/components/schemas/UnitRevisionList"}}}}, **errors("401", "403", "404", "503")},
        },
    }
