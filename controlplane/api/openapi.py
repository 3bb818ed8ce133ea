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
from controlplane.api.objects import FIELD_SELECTOR_PATTERN, LABEL_SELECTOR_PATTERN
from controlplane.execstream import EXEC_COMMAND, EXEC_FRAMES
from controlplane.model import (
    HAS_STATUS,
    MAX_OBJECT_BYTES,
    MAX_SAFE_INTEGER,
    RESOURCES,
    SECRET_MAX_BYTES,
    UNIT_NAME_MAX,
)
from controlplane.schema_errors import StatusSchema
from controlplane.schemas import SCHEMAS, ScaleSchema
from controlplane.validators import ENV_NAME, LABEL_KEY, LABEL_VALUE

DESCRIPTION = f"""A fleet-style container scheduler with a Kubernetes-style REST API.

Limits, checked before anything is written: a request body is at most {MAX_OBJECT_BYTES} bytes
(256 KiB; larger is 413 RequestEntityTooLarge), and so is an object as stored, after defaults and
a merge patch are applied (larger is 422 Invalid). Every JSON number is within
+-{MAX_SAFE_INTEGER} (2^53-1, I-JSON); beyond is 422 Invalid naming the field. `3.0` is the integer 3. A query parameter is given at most once.

Rules JSON Schema cannot state, answered 400 or 422: on PUT (and PATCH) the body's
`metadata.name` is the URL's `{{name}}`; two ports of a unit may not share a non-zero hostPort and
protocol; `placement.machineOf` may not be matched by one of the unit's own `conflicts` globs;
an environment variable is set by `env` or by `secretEnv`, not both; a merge patch is valid only if the object it produces is; a `continue` token is one the
server issued.

`/metrics` needs an admin or viewer token unless cp-apiserver runs with `--metrics-anonymous`;
`/readyz` tells a caller without a token only "ok" or 503 "not ready"."""

ERRORS = {
    "400": "BadRequest: malformed JSON, not UTF-8, or a bad query parameter",
    "401": "Unauthorized: missing or unknown bearer token",
    "403": "Forbidden: the token's role does not allow this",
    "404": "NotFound",
    "405": "MethodNotAllowed (the Allow header names the methods served)",
    "409": "AlreadyExists or Conflict (stale resourceVersion; logs and exec: the instance is not bound yet)",
    "413": "RequestEntityTooLarge: the body is over 256 KiB",
    "415": "UnsupportedMediaType",
    "422": "Invalid: one cause per bad field in details.causes (also: an integer out of range, an object over "
           "256 KiB as stored)",
    "502": "BadGateway: the machine's agent answered something other than the log",
    "503": "ServiceUnavailable: etcd is unreachable",
    "507": "InsufficientStorage: etcd's space quota is exhausted (its NOSPACE alarm); writes are refused until "
           "an operator compacts, defragments and disarms it",
}


JSON_VALUE = "#/components/schemas/JsonValue"
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
    {"name": "labelSelector", "in": "query", "schema": {"type": "string", "pattern": LABEL_SELECTOR_PATTERN},
     "description": "k=v, k!=v, k in (a,b), k notin (a,b), k, !k; comma-separated, ANDed"},
    {"name": "fieldSelector", "in": "query", "schema": {"type": "string", "pattern": FIELD_SELECTOR_PATTERN},
     "description": "dotted.path=value or dotted.path!=value, e.g. spec.machine=m1"},
    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": MAX_SAFE_INTEGER},
     "description": "at most this many items (0: all), with metadata.continue when there are more"},
    {"name": "continue", "in": "query", "schema": {"type": "string"},
     "description": "the metadata.continue of the previous page (an opaque token; any other value is 400)"},
]
WATCH_NOTE = (
    "With `?watch=1&resourceVersion=RV[&timeoutSeconds=S]` the response is a stream of newline-delimited "
    "JSON events `{type: ADDED|MODIFIED|DELETED|BOOKMARK|ERROR, object}` after RV; 410 Gone when RV is no "
    "longer in the watch window. (Not listed as formal parameters: a stream that never ends is not a "
    "response a spec-driven fuzzer can check.)"
)


