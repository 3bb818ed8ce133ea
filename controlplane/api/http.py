"""Request and response plumbing shared by the handlers: JSON in, JSON out, errors as Status.

Every way a request can be wrong (size, content type, encoding, syntax) maps to one
``CPError`` here, so no handler parses a body by hand.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from controlplane.errors import BadRequest, CPError, RequestEntityTooLarge, UnsupportedMediaType

MAX_BODY = 1024 * 1024
JSON_TYPES = ("application/json",)
PATCH_TYPES = ("application/merge-patch+json",)


def json_response(data: Any, *, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(data, separators=(",", ":")).encode(), status=status, content_type="application/json"
    )


def bytes_response(body: bytes, *, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, content_type="application/json")


def error_response(err: CPError) -> web.Response:
    return json_response(err.to_status(), status=err.code)


async def read_json(request: web.Request, *, accept: tuple[str, ...] = JSON_TYPES) -> Any:
    """The request body as JSON, or a CPError: 415 wrong type, 413 too large, 400 not UTF-8 / not JSON."""
    if request.content_type not in accept:
        raise UnsupportedMediaType(
            f"unsupported content type {request.content_type or '(none)'!r}; use {' or '.join(accept)}"
        )
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise RequestEntityTooLarge(f"request body is larger than {MAX_BODY} bytes")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as err:
        raise RequestEntityTooLarge(f"request body is larger than {MAX_BODY} bytes") from err
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise BadRequest(f"request body is not UTF-8: {err.reason} at byte {err.start}") from err
    if not text.strip():
        raise BadRequest("request body is empty")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise BadRequest(f"request body is not valid JSON: {err.msg} at line {err.lineno} column {err.colno}") from err
    except RecursionError as err:
        raise BadRequest("request body is nested too deeply") from err


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
