"""The error side of the wire format: the Status object's schema and marshmallow errors as Invalid.

``schemas.py`` says what a valid object is; this module says how a refusal looks: one
``Cause`` per bad field path (``spec.ports[0].containerPort``), gathered into an ``Invalid``
whose message names the first few, and the ``Status`` schema the OpenAPI document gives
every error response.
"""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError, fields

from controlplane.errors import Cause, Invalid


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


def invalid_from(kind: str, name: str, err: ValidationError, prefix: str = "") -> Invalid:
    """``kind "name" is invalid: <the first five causes>``, with every cause in its details."""
    causes = flatten_errors(err.messages, prefix)
    summary = "; ".join(f"{c.field}: {c.message}" for c in causes[:5])
    return Invalid(f'{kind} "{name}" is invalid: {summary}', kind=kind, name=name, causes=causes)
