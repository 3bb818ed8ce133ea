"""Marshmallow schemas: the wire format, defaults and validation of every object.

The same schemas feed the OpenAPI document (controlplane/api/openapi.py), so what the
server accepts and what the spec says cannot drift apart. ``load_object`` is the one
entry point: it returns a defaulted object or raises ``Invalid`` with one cause per
bad field, so nothing a user typed wrong reaches etcd half-written.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, pre_load, validate, validates_schema

from controlplane.errors import Cause, Invalid

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_LABEL_MESSAGE = "must be a DNS-1123 label: lower case letters, digits and '-', at most 63 characters"
LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
GLOB = re.compile(r"^[a-z0-9*?\[\]!-]{1,63}$")
HTTP_PATH = re.compile(r"^/[\x21-\x7e]*$")
PORT = validate.Range(min=1, max=65535)


# JSON-schema (ECMA) forms of the patterns above, for the OpenAPI document; the validators use
# fullmatch, so a trailing newline never slips through Python's ``$``.
DNS_LABEL_SPEC = {"pattern": DNS_LABEL.pattern, "maxLength": 63}
DNS_LABEL_OR_EMPTY_SPEC = {"pattern": "^([a-z0-9]([-a-z0-9]*[a-z0-9])?)?$", "maxLength": 63}


def _dns_label(value: str) -> None:
    if len(value) > 63 or not DNS_LABEL.fullmatch(value):
        raise ValidationError(DNS_LABEL_MESSAGE)


def _dns_label_or_empty(value: str) -> None:
    if value:
        _dns_label(value)


def _labels(value: dict[str, str]) -> None:
    for key, val in value.items():
        if len(key) > 253 or not LABEL_KEY.fullmatch(key):
            raise ValidationError(f"label key {key!r} is not a qualified name")
        if len(val) > 63 or not LABEL_VALUE.fullmatch(val):
            raise ValidationError(f"label value {val!r} for {key!r} is not a valid label value")


def _env(value: dict[str, str]) -> None:
    for key in value:
        if not ENV_NAME.fullmatch(key):
            raise ValidationError(f"environment variable name {key!r} is not a valid C identifier")


def _glob(value: str) -> None:
    if not GLOB.fullmatch(value):
        raise ValidationError(f"{value!r} is not a unit name glob (a-z, 0-9, '-', '*', '?', '[...]')")


@functools.cache
def instance(cls: type[Schema]) -> Schema:
    """One shared instance per schema class. Building a Schema deep-copies its declared fields (and
    a Nested field builds its schema on first use), which was most of the CPU of a create; loads
    are synchronous, so one instance serves every request of the event loop."""
    return cls()


class FullMatch(validate.Regexp):
    """``validate.Regexp`` that matches the whole string (Python's ``$`` also matches before a final
    newline, so ``Regexp("^a$")`` would accept ``"a\\n"``)."""

    def __call__(self, value: Any) -> Any:
        if self.regex.fullmatch(value) is None:
            raise ValidationError(self._format_error(value))
        return value


class Strict(Schema):
    """Unknown fields are errors, and a boolean or a number must be a JSON one (marshmallow alone
    takes 0 or "yes" for a boolean and "1.5" for a float)."""

    class Meta:
        unknown = RAISE

    @pre_load
    def json_types(self, data: Any, **_: Any) -> Any:
        if not isinstance(data, dict):
            return data
        errors: dict[str, list[str]] = {}
        for name, field in self.load_fields.items():
            key = field.data_key or name
            value = data.get(key)
            if key not in data or (value is None and field.allow_none):
                continue
            if isinstance(field, fields.Boolean) and not isinstance(value, bool):
                errors[key] = ["Not a valid boolean."]
            elif isinstance(field, fields.Float) and (isinstance(value, bool) or not isinstance(value, int | float)):
                errors[key] = ["Not a valid number."]
        if errors:
            raise ValidationError(errors)
        return data


class ObjectMetaSchema(Strict):
    name = fields.String(required=True, validate=_dns_label, metadata=DNS_LABEL_SPEC)
    uid = fields.String()
    resourceVersion = fields.String()
    generation = fields.Integer(strict=True)
    creationTimestamp = fields.String()
    labels = fields.Dict(keys=fields.String(), values=fields.String(), validate=_labels, load_default=dict)
    annotations = fields.Dict(keys=fields.String(), values=fields.String(), load_default=dict)


class PortSchema(Strict):
    containerPort = fields.Integer(required=True, strict=True, validate=PORT)
    hostPort = fields.Integer(strict=True, validate=validate.Range(min=0, max=65535), load_default=0)
    protocol = fields.String(validate=validate.OneOf(["tcp", "udp"]), load_default="tcp")


class ResourcesSchema(Strict):
    cpu = fields.Float(validate=validate.Range(min=0, max=1024), load_default=0.0)
    memoryMB = fields.Integer(strict=True, validate=validate.Range(min=0, max=16 * 1024 * 1024), load_default=0)


class PlacementSchema(Strict):
    spread = fields.String(validate=validate.OneOf(["required", "preferred", "none"]), load_default="required")
    conflicts = fields.List(
        fields.String(validate=_glob, metadata={"pattern": GLOB.pattern}), load_default=list
    )
    machineMetadata = fields.Dict(
        keys=fields.String(validate=FullMatch(LABEL_KEY, error="not a label key")),
        values=fields.List(fields.String(validate=validate.Length(min=1, max=63)), validate=validate.Length(min=1)),
        load_default=dict,
    )
    machineOf = fields.String(validate=_dns_label_or_empty, load_default="", metadata=DNS_LABEL_OR_EMPTY_SPEC)
    machine = fields.String(validate=_dns_label_or_empty, load_default="", metadata=DNS_LABEL_OR_EMPTY_SPEC)


class HttpProbeSchema(Strict):
    path = fields.String(validate=FullMatch(HTTP_PATH, error="must be an absolute URL path"), load_default="/")
    port = fields.Integer(required=True, strict=True, validate=PORT)


class TcpProbeSchema(Strict):
    port = fields.Integer(required=True, strict=True, validate=PORT)


class ExecProbeSchema(Strict):
    command = fields.List(fields.String(), required=True, validate=validate.Length(min=1))


class HealthSchema(Strict):
    http = fields.Nested(HttpProbeSchema)
    tcp = fields.Nested(TcpProbeSchema)
    exec = fields.Nested(ExecProbeSchema)
    periodSeconds = fields.Float(validate=validate.Range(min=0.1, max=3600), load_default=2.0)
    timeoutSeconds = fields.Float(validate=validate.Range(min=0.1, max=3600), load_default=1.0)
    failureThreshold = fields.Integer(strict=True, validate=validate.Range(min=1, max=100), load_default=3)

    @validates_schema
    def one_probe(self, data: dict[str, Any], **_: Any) -> None:
        probes = [k for k in ("http", "tcp", "exec") if k in data]
        if len(probes) != 1:
            raise ValidationError("exactly one of http, tcp or exec is required", "http")


class ExposeSchema(Strict):
    host = fields.String(required=True, validate=_dns_label, metadata=DNS_LABEL_SPEC)
    port = fields.Integer(strict=True, validate=PORT)


class ProxySchema(Strict):
    kind = fields.String(required=True, validate=validate.OneOf(["loadbalancer", "edge"]))
    target = fields.String(validate=_dns_label, metadata=DNS_LABEL_SPEC)
    domain = fields.String(
        validate=FullMatch(
            r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?\.)*[a-z0-9]([-a-z0-9]*[a-z0-9])?$", error="must be a DNS domain"
        )
    )
    port = fields.Integer(strict=True, validate=PORT, load_default=80)

    @validates_schema
    def kind_fields(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("kind") == "loadbalancer" and not data.get("target"):
            raise ValidationError("a loadbalancer proxy needs a target unit", "target")
        if data.get("kind") == "edge" and not data.get("domain"):
            raise ValidationError("an edge proxy needs a domain", "domain")


class UnitSpecSchema(Strict):
    image = fields.String(validate=validate.Length(min=1, max=512))
    command = fields.List(fields.String(), load_default=list)
    env = fields.Dict(keys=fields.String(), values=fields.String(), validate=_env, load_default=dict)
    ports = fields.List(fields.Nested(PortSchema), load_default=list)
    replicas = fields.Integer(strict=True, validate=validate.Range(min=0, max=100000), load_default=1)
    # "global" is a Python keyword: the attribute is global_, the wire name "global".
    global_ = fields.Boolean(data_key="global", load_default=False)
    resources = fields.Nested(ResourcesSchema, load_default=lambda: {"cpu": 0.0, "memoryMB": 0})
    restartPolicy = fields.String(validate=validate.OneOf(["Always", "OnFailure", "Never"]), load_default="Always")
    placement = fields.Nested(PlacementSchema, load_default=lambda: instance(PlacementSchema).load({}))
    health = fields.Nested(HealthSchema)
    expose = fields.Nested(ExposeSchema)
    proxy = fields.Nested(ProxySchema)

    @validates_schema
    def combinations(self, data: dict[str, Any], **_: Any) -> None:
        errors: dict[str, list[str]] = {}
        if not data.get("image") and not data.get("proxy"):
            errors.setdefault("image", []).append("required unless the unit is a proxy")
        placement = data.get("placement") or {}
        pin, machine_of, conflicts = placement.get("machine"), placement.get("machineOf"), placement.get("conflicts")
        is_global = bool(data.get("global_"))
        if pin and (conflicts or machine_of or is_global):
            errors.setdefault("placement.machine", []).append(
                "machine (a pin) cannot be combined with conflicts, machineOf or global"
            )
        if is_global and machine_of:
            errors.setdefault("placement.machineOf", []).append("machineOf cannot be combined with global")
        if machine_of and conflicts:
            from fnmatch import fnmatchcase

            if any(fnmatchcase(machine_of, pattern) for pattern in conflicts):
                errors.setdefault("placement.machineOf", []).append(
                    f"machineOf {machine_of!r} is matched by this unit's own conflicts"
                )
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
    cpu = fields.Float(validate=validate.Range(min=0), load_default=0.0)
    memoryMB = fields.Integer(strict=True, validate=validate.Range(min=0), load_default=0)


class MachineSpecSchema(Strict):
    unschedulable = fields.Boolean(load_default=False)


class MachineStatusSchema(Strict):
    state = fields.String(validate=validate.OneOf(["Ready", "NotReady"]), load_default="NotReady")
    address = fields.String(load_default="")
    capacity = fields.Nested(CapacitySchema, load_default=lambda: {"cpu": 0.0, "memoryMB": 0})
    allocated = fields.Nested(CapacitySchema, load_default=lambda: {"cpu": 0.0, "memoryMB": 0})
    lastHeartbeatTime = fields.String(load_default="")
    agentVersion = fields.String(load_default="")
    agentPort = fields.Integer(strict=True, validate=validate.Range(min=0, max=65535), load_default=0)


class HostPortSchema(Strict):
    containerPort = fields.Integer(required=True, strict=True, validate=PORT)
    hostPort = fields.Integer(required=True, strict=True, validate=validate.Range(min=0, max=65535))
    protocol = fields.String(validate=validate.OneOf(["tcp", "udp"]), load_default="tcp")


class InstanceSpecSchema(Strict):
    unit = fields.String(required=True, validate=_dns_label, metadata=DNS_LABEL_SPEC)
    index = fields.Integer(required=True, strict=True, validate=validate.Range(min=0))
    machine = fields.String(validate=_dns_label_or_empty, load_default="", metadata=DNS_LABEL_OR_EMPTY_SPEC)
    epoch = fields.Integer(strict=True, validate=validate.Range(min=0), load_default=0)
    generation = fields.Integer(strict=True, validate=validate.Range(min=0), load_default=0)
    template = fields.Nested(UnitSpecSchema, load_default=None, allow_none=True)


PHASES = ["Pending", "Starting", "Running", "Failed", "Stopped"]


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
        "apiVersion": fields.String(validate=validate.Equal("v1"), load_default="v1"),
        "kind": fields.String(validate=validate.Equal(kind), load_default=kind),
        "metadata": fields.Nested(ObjectMetaSchema, required=True),
    }
    if spec is not None:
        attrs["spec"] = fields.Nested(spec, load_default=lambda: instance(spec).load({}))
    if status is not None:
        attrs["status"] = fields.Nested(status, load_default=lambda: instance(status).load({}))
    return type(f"{kind}Schema", (Strict,), attrs)


MachineSchema = _object_schema("Machine", MachineSpecSchema, MachineStatusSchema)
UnitSchema = _object_schema("Unit", UnitSpecSchema, UnitStatusSchema)
InstanceSchema = _object_schema("Instance", InstanceSpecSchema, InstanceStatusSchema)


class EndpointsSchema(Strict):
    apiVersion = fields.String(validate=validate.Equal("v1"), load_default="v1")
    kind = fields.String(validate=validate.Equal("Endpoints"), load_default="Endpoints")
    metadata = fields.Nested(ObjectMetaSchema, required=True)
    endpoints = fields.List(fields.Nested(EndpointAddressSchema), load_default=list)


class EventSchema(Strict):
    apiVersion = fields.String(validate=validate.Equal("v1"), load_default="v1")
    kind = fields.String(validate=validate.Equal("Event"), load_default="Event")
    metadata = fields.Nested(ObjectMetaSchema, required=True)
    type = fields.String(validate=validate.OneOf(["Normal", "Warning"]), load_default="Normal")
    reason = fields.String(required=True, validate=validate.Length(min=1, max=128))
    involvedObject = fields.Nested(InvolvedObjectSchema, required=True)
    message = fields.String(load_default="")
    timestamp = fields.String(load_default="")
    count = fields.Integer(strict=True, load_default=1)


class ScaleSpecSchema(Strict):
    replicas = fields.Integer(required=True, strict=True, validate=validate.Range(min=0, max=100000))


class ScaleSchema(Schema):
    apiVersion = fields.String(load_default="v1")
    kind = fields.String(load_default="Scale")
    metadata = fields.Dict()
    spec = fields.Nested(ScaleSpecSchema, required=True)
    status = fields.Dict()


class StatusCauseSchema(Schema):
    field = fields.String()
    reason = fields.String()
    message = fields.String()


class StatusDetailsSchema(Schema):
    kind = fields.String()
    name = fields.String()
    causes = fields.List(fields.Nested(StatusCauseSchema))


class StatusSchema(Schema):
    kind = fields.String(required=True)
    apiVersion = fields.String(required=True)
    status = fields.String(required=True)
    code = fields.Integer(required=True)
    reason = fields.String(required=True)
    message = fields.String(required=True)
    details = fields.Nested(StatusDetailsSchema)


SCHEMAS: dict[str, type[Schema]] = {
    "Machine": MachineSchema,
    "Unit": UnitSchema,
    "Instance": InstanceSchema,
    "Endpoints": EndpointsSchema,
    "Event": EventSchema,
}
STATUS_SCHEMAS: dict[str, type[Schema]] = {
    "Machine": MachineStatusSchema,
    "Unit": UnitStatusSchema,
    "Instance": InstanceStatusSchema,
}


def flatten_errors(messages: Any, prefix: str = "") -> list[Cause]:
    """Turn marshmallow's nested error dict into one cause per field path (``spec.ports[0].containerPort``)."""
    causes: list[Cause] = []
    if isinstance(messages, dict):
        for key, value in messages.items():
            if isinstance(key, int):
                path = f"{prefix}[{key}]"
            elif key == "_schema":
                path = prefix
            else:
                path = f"{prefix}.{key}" if prefix else str(key)
            causes.extend(flatten_errors(value, path))
    elif isinstance(messages, list):
        for item in messages:
            if isinstance(item, dict | list):
                causes.extend(flatten_errors(item, prefix))
            else:
                reason = "FieldValueRequired" if "required" in str(item).lower() else "FieldValueInvalid"
                if "Unknown field" in str(item):
                    reason = "FieldValueNotSupported"
                causes.append(Cause(field=prefix or "<body>", message=str(item), reason=reason))
    else:
        causes.append(Cause(field=prefix or "<body>", message=str(messages)))
    return causes


def _fix_global(obj: dict[str, Any]) -> None:
    spec = obj.get("spec")
    if isinstance(spec, dict) and "global_" in spec:
        spec["global"] = spec.pop("global_")


def _invalid(kind: str, name: str, err: ValidationError, prefix: str = "") -> Invalid:
    causes = flatten_errors(err.messages, prefix)
    summary = "; ".join(f"{c.field}: {c.message}" for c in causes[:5])
    return Invalid(f'{kind} "{name}" is invalid: {summary}', kind=kind, name=name, causes=causes)


def load_object(kind: str, body: Any) -> dict[str, Any]:
    """Validate and default a whole object of ``kind``; raise Invalid with a cause per bad field."""
    if not isinstance(body, dict):
        raise Invalid(f"{kind} must be a JSON object", kind=kind, causes=[Cause("<body>", "must be an object")])
    name = str((body.get("metadata") or {}).get("name", "")) if isinstance(body.get("metadata"), dict) else ""
    try:
        obj: dict[str, Any] = instance(SCHEMAS[kind]).load(body)
    except ValidationError as err:
        raise _invalid(kind, name, err) from err
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
        raise _invalid(kind, name, err, "status") from err
    return status
