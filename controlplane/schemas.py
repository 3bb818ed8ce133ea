"""Marshmallow schemas: the wire format, defaults and validation of every object.

The same schemas feed the OpenAPI document (controlplane/api/openapi.py), so what the
server accepts and what the spec says cannot drift apart. ``load_object`` is the one
entry point: it returns a defaulted object or raises ``Invalid`` with one cause per
bad field, so nothing a user typed wrong reaches etcd half-written. The defaults and
choices come from ``controlplane.model``, the field rules from ``controlplane.validators``, and
the error side (the Status schema, marshmallow errors as Invalid) from ``controlplane.schema_errors``.
"""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from controlplane.errors import Cause, Invalid
from controlplane.fastload import REFUSED, fast_load, load_default
from controlplane.model import (
    API_VERSION,
    DEFAULT_PROTOCOL,
    DEFAULT_REPLICAS,
    DEFAULT_RESTART_POLICY,
    DEFAULT_SPREAD,
    MACHINE_STATES,
    PHASES,
    PROTOCOLS,
    RESTART_POLICIES,
    SPREADS,
    UNIT_NAME_MAX,
)
from controlplane.scheduler.rules import placement_causes
from controlplane.schema_errors import invalid_from
from controlplane.schema_parts import ExposeSchema, HealthSchema, ProxySchema, Strict, instance
from controlplane.tokens import DESCRIPTION_MAX, MAX_TTL_SECONDS, TOKEN_ROLES
from controlplane.validators import (
    CAPABILITY,
    DNS_LABEL_OR_EMPTY_SPEC,
    DNS_LABEL_SPEC,
    GLOB,
    LABEL_KEY,
    PIDS_LIMIT_CEILING,
    PORT,
    USER,
    FullMatch,
    dns_label,
    dns_label_or_empty,
    env_names,
    label_map,
    secret_env,
    secret_key,
    secret_size,
    unit_glob,
)


class ObjectMetaSchema(Strict):
    name = fields.String(required=True, validate=dns_label, metadata=DNS_LABEL_SPEC)
    uid = fields.String()
    resourceVersion = fields.String()
    generation = fields.Integer(strict=True)
    creationTimestamp = fields.String()
    labels = fields.Dict(keys=fields.String(), values=fields.String(), validate=label_map, load_default=dict)
    annotations = fields.Dict(keys=fields.String(), values=fields.String(), load_default=dict)


class PortSchema(Strict):
    containerPort = fields.Integer(required=True, strict=True, validate=PORT)
    hostPort = fields.Integer(strict=True, validate=validate.Range(min=0, max=65535), load_default=0)
    protocol = fields.String(validate=validate.OneOf(PROTOCOLS), load_default=DEFAULT_PROTOCOL)


class ResourcesSchema(Strict):
    cpu = fields.Float(validate=validate.Range(min=0, max=1024), load_default=0.0)
    memoryMB = fields.Integer(strict=True, validate=validate.Range(min=0, max=16 * 1024 * 1024), load_default=0)


class PlacementSchema(Strict):
    spread = fields.String(validate=validate.OneOf(SPREADS), load_default=DEFAULT_SPREAD)
    conflicts = fields.List(
        fields.String(validate=unit_glob, metadata={"pattern": GLOB.pattern}), load_default=list
    )
    machineMetadata = fields.Dict(
        keys=fields.String(validate=FullMatch(LABEL_KEY, error="not a label key")),
        values=fields.List(fields.String(validate=validate.Length(min=1, max=63)), validate=validate.Length(min=1)),
        load_default=dict,
    )
    machineOf = fields.String(validate=dns_label_or_empty, load_default="", metadata=DNS_LABEL_OR_EMPTY_SPEC)
    machine = fields.String(validate=dns_label_or_empty, load_default="", metadata=DNS_LABEL_OR_EMPTY_SPEC)


