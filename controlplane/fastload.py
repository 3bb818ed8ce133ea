"""A fast path for loading valid objects: marshmallow's answer without marshmallow's per-field machinery.

marshmallow was ~20 % of the API server's CPU per create (a field object, an error store and
several hooks per field, even for a valid object). ``compile_schema`` reads a schema's fields
once and builds plain functions that do what marshmallow's ``load`` does for the field types
the wire format uses (String, Integer, Float, Boolean, List, Dict, Nested; the fields' own
validators, load defaults, unknown fields refused, the schema's ``validates_schema`` hooks).

It only ever *accepts*: for anything it is not sure of -- a value of another type, a validator
that refuses, a missing required field, an unknown key, a schema or field feature it does not
know -- it answers ``REFUSED`` and the caller runs marshmallow, which then gives its answer
(every error, with its causes, still comes from marshmallow). So a valid object loads to the
same dict, keys in the same order, and an invalid one gets the same Invalid as before
(tests/unit/test_fastload.py compares the two on valid, invalid and mutated objects).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields
from marshmallow.decorators import POST_DUMP, PRE_DUMP, PRE_LOAD, VALIDATES_SCHEMA
from marshmallow.utils import missing
from marshmallow.validate import Validator

from controlplane.schema_parts import instance

REFUSED: Any = object()  # "not sure": let marshmallow answer
Loader = Callable[[Any], Any]
# pre_load hooks whose only effect is refusing what these loaders refuse too (schema_parts.Strict)
HARMLESS_PRE_LOAD = frozenset({"json_types"})


class Unsupported(Exception):
    """A schema or field feature this module does not reproduce: that schema keeps marshmallow."""


def _string(value: Any) -> Any:
    return value if type(value) is str else REFUSED


def _integer(value: Any) -> Any:
    return value if type(value) is int else REFUSED


def _float(value: Any) -> Any:
    if type(value) is float:
        return value if math.isfinite(value) else REFUSED
    if type(value) is int:
        try:
            return float(value)
        except OverflowError:
            return REFUSED
    return REFUSED


def _boolean(value: Any) -> Any:
    return value if type(value) is bool else REFUSED


def _list(inner: Loader) -> Loader:
    def load(value: Any) -> Any:
        if type(value) is not list:
            return REFUSED
        out = [inner(item) for item in value]
        return REFUSED if any(item is REFUSED for item in out) else out

    return load


def _dict(keys: Loader | None, values: Loader | None) -> Loader:
    def load(value: Any) -> Any:
        if type(value) is not dict:
            return REFUSED
        out = {}
        for key, item in value.items():
            new_key = keys(key) if keys is not None else key
            new_item = values(item) if values is not None else item
            if new_key is REFUSED or new_item is REFUSED:
                return REFUSED
            out[new_key] = new_item
        return out

    return load


def _typed(field: fields.Field, depth: int) -> Loader:
    """The loader of ``field``'s type alone (no None, no validators); exact types only (a subclass
    may deserialize differently)."""
    simple = {fields.String: _string, fields.Integer: _integer, fields.Boolean: _boolean}.get(type(field))
    if simple is not None:
        return simple
    exact = type(field) in (fields.Float, fields.List, fields.Dict, fields.Nested)
    if exact and isinstance(field, fields.Float) and not field.allow_nan:
        return _float
    if exact and isinstance(field, fields.List):
        return _list(compile_field(field.inner, depth + 1))
    if exact and isinstance(field, fields.Dict):
        key_field, value_field = field.key_field, field.value_field
        return _dict(compile_field(key_field, depth + 1) if key_field is not None else None,
                     compile_field(value_field, depth + 1) if value_field is not None else None)
    if exact and isinstance(field, fields.Nested) and not field.many and field.only is None \
            and not field.exclude and field.unknown is None and isinstance(field.schema, Schema):
        return compile_schema(field.schema, depth + 1)
    raise Unsupported(f"{type(field).__name__} field")


def compile_field(field: fields.Field, depth: int = 0) -> Loader:
    """What ``field.deserialize`` returns for a present value, or REFUSED."""
    if field.pre_load or field.post_load:
        raise Unsupported("field processors")
    typed = _typed(field, depth)
    validators = list(field.validators)
    allow_none = field.allow_none

    def load(value: Any) -> Any:
        if value is None:
            return None if allow_none else REFUSED
        out = typed(value)
        if out is REFUSED:
            return REFUSED
        for validator in validators:
            try:
                if validator(out) is False and not isinstance(validator, Validator):
                    return REFUSED
            except ValidationError:
                return REFUSED
        return out

    return load


def _hooks(schema: Schema) -> list[Callable[..., Any]]:
    """The schema's ``validates_schema`` methods, refusing any hook this module cannot reproduce."""
    validators = []
    for tag, hooks in schema._hooks.items():
        for attr_name, many, kwargs in hooks:
            if tag == PRE_LOAD and attr_name in HARMLESS_PRE_LOAD and not many:
                continue
            if tag == VALIDATES_SCHEMA and not many and not kwargs.get("pass_original"):
                validators.append(getattr(schema, attr_name))
                continue
            if tag in (POST_DUMP, PRE_DUMP):
                continue
            raise Unsupported(f"{tag} hook {attr_name}")
    return validators


def compile_schema(schema: Schema, depth: int = 0) -> Loader:
    """``schema.load`` for objects it can tell are valid; REFUSED for the rest (see the docstring)."""
    if depth > 8:
        raise Unsupported("nesting too deep")
    if schema.many or schema.partial or schema.unknown != RAISE or schema.dict_class is not dict:
        raise Unsupported("schema options")
    plan: list[tuple[str, str, bool, Any, Loader]] = []
    for attr_name, field in schema.load_fields.items():
        if field.attribute is not None or "." in attr_name:
            raise Unsupported("attribute paths")
        key = field.data_key if field.data_key is not None else attr_name
        plan.append((attr_name, key, field.required, field.load_default, compile_field(field, depth)))
    known = frozenset(key for _, key, _, _, _ in plan)
    validators = _hooks(schema)
    unknown = schema.unknown

    def load(data: Any) -> Any:
        if type(data) is not dict or not known.issuperset(data):
            return REFUSED
        out: dict[str, Any] = {}
        for attr_name, key, required, default, loader in plan:
            if key in data:
                value = loader(data[key])
                if value is REFUSED:
                    return REFUSED
                out[attr_name] = value
            elif required:
                return REFUSED
            elif default is not missing:
                out[attr_name] = default() if callable(default) else default
        for validator in validators:
            try:
                validator(out, partial=None, many=False, unknown=unknown)
            except ValidationError:
                return REFUSED
        return out

    return load


def fast_loader(schema: Schema) -> Loader | None:
    """``compile_schema(schema)``, or None when the schema uses what this module does not reproduce."""
    try:
        return compile_schema(schema)
    except Unsupported:
        return None


@functools.cache
def _loader_of(cls: type[Schema]) -> Loader:
    return fast_loader(instance(cls)) or (lambda data: REFUSED)


def fast_load(cls: type[Schema], data: Any) -> Any:
    """What ``instance(cls).load(data)`` returns when ``data`` is valid, without marshmallow; REFUSED
    when not sure (the caller then runs marshmallow, which meets whatever this met)."""
    try:
        return _loader_of(cls)(data)
    except Exception:
        return REFUSED


def load_default(cls: type[Schema]) -> Any:
    """``instance(cls).load({})``, a Nested field's load default, by the fast path when it can."""
    out = fast_load(cls, {})
    return out if out is not REFUSED else instance(cls).load({})