# a node-reported address: an IP literal (no name, port, zone id) or "" until known; the server also
# refuses the unspecified, multicast, broadcast and link-local addresses (said in words, see ADDRESS_NOTE)
ADDRESS = {"anyOf": [{"type": "string", "maxLength": 0}, {"type": "string", "format": "ipv4"},
                     {"type": "string", "format": "ipv6"}],
           "description": "an IP literal, or empty until known; not unspecified, multicast, broadcast or "
                          "link-local"}
# a Secret's key: 1-253 of [-._a-zA-Z0-9], but not "." or ".." (said without lookahead, for every client)
_SECRET_KEY = r"([-_a-zA-Z0-9][-._a-zA-Z0-9]{0,252}|\.[-_a-zA-Z0-9][-._a-zA-Z0-9]{0,251}|\.\.[-._a-zA-Z0-9]{1,251})"
SECRET_KEY_PATTERN = f"^{_SECRET_KEY}$"
SECRET_REF_PATTERN = f"^[a-z0-9]([-a-z0-9]*[a-z0-9])?/{_SECRET_KEY}$"
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
        if resource == "tokens":  # no PUT or PATCH, a value in the create's answer: openapi_tokens.py
            continue
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
                              **_error_responses("400", "401", "403", "409", "413", "415", "422", "503", "507")},
            },
        })
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
                                  **_error_responses("400", "401", "403", "404", "409", "413", "415", "422", "503", "507")}},
            "patch": {"operationId": f"patch{kind}", "summary": f"Merge-patch a {kind} (RFC 7386)",
                      "requestBody": {"required": True, "content": {"application/merge-patch+json": {
                          "schema": {"type": "object", "additionalProperties": {"$ref": JSON_VALUE}}}}},
                      "responses": {"200": {"description": "patched", "content": _json(kind)},
                                    **_error_responses("400", "401", "403", "404", "409", "413", "415", "422",
                                                       "503", "507")}},
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
                "put": {"operationId": f"replace{kind}Status",
                        "summary": f"Replace a {kind}'s status only (the body is validated whole; without a spec "
                                   "the stored one stands in)",
                        "requestBody": {"required": True, "content": _json(f"{kind}StatusWrite")},
                        "responses": {"200": {"description": "updated", "content": _json(kind)},
                                      **_error_responses("400", "401", "403", "404", "409", "413", "415", "422",
                                                         "503", "507")}},
            })
    _subresource_paths(spec)
    _probe_paths(spec)


def _subresource_paths(spec: APISpec) -> None:
    _path(spec, path="/api/v1/units/{name}/scale", operations={
        "parameters": [NAME_PARAM],
        "get": {"operationId": "readUnitScale", "summary": "Read a unit's replicas",
                "responses": {"200": {"description": "the scale", "content": _json("Scale")},
                              **_error_responses("401", "403", "404", "503")}},
        "put": {"operationId": "replaceUnitScale", "summary": "Set a unit's replicas",
                "requestBody": {"required": True, "content": _json("Scale")},
                "responses": {"200": {"description": "the new scale", "content": _json("Scale")},
                              **_error_responses("400", "401", "403", "404", "409", "413", "415", "422", "503", "507")}},
    })
    _path(spec, path="/api/v1/machines/{name}/heartbeat", operations={
        "parameters": [NAME_PARAM],
        "post": {"operationId": "heartbeatMachine",
                 "summary": "An agent's heartbeat: keeps the machine's presence lease alive, registers it if new",
                 "requestBody": {"required": True, "content": {"application/json": {"schema": {
                     "type": "object", "additionalProperties": False,
                     "properties": {
                         "address": ADDRESS, "agentVersion": {"type": "string", "maxLength": 128},
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
                         "leaseTTL": {"type": "integer"},
                         # an etcd lease ID: int64, so beyond the +-2^53 that bodies sent to the server keep to
                         "lease": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
                         "logSigningKeys": {"type": "array", "items": {"type": "string"},
                                            "description": "base64 Ed25519 public keys of log tickets"}}}}}},
                     **_error_responses("400", "401", "403", "413", "415", "422", "503", "507")}},
    })
    _path(spec, path="/api/v1/instances/{name}/log", operations={
        "parameters": [NAME_PARAM,
                       {"name": "follow", "in": "query", "schema": {"type": "string", "enum": ["0", "1"]}},
                       {"name": "tail", "in": "query", "schema": {"type": "integer", "minimum": 0}}],
        "get": {"operationId": "readInstanceLog", "summary": "The instance's container output, from its agent",
                "responses": {"200": {"description": "plain text", "content": {"text/plain": {"schema": {
                    "type": "string"}}}}, **_error_responses("400", "401", "403", "404", "409", "502", "503")}},
    })
    _path(spec, path="/api/v1/instances/{name}/exec", operations={
        "parameters": [NAME_PARAM],
        "post": {"operationId": "execInstance", "summary": "Run a command in the instance's container (admins only)",
                 "requestBody": {"required": True, "content": {"application/json": {"schema": {
                     "type": "object", "additionalProperties": False, "required": ["command"], "properties": {
                         "command": EXEC_COMMAND,
                         "container": {"type": "string", "maxLength": 63}}}}}},
                 "responses": {"200": {"description": EXEC_FRAMES, "content": {
                     "application/vnd.controlplane.exec.v1": {"schema": {"type": "string", "format": "binary"}}}},
                     **_error_responses("400", "401", "403", "404", "409", "413", "415", "502", "503")}},
    })


