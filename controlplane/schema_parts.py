"""The nested pieces of a unit's spec (health probes, expose, proxy) and the base every schema shares.

Kept apart from schemas.py so that each file stays small; schemas.py assembles the objects.
"""

from __future__ import annotations

import functools
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, pre_load, validate, validates_schema

from controlplane.model import DEFAULT_PROXY_PORT, PROXY_KINDS
from controlplane.validators import DNS_LABEL_SPEC, HTTP_PATH, PORT, FullMatch, dns_label


@functools.cache
def instance(cls: type[Schema]) -> Schema:
    """One shared instance per schema class. Building a Schema deep-copies its declared fields (and
    a Nested field builds its schema on first use), which was most of the CPU of a create; loads
    are synchronous, so one instance serves every request of the event loop."""
    return cls()


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
    host = fields.String(required=True, validate=dns_label, metadata=DNS_LABEL_SPEC)
    port = fields.Integer(strict=True, validate=PORT)


class ProxySchema(Strict):
    kind = fields.String(required=True, validate=validate.OneOf(PROXY_KINDS))
    target = fields.String(validate=dns_label, metadata=DNS_LABEL_SPEC)
    domain = fields.String(
        validate=FullMatch(
            r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?\.)*[a-z0-9]([-a-z0-9]*[a-z0-9])?$", error="must be a DNS domain"
        )
    )
    port = fields.Integer(strict=True, validate=PORT, load_default=DEFAULT_PROXY_PORT)

    @validates_schema
    def kind_fields(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("kind") == "loadbalancer" and not data.get("target"):
            raise ValidationError("a loadbalancer proxy needs a target unit", "target")
        if data.get("kind") == "edge" and not data.get("domain"):
            raise ValidationError("an edge proxy needs a domain", "domain")
