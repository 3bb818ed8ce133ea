"""Request and response plumbing shared by the handlers: JSON in, JSON out, errors as Status.

Every way a request can be wrong (size, content type, encoding, syntax, a number no other JSON
reader could hold) maps to one ``CPError`` here, so no handler parses a body by hand.

Numbers: JSON has one number type, so ``3.0`` is read as the integer 3 (as JSON Schema reads
it). A number beyond +-``MAX_SAFE_INTEGER`` (an integer of any length: Python's int() refuses
4,301 digits and more; a float up to infinity: every double that large is a whole number) is a
422 naming its field, and ``NaN``/``Infinity`` (not JSON) a 400. Nothing of the kind reaches the
schemas or etcd.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from aiohttp import web

from controlplane import jsoncodec
from controlplane.errors import (
    BadRequest,
    Cause,
    CPError,
    Invalid,
    RequestEntityTooLarge,
    UnsupportedMediaType,
)
from controlplane.model import MAX_OBJECT_BYTES, MAX_SAFE_INTEGER

MAX_BODY = MAX_OBJECT_BYTES
JSON_TYPES = ("application/json",)
PATCH_TYPES = ("application/merge-patch+json",)
_MAX_INT_LITERAL = len(str(-MAX_SAFE_INTEGER))  # longer literals are out of range without int()
_SHOWN_DIGITS = 24
_FAST_DEPTH = 200  # orjson reads 1,024 levels, the stdlib fewer: deeper bodies take the stdlib's way


def json_response(data: Any, *, status: int = 200) -> web.Response:
    return web.Response(body=jsoncodec.dumps(data), status=status, content_type="application/json")


def bytes_response(body: bytes, *, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, content_type="application/json")


def error_response(err: CPError) -> web.Response:
    return json_response(err.to_status(), status=err.code)


def too_large() -> RequestEntityTooLarge:
    return RequestEntityTooLarge(f"request body is larger than {MAX_BODY} bytes (256 KiB)")


class _OutOfRange:
    """Stands in, while parsing, for a number literal outside the range; found by path afterwards."""

    __slots__ = ("literal",)

    def __init__(self, literal: str) -> None:
        self.literal = literal

    def shown(self) -> str:
        text = self.literal
        return text if len(text) <= _SHOWN_DIGITS else f"{text[:_SHOWN_DIGITS]}... ({len(text)} characters)"


class _NotJson(ValueError):
    pass


def _parse_int(literal: str) -> int | _OutOfRange:
    if len(literal) > _MAX_INT_LITERAL:
        return _OutOfRange(literal)
    value = int(literal)
    return value if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER else _OutOfRange(literal)


def _parse_float(literal: str) -> float | int | _OutOfRange:
    value = float(literal)
    if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:  # also infinity
        return _OutOfRange(literal)
    return int(value) if value.is_integer() else value


def _parse_constant(name: str) -> Any:
    raise _NotJson(f"{name} is not a JSON value")


def _out_of_range(value: Any) -> Iterator[tuple[str, _OutOfRange]]:
    """(field path, literal) of every out-of-range number; iterative, as the body may nest deeply."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, _OutOfRange):
            yield path or "<body>", item
        elif isinstance(item, dict):
            stack.extend((f"{path}.{key}" if path else key, sub) for key, sub in reversed(item.items()))
        elif isinstance(item, list):
            stack.extend((f"{path}[{i}]", sub) for i, sub in reversed(list(enumerate(item))))


def _whole_numbers_in_range(value: list[Any] | dict[str, Any]) -> bool:
    """Turn whole-number floats into ints in place, as ``_parse_float`` does; False when a number is
    out of range (the slow parse then names it) or the body nests deeper than ``_FAST_DEPTH``
    (the slow parse judges it as before). Iterative, as the body may nest deeply."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        container, depth = stack.pop()
        if depth > _FAST_DEPTH:
            return False
        pairs = container.items() if isinstance(container, dict) else enumerate(container)
        for key, item in pairs:
            kind = type(item)
            if kind is float:
                if not -MAX_SAFE_INTEGER <= item <= MAX_SAFE_INTEGER:
                    return False
                if item.is_integer():
                    container[key] = int(item)
            elif kind is int:
                if not -MAX_SAFE_INTEGER <= item <= MAX_SAFE_INTEGER:
                    return False
            elif kind is dict or kind is list:
                stack.append((item, depth + 1))
    return True


def parse_json(text: str) -> Any:
    """``text`` as JSON under the rules of this module's docstring (BadRequest / Invalid).

    Fast path: orjson, then one walk over the numbers. Whatever it refuses (not JSON, a number out
    of range, a lone surrogate) goes the slow way, which explains the refusal as before."""
    ok, value = jsoncodec.try_loads(text)
    boxed = [value]
    if ok and _whole_numbers_in_range(boxed):
        return boxed[0]
    try:
        value = json.loads(text, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant)
    except _NotJson as err:
        raise BadRequest(f"request body is not valid JSON: {err}") from err
    except json.JSONDecodeError as err:
        raise BadRequest(f"request body is not valid JSON: {err.msg} at line {err.lineno} column {err.colno}") from err
    except RecursionError as err:
        raise BadRequest("request body is nested too deeply") from err
    bad = list(_out_of_range(value))
    if bad:
        causes = [Cause(path, f"{literal.shown()} is out of range: a number must be within +-{MAX_SAFE_INTEGER}")
                  for path, literal in bad]
        raise Invalid("the request body is invalid: " + "; ".join(f"{c.field}: {c.message}" for c in causes[:5]),
                      causes=causes)
    return value


async def read_body(request: web.Request, *, accept: tuple[str, ...] = JSON_TYPES) -> str:
    """The request body as text, or a CPError: 415 wrong type, 413 too large, 400 not UTF-8 / empty."""
    if request.content_type not in accept:
        raise UnsupportedMediaType(
            f"unsupported content type {request.content_type or '(none)'!r}; use {' or '.join(accept)}"
        )
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise too_large()
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as err:
        raise too_large() from err
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise BadRequest(f"request body is not UTF-8: {err.reason} at byte {err.start}") from err
    if not text.strip():
        raise BadRequest("request body is empty")
    return text


async def read_json(request: web.Request, *, accept: tuple[str, ...] = JSON_TYPES) -> Any:
    """The request body as JSON, or a CPError: 415 wrong type, 413 too large, 400 not UTF-8 / not JSON,
    422 a number out of range."""
    return parse_json(await read_body(request, accept=accept))


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result