def _probe_paths(spec: APISpec) -> None:
    text = {"text/plain": {"schema": {"type": "string"}}}
    _path(spec, path="/healthz", operations={"get": {
        "operationId": "healthz", "summary": "liveness", "security": [],
        "responses": {"200": {"description": "ok", "content": text}}}})
    _path(spec, path="/readyz", operations={"get": {
        "operationId": "readyz", "security": [{}, {"bearer": []}],
        "summary": "readiness: etcd reachable ('not ready' without a token; the reason for an admin or viewer)",
        "responses": {"200": {"description": "ok", "content": text}, **_error_responses("401", "503")}}})
    _path(spec, path="/metrics", operations={"get": {
        "operationId": "metrics",
        "summary": "Prometheus metrics (an admin or viewer token, unless cp-apiserver runs with --metrics-anonymous)",
        "responses": {"200": {"description": "text format", "content": text}, **_error_responses("401", "403")}}})


@functools.cache
def _document() -> dict[str, Any]:
    spec = APISpec(
        title="controlplane", version=__version__, openapi_version="3.1.0",
        plugins=[MarshmallowPlugin()],
        info={"description": DESCRIPTION},
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
    from controlplane.api.openapi_tokens import token_paths, token_schemas

    token_paths(spec, path=_path, errors=_error_responses, content=_json, name_param=NAME_PARAM,
                list_params=LIST_PARAMS, watch_note=WATCH_NOTE)
    doc = spec.to_dict()
    schemas = doc["components"]["schemas"]
    _key_rules(schemas)
    _cross_field_rules(schemas)
    token_schemas(schemas)
    for kind in sorted(HAS_STATUS):  # a status write: like the object, but its spec may be left out
        schemas[f"{kind}StatusWrite"] = {**copy.deepcopy(schemas[kind]), "required": ["metadata"]}
    schemas["JsonValue"] = {"anyOf": [  # any JSON, with every number in the server's range
        {"type": ["string", "boolean", "null", "number"]},
        {"type": "array", "items": {"$ref": JSON_VALUE}},
        {"type": "object", "additionalProperties": {"$ref": JSON_VALUE}},
    ]}
    for free_form in ("metadata", "status"):  # a Scale's: read for metadata.resourceVersion only
        schemas["Scale"]["properties"][free_form]["additionalProperties"] = {"$ref": JSON_VALUE}
    from controlplane.api.openapi_writes import add_write_habits

    add_write_habits(doc, errors=_error_responses)
    _bound_numbers(doc)
    return doc


def _key_rules(schemas: dict[str, Any]) -> None:
    """What apispec cannot derive from callable validators: the map keys and label values the
    server accepts (so a spec-driven client never builds a request the server refuses)."""
    label_value = {"type": "string", "maxLength": 63, "pattern": LABEL_VALUE.pattern}
    label_key = {"maxLength": 253, "pattern": LABEL_KEY.pattern}
    schemas["ObjectMeta"]["properties"]["labels"].update(additionalProperties=label_value, propertyNames=label_key)
    schemas["UnitSpec"]["properties"]["env"]["propertyNames"] = {"pattern": ENV_NAME.pattern}
    schemas["Placement"]["properties"]["machineMetadata"]["propertyNames"] = dict(label_key)
    for unit in ("Unit", "UnitStatusWrite"):
        if "metadata" in schemas.get(unit, {}).get("properties", {}):
            schemas[unit]["properties"]["metadata"] = {"allOf": [
                schemas[unit]["properties"]["metadata"],
                {"properties": {"name": {"maxLength": UNIT_NAME_MAX}},
                 "description": f"a unit's name is at most {UNIT_NAME_MAX} characters, so `<unit>-<index>` fits"}]}
    for status in ("MachineStatus", "InstanceStatus", "MachineStatusWrite", "InstanceStatusWrite"):
        properties = schemas.get(status, {}).get("properties", {})
        if "address" in properties:
            properties["address"] = copy.deepcopy(ADDRESS)
    schemas["UnitSpec"]["properties"]["secretEnv"].update(
        propertyNames={"pattern": ENV_NAME.pattern},
        additionalProperties={"type": "string", "pattern": SECRET_REF_PATTERN,
                              "description": "secretname/key: that key of that Secret"})
    schemas["Secret"]["properties"]["data"].update(
        propertyNames={"pattern": SECRET_KEY_PATTERN},
        description=f"key -> value; keys and values together at most {SECRET_MAX_BYTES} bytes")


def _cross_field_rules(schemas: dict[str, Any]) -> None:
    """The combination rules of schemas.py's ``@validates_schema`` methods that JSON Schema can say.
    (Each branch says ``type: object``: without it a branch holds for any non-object, and a
    generator may take that for a valid body.)"""

    def obj(**keywords: Any) -> dict[str, Any]:
        return {"type": "object", **keywords}

    empty = {"maxLength": 0}
    schemas["Health"]["oneOf"] = [obj(required=[probe]) for probe in ("http", "tcp", "exec")]
    schemas["Proxy"]["anyOf"] = [
        obj(properties={"kind": {"const": "loadbalancer"}}, required=["target"]),
        obj(properties={"kind": {"const": "edge"}}, required=["domain"]),
    ]
    not_global = {"global": {"const": False}}
    schemas["UnitSpec"]["allOf"] = [
        obj(anyOf=[obj(required=["image"]), obj(required=["proxy"])]),
        # a pin (placement.machine) goes with no conflicts, machineOf or global
        obj(anyOf=[obj(properties={"placement": obj(properties={"machine": empty})}),
                   obj(properties={**not_global, "placement": obj(properties={
                       "conflicts": {"maxItems": 0}, "machineOf": empty})})]),
        obj(anyOf=[obj(properties=not_global), obj(properties={"placement": obj(properties={"machineOf": empty})})]),
    ]
    for kind in ("Unit", "Instance"):  # their spec has required fields, so it has no default
        schemas[kind]["required"] = [*schemas[kind]["required"], "spec"]


def _bound_numbers(node: Any) -> None:
    """Every number the document names gets the server's range (http.py), where it states none
    of its own. (A schema of several types keeps its bounds: they apply to numbers only.)"""
    if isinstance(node, dict):
        kinds = node.get("type")
        kinds = kinds if isinstance(kinds, list) else [kinds]
        if "integer" in kinds or "number" in kinds:
            node.setdefault("minimum", -MAX_SAFE_INTEGER)
            node.setdefault("maximum", MAX_SAFE_INTEGER)
        for value in node.values():
            _bound_numbers(value)
    elif isinstance(node, list):
        for value in node:
            _bound_numbers(value)


def openapi_document() -> dict[str, Any]:
    return copy.deepcopy(_document())


def main() -> None:
    print(yaml.safe_dump(openapi_document(), sort_keys=True, width=120), end="")


if __name__ == "__main__":
    main()