class UnitSpecSchema(Strict):
    image = fields.String(validate=validate.Length(min=1, max=512))
    command = fields.List(fields.String(), load_default=list)
    env = fields.Dict(keys=fields.String(), values=fields.String(), validate=env_names, load_default=dict)
    ports = fields.List(fields.Nested(PortSchema), load_default=list)
    replicas = fields.Integer(strict=True, validate=validate.Range(min=0, max=100000), load_default=DEFAULT_REPLICAS)
    # "global" is a Python keyword: the attribute is global_, the wire name "global".
    global_ = fields.Boolean(data_key="global", load_default=False)
    resources = fields.Nested(ResourcesSchema, load_default=lambda: {"cpu": 0.0, "memoryMB": 0})
    restartPolicy = fields.String(validate=validate.OneOf(RESTART_POLICIES), load_default=DEFAULT_RESTART_POLICY)
    placement = fields.Nested(PlacementSchema, load_default=lambda: load_default(PlacementSchema))
    health = fields.Nested(HealthSchema)
    expose = fields.Nested(ExposeSchema)
    proxy = fields.Nested(ProxySchema)
    # security (README "Container defaults" and "Secrets"); absent means the default
    secretEnv = fields.Dict(keys=fields.String(), values=fields.String(), validate=secret_env)
    user = fields.String(validate=FullMatch(USER, error="must be uid[:gid] or a user name[:group]"),
                         metadata={"pattern": USER.pattern})
    pidsLimit = fields.Integer(strict=True, validate=validate.Range(min=2, max=PIDS_LIMIT_CEILING))
    allowPrivilegeEscalation = fields.Boolean()
    capAdd = fields.List(fields.String(validate=FullMatch(CAPABILITY, error="must be a capability name like NET_ADMIN"),
                                       metadata={"pattern": CAPABILITY.pattern}))

    @validates_schema
    def combinations(self, data: dict[str, Any], **_: Any) -> None:
        errors: dict[str, list[str]] = {}
        for var in sorted(set(data.get("secretEnv") or {}) & set(data.get("env") or {})):
            errors.setdefault("secretEnv", []).append(f"{var} is set by both env and secretEnv")
        if not data.get("image") and not data.get("proxy"):
            errors.setdefault("image", []).append("required unless the unit is a proxy")
        # fleet's refused placement combinations: the rule lives beside the scheduler's filters
        wire = {"placement": data.get("placement") or {}, "global": bool(data.get("global_"))}
        for field, message in placement_causes(wire):
            errors.setdefault(field, []).append(message)
        seen: set[tuple[int, str]] = set()
        for port in data.get("ports") or []:
            key = (port["hostPort"], port["protocol"])
            if port["hostPort"] and key in seen:
                errors.setdefault("ports", []).append(f"hostPort {port['hostPort']} is used twice")
            seen.add(key)
        if errors:
            raise ValidationError(errors)


class ConditionSchema(Schema):
    type = fields.String(required=True)
    status = fields.String(required=True)
    reason = fields.String()
    message = fields.String()
    lastTransitionTime = fields.String()


class UnitStatusSchema(Strict):
    replicas = fields.Integer(strict=True, load_default=0)
    readyReplicas = fields.Integer(strict=True, load_default=0)
    observedGeneration = fields.Integer(strict=True, load_default=0)
    conditions = fields.List(fields.Nested(ConditionSchema), load_default=list)


class CapacitySchema(Strict):
    # reported by nodes, so bounded: 4096 CPUs, 64 TiB
    cpu = fields.Float(validate=validate.Range(min=0, max=4096), load_default=0.0)
    memoryMB = fields.Integer(strict=True, validate=validate.Range(min=0, max=64 * 1024 * 1024), load_default=0)


class MachineSpecSchema(Strict):
    unschedulable = fields.Boolean(load_default=False)


class MachineStatusSchema(Strict):
    state = fields.String(validate=validate.OneOf(MACHINE_STATES), load_default="NotReady")
    address = fields.String(load_default="")
    capacity = fields.Nested(CapacitySchema, load_default=lambda: {"cpu": 0.0, "memoryMB": 0})
    allocated = fields.Nested(CapacitySchema, load_default=lambda: {"cpu": 0.0, "memoryMB": 0})
    lastHeartbeatTime = fields.String(load_default="")
    agentVersion = fields.String(validate=validate.Length(max=128), load_default="")
    agentPort = fields.Integer(strict=True, validate=validate.Range(min=0, max=65535), load_default=0)  # 0: none

    @validates_schema
    def node_reported(self, data: dict[str, Any], **_: Any) -> None:
        """Written by the node itself, so untrusted: the API server connects to address:agentPort and
        proxies route to the address. An IP literal only (controlplane/addresses.py), "" until known."""
        from controlplane.addresses import address_problem

        errors: dict[str, Any] = {}
        problem = address_problem(data["address"]) if data.get("address") else None
        if problem:
            errors["address"] = [problem]
        if errors:
            raise ValidationError(errors)


class HostPortSchema(Strict):
    containerPort = fields.Integer(required=True, strict=True, validate=PORT)
    hostPort = fields.Integer(required=True, strict=True, validate=validate.Range(min=0, max=65535))
    protocol = fields.String(validate=validate.OneOf(PROTOCOLS), load_default=DEFAULT_PROTOCOL)


