"""What both REST clients of the API share: the async one (controlplane/client.py, aiohttp, for the
agent and the tests) and cpctl's blocking one (controlplane/cli/rest.py, stdlib only, so cpctl
starts without importing aiohttp).

Pure and stdlib only: URL paths, query parameters, the CPError of an HTTP error answer (its
Status object when it sent one) and the decoding of bodies and watch lines.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from controlplane.errors import BY_REASON, CPError, Gone, InternalError, ServiceUnavailable, from_status
from controlplane.model import API_VERSION

API_PREFIX = f"/api/{API_VERSION}"
JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
DEFAULT_PAGE = 500
# sending one of these twice does what sending it once does (a merge patch too): after a broken
# connection it may go to the next server even if the first one applied it
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "PATCH"})


def object_path(resource: str, name: str | None = None, subresource: str | None = None) -> str:
    """``/api/v1/units``, ``/api/v1/units/web``, ``/api/v1/units/web/scale``."""
    path = f"{API_PREFIX}/{resource}"
    if name is not None:
        path += "/" + quote(name, safe="")
    if subresource:
        path += "/" + subresource
    return path


def list_query(
    *, label_selector: str | None, field_selector: str | None, limit: int = 0, continue_token: str | None = None
) -> dict[str, str]:
    """The query parameters of a list or watch (only those given)."""
    params: dict[str, str] = {}
    if label_selector:
        params["labelSelector"] = label_selector
    if field_selector:
        params["fieldSelector"] = field_selector
    if limit:
        params["limit"] = str(limit)
    if continue_token:
        params["continue"] = continue_token
    return params


def scale_body(name: str, replicas: int) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "Scale", "metadata": {"name": name}, "spec": {"replicas": replicas}}


def error_from_response(code: int, body: bytes, url: str) -> CPError:
    """The CPError for an HTTP error response: its Status object when it sent one."""
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        data = None
    if isinstance(data, dict) and data.get("kind") == "Status":
        return from_status(data, http_code=code)
    cls = next((c for c in BY_REASON.values() if c.code == code), InternalError)
    text = body.decode("utf-8", errors="replace").strip().splitlines()
    detail = text[0][:200] if text else ""
    return cls(f"the server answered {code} for {url}" + (f": {detail}" if detail else ""))


def decode_body(raw: bytes, *, server: str, what: str) -> Any:
    """A success answer's JSON (None for an empty body)."""
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError as err:
        raise InternalError(f"the server at {server} sent a body that is not JSON for {what}") from err


def watch_event(line: bytes, *, server: str) -> dict[str, Any]:
    """One watch line as an event; ``Gone`` for an ERROR with code 410, the matching CPError for
    any other ERROR event."""
    try:
        event = json.loads(line)
    except ValueError as err:
        raise InternalError(f"the server at {server} sent a watch line that is not JSON") from err
    if not isinstance(event, dict):
        raise InternalError(f"the server at {server} sent a watch event that is not an object")
    if event.get("type") == "ERROR":
        status = event.get("object") or {}
        if int(status.get("code") or 0) == 410:
            raise Gone(str(status.get("message") or "watch expired; re-list"))
        raise from_status(status)
    return event


def none_answered(failures: Sequence[CPError]) -> CPError:
    """The error of a call no server answered: the one failure, or all of them on one line."""
    if len(failures) == 1:
        return failures[0]
    return ServiceUnavailable("every API server failed: " + "; ".join(str(f.message) for f in failures))
