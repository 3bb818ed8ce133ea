"""JSON on the API server's hot paths (request bodies, stored objects, answers, watch lines).

orjson when it is installed (a C encoder and decoder: a create spent ~10 % of its CPU in the
stdlib's), the stdlib otherwise, and the stdlib for anything orjson refuses to encode (an
integer beyond 64 bits, a non-string key), so the output is JSON either way. orjson writes
non-ASCII characters as UTF-8 where the stdlib escapes them (``\\u00e9``): the same JSON value.
"""

from __future__ import annotations

import json
from typing import Any

try:
    import orjson
except ImportError:  # pragma: no cover - orjson is a dependency; the stdlib keeps the server working
    orjson = None  # type: ignore[assignment]


def dumps(value: Any, *, sort_keys: bool = False) -> bytes:
    """``value`` as compact JSON bytes (keys sorted when asked: the stored form is canonical)."""
    if orjson is not None:
        try:
            return orjson.dumps(value, option=orjson.OPT_SORT_KEYS if sort_keys else 0)
        except TypeError:
            pass  # orjson.JSONEncodeError: say it the stdlib's way (or raise its error)
    return json.dumps(value, separators=(",", ":"), sort_keys=sort_keys).encode()


def loads(data: bytes | str) -> Any:
    """Stored or trusted JSON (no number rules: see api/http.py for request bodies)."""
    if orjson is not None:
        return orjson.loads(data)
    return json.loads(data)


def try_loads(data: bytes | str) -> tuple[bool, Any]:
    """(True, ``data`` decoded by orjson), or (False, None) when orjson is missing or refuses it:
    the caller then decodes it the slow way, which says what is wrong. Numbers are as orjson
    reads them (an integer beyond 64 bits becomes a float)."""
    if orjson is None:
        return False, None
    try:
        return True, orjson.loads(data)
    except orjson.JSONDecodeError:
        return False, None