class InstanceSpecSchema(Strict):
    unit = fields.String(required=True, validate=dns_label, metadata=DNS_LABEL_SPEC)
    index = fields.Integer(required=True, strict=True, validate=validate.Range(min=0))
    machine = fields.String(validate=dns_label_or_empty, load_default="", metadata=DNS_LABEL_OR_EMPTY_SPEC)
    epoch = fields.Integer(strict=True, validate=validate.Range(min=0), load_default=0)
    generation = fields.Integer(strict=True, validate=validate.Range(min=0), load_default=0)
    template = fields.Nested(UnitSpecSchema, load_default=None, allow_none=True)


class InstanceStatusSchema(Strict):
    phase = fields.String(validate=validate.OneOf(PHASES), load_default="Pending")
    ready = fields.Boolean(load_default=False)
    reason = fields.String(load_default="")
    message = fields.String(load_default="")
    containerID = fields.String(load_default="")
    address = fields.String(load_default="")
    hostPorts = fields.List(fields.Nested(HostPortSchema), load_default=list)
    restarts = fields.Integer(strict=True, load_default=0)
    exitCode = fields.Integer(strict=True, allow_none=True, load_default=None)
    startedAt = fields.String(load_default="")
    machine = fields.String(load_default="")
    epoch = fields.Integer(strict=True, load_default=0)
    reasons = fields.Dict(keys=fields.String(), values=fields.Integer(strict=True), load_default=dict)

    @validates_schema
    def node_address(self, data: dict[str, Any], **_: Any) -> None:
        """An IP literal, as Machine status.address; a node may write only its machine's (api/objects.py)."""
        from controlplane.addresses import address_problem

        problem = address_problem(data["address"]) if data.get("address") else None
        if problem:
            raise ValidationError(problem, "address")


class EndpointAddressSchema(Strict):
    address = fields.String(required=True)
    port = fields.Integer(required=True, strict=True, validate=PORT)
    containerPort = fields.Integer(strict=True, validate=PORT)
    instance = fields.String()
    machine = fields.String()


class InvolvedObjectSchema(Strict):
    kind = fields.String(required=True)
    name = fields.String(required=True)


def _object_schema(kind: str, spec: type[Schema] | None, status: type[Schema] | None) -> type[Schema]:
    attrs: dict[str, Any] = {
        "apiVersion": fields.String(validate=validate.Equal(API_VERSION), load_default=API_VERSION),
        "kind": fields.String(validate=validate.Equal(kind), load_default=kind),
        "metadata": fields.Nested(ObjectMetaSchema, required=True),
    }
    if spec is not None:
        attrs["spec"] = fields.Nested(spec, load_default=lambda: load_default(spec))
    if status is not None:
        attrs["status"] = fields.Nested(status, load_default=lambda: load_default(status))
    return type(f"{kind}Schema", (Strict,), attrs)


MachineSchema = _object_schema("Machine", MachineSpecSchema, MachineStatusSchema)
UnitSchema = _object_schema("Unit", UnitSpecSchema, UnitStatusSchema)
InstanceSchema = _object_schema("Instance", InstanceSpecSchema, InstanceStatusSchema)


class EndpointsSchema(Strict):
    apiVersion = fields.String(validate=validate.Equal(API_VERSION), load_default=API_VERSION)
    kind = fields.String(validate=validate.Equal("Endpoints"), load_default="Endpoints")
    metadata = fields.Nested(ObjectMetaSchema, required=True)
    endpoints = fields.List(fields.Nested(EndpointAddressSchema), load_default=list)


class EventSchema(Strict):
    apiVersion = fields.String(validate=validate.Equal(API_VERSION), load_default=API_VERSION)
    kind = fields.String(validate=validate.Equal("Event"), load_default="Event")
    metadata = fields.Nested(ObjectMetaSchema, required=True)
    type = fields.String(validate=validate.OneOf(["Normal", "Warning"]), load_default="Normal")
    reason = fields.String(required=True, validate=validate.Length(min=1, max=128))
    involvedObject = fields.Nested(InvolvedObjectSchema, required=True)
    message = fields.String(load_default="")
    timestamp = fields.String(load_default="")  # first seen
    lastTimestamp = fields.String(load_default="")  # last seen (a repeat bumps it and count)
    count = fields.Integer(strict=True, load_default=1)


class SecretSchema(Strict):
    """A Secret: ``data`` maps keys (env-var or file names) to string values. Values are shown to
    admins and to the node that runs an instance using them; everyone else reads them redacted."""

    apiVersion = fields.String(validate=validate.Equal("v1"), load_default="v1")
    kind = fields.String(validate=validate.Equal("Secret"), load_default="Secret")
    metadata = fields.Nested(ObjectMetaSchema, required=True)
    data = fields.Dict(keys=fields.String(validate=secret_key), values=fields.String(), validate=secret_size,
                       load_default=dict)


