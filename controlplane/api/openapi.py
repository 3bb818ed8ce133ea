"""The OpenAPI 3.1 document, generated with apispec from the same marshmallow schemas the server
validates with. ``api-spec/openapi.yaml`` is this document committed; a test fails when they differ
(regenerate with ``python -m controlplane.api.openapi > api-spec/openapi.yaml``).
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import yaml
from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin

from controlplane import __version__
from controlplane.model import HAS_STATUS, RESOURCES, SECRET_MAX_BYTES
from controlplane.schema_errors import StatusSchema
from controlplane.schemas import SCHEMAS, ScaleSchema
from controlplane.secretref import SECRET_KEY
from controlplane.validators import ENV_NAME, LABEL_KEY, LABEL_VALUE

ERRORS = {
    "400": "BadRequest: malformed JSON, not UTF-8, or a bad query parameter",
    "401": "Unauthorized: missing or unknown bearer token",
    "403": "Forbidden: the token's role does not allow this",
    "404": "NotFound",
    "409": "AlreadyExists or Conflict (stale resourceVersion)",
    "413": "RequestEntityTooLarge: the body is over 1 MiB",
    "415": "UnsupportedMediaType",
    "422": "Invalid: one cause per bad field in details.causes",
    "502": "BadGateway: the machine's agent answered something other than the log",
    "503": "ServiceUnavailable: etcd is unreachable",
}


def _error_responses(*codes: str) -> dict[str, Any]:
    return {
        code: {"description": ERRORS[code], "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Status"}}}}
        for code in codes
    }


def _json(ref: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}


NAME_PARAM = {
    "name": "name", "in": "path", "required": True,
    "schema": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63},
}
LIST_PARAMS = [
    {"name": "labelSelector", "in": "query", "schema": {"type": "string"},
     "description": "k=v, k!=v, k in (a,b), k notin (a,b), k, !k; comma-separated, ANDed"},
    {"name": "fieldSelector", "in": "query", "schema": {"type": "string"},
     "description": "dotted.path=value or dotted.path!=value, e.g. spec.machine=m1"},
    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 0}},
    {"name": "continue", "in": "query", "schema": {"type": "string"}},
]
WATCH_NOTE = (
    "With `?watch=1&resourceVersion=RV[&timeoutSeconds=S]` the response is a stream of newline-delimited "
    "JSON events `{type: ADDED|MODIFIED|DELETED|BOOKMARK|ERROR, object}` after RV; 410 Gone when RV is no "
    "longer in the watch window. (Not listed as formal parameters: a stream that never ends is not a "
    "response a spec-driven fuzzer can check.)"
)
SECRET_REF_PATTERN = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?/[-._a-zA-Z0-9]{1,253}$"
# who sees what, for resources whose reads depend on the reader
READ_NOTES = {
    "secrets": (
        "Admins see the values. A viewer sees every value as `<redacted>` (keys stay visible), in lists, "
        "reads and watches alike, and may select by `metadata.*` fields only. A node may read (not list "
        "or watch) only the Secrets that the `secretEnv` of instances bound to its machine names."
    ),
}


def _list_schema(kind: str) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["kind", "apiVersion", "metadata", "items"],
        "properties": {
            "kind": {"type": "string", "const": f"{kind}List"},
            "apiVersion": {"type": "string"},
            "metadata": {
                "type": "object",
                "properties": {"resourceVersion": {"type": "string"}, "continue": {"type": "string"}},
            },
            "items": {"type": "array", "items": {"$ref": f"#/components/schemas/{kind}"}},
        },
    }


def _path(spec: APISpec, *, path: str, operations: dict[str, Any]) -> None:
    parameters = operations.pop("parameters", None)
    spec.path(path=path, operations=operations, parameters=parameters)


def _paths(spec: APISpec) -> None:
    for resource, kind in RESOURCES.items():
        _collection_path(spec, resource, kind)
        _item_paths(spec, resource, kind)
    _scale_path(spec)
    _heartbeat_path(spec)
    _log_path(spec)
    _server_paths(spec)


def _collection_path(spec: APISpec, resource: str, kind: str) -> None:
    base = f"/api/v1/{resource}"
    _path(spec, path=base, operations={
        "get": {
            "operationId": f"list{kind}", "summary": f"List (or watch) {resource}",
            "description": " ".join(filter(None, (WATCH_NOTE, READ_NOTES.get(resource)))),
            "parameters": LIST_PARAMS,
            "responses": {"200": {"description": "the list", "content": _json(f"{kind}List")},
                          **_error_responses("400", "401", "403", "503")},
        },
        "post": {
            "operationId": f"create{kind}", "summary": f"Create a {kind}",
            "requestBody": {"required": True, "content": _json(kind)},
            "responses": {"201": {"description": "created", "content": _json(kind)},
                          **_error_responses("400", "401", "403", "409", "413", "415", "422", "503")},
        },
    })


def _item_paths(spec: APISpec, resource: str, kind: str) -> None:
    base = f"/api/v1/{resource}"
    item = f"{base}/{{name}}"
    _path(spec, path=item, operations={
        "parameters": [NAME_PARAM],
        "get": {"operationId": f"read{kind}", "summary": f"Read a {kind}",
                **({"description": READ_NOTES[resource]} if resource in READ_NOTES else {}),
                "responses": {"200": {"description": "the object", "content": _json(kind)},
                              **_error_responses("401", "403", "404", "503")}},
        "put": {"operationId": f"replace{kind}",
                "summary": f"Replace a {kind} (status is ignored; a stale metadata.resourceVersion is 409)",
                "requestBody": {"required": True, "content": _json(kind)},
                "responses": {"200": {"description": "replaced", "content": _json(kind)},
                              **_error_responses("400", "401", "403", "404", "409", "413", "415", "422", "503")}},
        "patch": {"operationId": f"patch{kind}", "summary": f"Merge-patch a {kind} (RFC 7386)",
                  "requestBody": {"required": True,
                                  "content": {"application/merge-patch+json": {"schema": {"type": "object"}}}},
                  "responses": {"200": {"description": "patched", "content": _json(kind)},
                                **_error_responses("400", "401", "403", "404", "409", "413", "415", "422",
                                                   "503")}},
        "delete": {"operationId": f"delete{kind}", "summary": f"Delete a {kind}",
                   "responses": {"200": {"description": "the deleted object", "content": _json(kind)},
                                 **_error_responses("401", "403", "404", "503")}},
    })
    if kind in HAS_STATUS:
        _path(spec, path=f"{item}/status", operations={
            "parameters": [NAME_PARAM],
            "get": {"operationId": f"read{kind}Status", "summary": f"Read a {kind} with its status",
                    "responses": {"200": {"description": "the object", "content": _json(kind)},
                                  **_error_responses("401", "403", "404", "503")}},
            "put": {"operationId": f"replace{kind}Status", "summary": f"Replace a {kind}'s status only",
                    "requestBody": {"required": True, "content": _json(kind)},
                    "responses": {"200": {"description": "updated", "content": _json(kind)},
                                  **_error_responses("400", "401", "403", "404", "409", "413", "415", "422",
                                                     "503")}},
        })


def _scale_path(spec: APISpec) -> None:
    _path(spec, path="/api/v1/units/{name}/scale", operations={
        "parameters": [NAME_PARAM],
        "get": {"operationId": "readUnitScale", "summary": "Read a unit's replicas",
                "responses": {"200": {"description": "the scale", "content": _json("Scale")},
                              **_error_responses("401", "403", "404", "503")}},
        "put": {"operationId": "replaceUnitScale", "summary": "Set a unit's replicas",
                "requestBody": {"required": True, "content": _json("Scale")},
                "responses": {"200": {"description": "the new scale", "content": _json("Scale")},
                              **_error_responses("400", "401", "403", "404", "409", "413", "415", "422", "503")}},
    })


def _heartbeat_path(spec: APISpec) -> None:
    _path(spec, path="/api/v1/machines/{name}/heartbeat", operations={
        "parameters": [NAME_PARAM],
        "post": {"operationId": "heartbeatMachine",
                 "summary": "An agent's heartbeat: keeps the machine's presence lease alive, registers it if new",
                 "requestBody": {"required": True, "content": {"application/json": {"schema": {
                     "type": "object", "additionalProperties": False,
                     "properties": {
                         "address": {"type": "string"}, "agentVersion": {"type": "string"},
                         "agentPort": {"type": "integer", "minimum": 0, "maximum": 65535},
                         "capacity": {"$ref": "#/components/schemas/Capacity"},
                         "labels": {"type": "object",
                                    "additionalProperties": {"type": "string", "maxLength": 63,
                                                             "pattern": LABEL_VALUE.pattern},
                                    "propertyNames": {"maxLength": 253, "pattern": LABEL_KEY.pattern}},
                     }}}}},
                 "responses": {"200": {"description": "the machine and the lease TTL", "content": {
                     "application/json": {"schema": {"type": "object", "properties": {
                         "machine": {"$ref": "#/components/schemas/Machine"},
                         "leaseTTL": {"type": "integer"}, "lease": {"type": "integer"},
                         "logSigningKeys": {"type": "array", "items": {"type": "string"},
                                            "description": "base64 Ed25519 public keys of log tickets"}}}}}},
                     **_error_responses("400", "401", "403", "413", "415", "422", "503")}},
    })


def _log_path(spec: APISpec) -> None:
    _path(spec, path="/api/v1/instances/{name}/log", operations={
        "parameters": [NAME_PARAM,
                       {"name": "follow", "in": "query", "schema": {"type": "string", "enum": ["0", "1"]}},
                       {"name": "tail", "in": "query", "schema": {"type": "integer", "minimum": 0}}],
        "get": {"operationId": "readInstanceLog", "summary": "The instance's container output, from its agent",
                "responses": {"200": {"description": "plain text", "content": {"text/plain": {"schema": {
                    "type": "string"}}}}, **_error_responses("400", "401", "403", "404", "502", "503")}},
    })


def _server_paths(spec: APISpec) -> None:
    """/healthz, /readyz and /metrics: open to anyone (no bearer token)."""
    for path, summary in (("/healthz", "liveness"), ("/readyz", "readiness: etcd reachable")):
        _path(spec, path=path, operations={"get": {
            "operationId": path.strip("/"), "summary": summary, "security": [],
            "responses": {"200": {"description": "ok", "content": {"text/plain": {"schema": {"type": "string"}}}},
                          **_error_responses("503")}}})
    _path(spec, path="/metrics", operations={"get": {
        "operationId": "metrics", "summary": "Prometheus metrics", "security": [],
        "responses": {"200": {"description": "text format", "content": {"text/plain": {"schema": {"type": "string"}}}}}}})


@functools.cache
def _document() -> dict[str, Any]:
    spec = APISpec(
        title="controlplane", version=__version__, openapi_version="3.1.0",
        plugins=[MarshmallowPlugin()],
        info={"description": "A fleet-style container scheduler with a Kubernetes-style REST API."},
        security=[{"bearer": []}],
    )
    spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer"})
    for kind, schema in SCHEMAS.items():
        spec.components.schema(kind, schema=schema)
    spec.components.schema("Status", schema=StatusSchema)
    spec.components.schema("Scale", schema=ScaleSchema)
    for kind in SCHEMAS:
        spec.components.schema(f"{kind}List", _list_schema(kind))
    _paths(spec)
    doc = spec.to_dict()
    _key_rules(doc["components"]["schemas"])
    return doc


def _key_rules(schemas: dict[str, Any]) -> None:
    """What apispec cannot derive from callable validators: the map keys and label values the
    server accepts (so a spec-driven client never builds a request the server refuses)."""
    label_value = {"type": "string", "maxLength": 63, "pattern": LABEL_VALUE.pattern}
    label_key = {"maxLength": 253, "pattern": LABEL_KEY.pattern}
    schemas["ObjectMeta"]["properties"]["labels"].update(additionalProperties=label_value, propertyNames=label_key)
    schemas["UnitSpec"]["properties"]["env"]["propertyNames"] = {"pattern": ENV_NAME.pattern}
    schemas["Placement"]["properties"]["machineMetadata"]["propertyNames"] = dict(label_key)
    schemas["UnitSpec"]["properties"]["secretEnv"].update(
        propertyNames={"pattern": ENV_NAME.pattern},
        additionalProperties={"type": "string", "pattern": SECRET_REF_PATTERN,
                              "description": "secretname/key: that key of that Secret"})
    schemas["Secret"]["properties"]["data"].update(
        propertyNames={"pattern": SECRET_KEY.pattern},
        description=f"key -> value; keys and values together at most {SECRET_MAX_BYTES} bytes")


def openapi_document() -> dict[str, Any]:
    return copy.deepcopy(_document())


def main() -> None:
    print(yaml.safe_dump(openapi_document(), sort_keys=True, width=120), end="")


if __name__ == "__main__":
    main()