class TokenSpecSchema(Strict):
    """Who a token is (api/tokens.py serves it; controlplane/tokens.py has the value rules)."""

    role = fields.String(required=True, validate=validate.OneOf(TOKEN_ROLES))
    machine = fields.String(validate=dns_label_or_empty, load_default="", metadata=DNS_LABEL_OR_EMPTY_SPEC)
    ttlSeconds = fields.Integer(strict=True, validate=validate.Range(min=0, max=MAX_TTL_SECONDS), load_default=0)
    description = fields.String(validate=validate.Length(max=DESCRIPTION_MAX), load_default="")
    join = fields.Boolean(load_default=False)

    @validates_schema
    def bound_to_a_machine(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("role") == "node" and not data.get("machine"):
            raise ValidationError("required for a node token", "machine")
        if data.get("role") != "node" and data.get("machine"):
            raise ValidationError("only a node token names a machine", "machine")
        if data.get("join") and data.get("role") != "node":
            raise ValidationError("only a node token can be a join token", "join")


class TokenStatusSchema(Strict):
    expiresAt = fields.String(load_default="")
    createdAt = fields.String(load_default="")
    lastUsed = fields.String(load_default="")


class TokenSchema(Strict):
    apiVersion = fields.String(validate=validate.Equal(API_VERSION), load_default=API_VERSION)
    kind = fields.String(validate=validate.Equal("Token"), load_default="Token")
    metadata = fields.Nested(ObjectMetaSchema, required=True)
    spec = fields.Nested(TokenSpecSchema, required=True)
    status = fields.Nested(TokenStatusSchema, load_default=lambda: load_default(TokenStatusSchema))


class ScaleSpecSchema(Strict):
    replicas = fields.Integer(required=True, strict=True, validate=validate.Range(min=0, max=100000))


class ScaleSchema(Schema):
    apiVersion = fields.String(load_default=API_VERSION)
    kind = fields.String(load_default="Scale")
    metadata = fields.Dict()
    spec = fields.Nested(ScaleSpecSchema, required=True)
    status = fields.Dict()


SCHEMAS: dict[str, type[Schema]] = {
    "Machine": MachineSchema,
    "Unit": UnitSchema,
    "Instance": InstanceSchema,
    "Endpoints": EndpointsSchema,
    "Event": EventSchema,
    "Secret": SecretSchema,
    "Token": TokenSchema,
}
STATUS_SCHEMAS: dict[str, type[Schema]] = {
    "Machine": MachineStatusSchema,
    "Unit": UnitStatusSchema,
    "Instance": InstanceStatusSchema,
}


def _fix_global(obj: dict[str, Any]) -> None:
    spec = obj.get("spec")
    if isinstance(spec, dict) and "global_" in spec:
        spec["global"] = spec.pop("global_")


def load_object(kind: str, body: Any) -> dict[str, Any]:
    """Validate and default a whole object of ``kind``; raise Invalid with a cause per bad field."""
    if not isinstance(body, dict):
        raise Invalid(f"{kind} must be a JSON object", kind=kind, causes=[Cause("<body>", "must be an object")])
    name = str((body.get("metadata") or {}).get("name", "")) if isinstance(body.get("metadata"), dict) else ""
    obj: dict[str, Any] = fast_load(SCHEMAS[kind], body)
    if obj is REFUSED:  # not sure it is valid: marshmallow answers (and explains every refusal)
        try:
            obj = instance(SCHEMAS[kind]).load(body)
        except ValidationError as err:
            raise invalid_from(kind, name, err) from err
    if kind == "Unit" and len(name) > UNIT_NAME_MAX:
        message = f"a unit's name is at most {UNIT_NAME_MAX} characters, so that its instances' names fit"
        raise Invalid(f'Unit "{name}" is invalid: metadata.name: {message}', kind=kind, name=name,
                      causes=[Cause("metadata.name", message, "FieldValueTooLong")])
    _fix_global(obj)
    if isinstance(obj.get("spec"), dict) and isinstance(obj["spec"].get("template"), dict):
        _fix_global({"spec": obj["spec"]["template"]})
    return obj


def load_status(kind: str, name: str, body: Any) -> dict[str, Any]:
    """Validate the ``status`` of an object for the /status subresource."""
    schema = STATUS_SCHEMAS.get(kind)
    if schema is None:
        raise Invalid(f"{kind} has no status", kind=kind, name=name)
    try:
        status: dict[str, Any] = instance(schema).load(body if body is not None else {})
    except ValidationError as err:
        raise invalid_from(kind, name, err, "status") from err
    return status
