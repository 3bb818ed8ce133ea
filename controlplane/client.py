"""The async REST client of the controlplane API, shared by ``cpctl`` and ``cp-agent``.

It exists so that no caller builds URLs, encodes bodies or parses Status objects by hand:
every server error comes back as the matching ``CPError`` (rebuilt with
``controlplane.errors.from_status``), and a server that cannot be reached at all is a
``ServiceUnavailable`` whose message names the server. One aiohttp session (keep-alive) is
opened lazily on first use and closed by ``close()`` or the ``async with`` block.

    async with Client("http://127.0.0.1:7070", token="admin-token") as api:
        unit = await api.get("units", "web")
        async for event in api.watch("instances", resource_version=rv):
            ...
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import Any
from urllib.parse import quote

import aiohttp

from controlplane.errors import BY_REASON, CPError, Gone, InternalError, ServiceUnavailable, from_status
from controlplane.model import API_VERSION

API_PREFIX = f"/api/{API_VERSION}"
JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
DEFAULT_PAGE = 500
# the class defines a method named ``list``, which hides the builtin in its annotations
ObjectList = list[dict[str, Any]]


def _error_from_response(code: int, body: bytes, url: str) -> CPError:
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


class Client:
    """An API client for one server. Optional arguments are keyword-only.

    ``timeout`` bounds each ordinary request; watches and followed logs are long-lived and
    are bounded only by the connect timeout and their own ``timeout_seconds``.
    """

    def __init__(self, server: str, *, token: str | None = None, ca: str | None = None, timeout: float = 10.0) -> None:
        self.server = server.rstrip("/")
        self.token = token
        self.ca = ca
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    # --- lifecycle -------------------------------------------------------------------------------

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    def _ssl(self) -> ssl.SSLContext | bool:
        if self.ca:
            try:
                return ssl.create_default_context(cafile=self.ca)
            except (OSError, ssl.SSLError) as err:
                raise ServiceUnavailable(f"cannot load the CA file {self.ca!r}: {err}") from err
        return True

    def session(self) -> aiohttp.ClientSession:
        """The shared keep-alive session, opened on first use (inside the running loop)."""
        if self._session is None or self._session.closed:
            headers = {"Accept": JSON, "User-Agent": "controlplane-client"}
            if self.token:
                headers["Authorization"] = f"Bearer {self.token}"
            connector = aiohttp.TCPConnector(ssl=self._ssl(), limit=64)
            self._session = aiohttp.ClientSession(headers=headers, connector=connector)
        return self._session

    # --- plumbing --------------------------------------------------------------------------------

    def url(self, path: str) -> str:
        return self.server + path

    @staticmethod
    def object_path(resource: str, name: str | None = None, subresource: str | None = None) -> str:
        path = f"{API_PREFIX}/{resource}"
        if name is not None:
            path += "/" + quote(name, safe="")
        if subresource:
            path += "/" + subresource
        return path

    def _unreachable(self, err: BaseException) -> ServiceUnavailable:
        text = str(err) or err.__class__.__name__
        if isinstance(err, TimeoutError):
            text = f"no answer within {self.timeout:g}s"
        elif isinstance(err, aiohttp.ClientConnectorCertificateError):
            reason = getattr(err.certificate_error, "verify_message", "") or str(err.certificate_error)
            trust = f"the CA {self.ca}" if self.ca else "the system's CAs (give the cluster CA with --ca or CPCTL_CA)"
            text = f"TLS certificate verification failed ({reason}) against {trust}"
        elif isinstance(err, aiohttp.ClientSSLError):
            text = f"TLS handshake failed ({getattr(err, 'strerror', None) or err.__class__.__name__}); " \
                   "is the server's scheme (http/https) right?"
        return ServiceUnavailable(f"cannot reach the server at {self.server}: {text}")

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: Any = None,
        content_type: str = JSON,
    ) -> Any:
        """One request; the decoded JSON answer, or the server's error as a CPError."""
        data = None
        headers: dict[str, str] = {}
        if body is not None:
            data = json.dumps(body, separators=(",", ":")).encode()
            headers["Content-Type"] = content_type
        url = self.url(path)
        try:
            async with self.session().request(
                method, url, params=params, data=data, headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            ) as resp:
                raw = await resp.read()
                if resp.status >= 400:
                    raise _error_from_response(resp.status, raw, url)
        except CPError:
            raise
        except (TimeoutError, aiohttp.ClientError, OSError) as err:
            raise self._unreachable(err) from err
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError as err:
            raise InternalError(f"the server at {self.server} sent a body that is not JSON for {method} {path}") from err

    @staticmethod
    def _query(
        *, label_selector: str | None, field_selector: str | None, limit: int = 0, continue_token: str | None = None
    ) -> dict[str, str]:
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

    # --- objects ---------------------------------------------------------------------------------

    async def list(
        self,
        resource: str,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        limit: int = 0,
        continue_token: str | None = None,
    ) -> dict[str, Any]:
        """One page of ``resource``: the ``<Kind>List`` object (``metadata.continue`` when more)."""
        params = self._query(
            label_selector=label_selector, field_selector=field_selector, limit=limit, continue_token=continue_token
        )
        result: dict[str, Any] = await self.request("GET", self.object_path(resource), params=params)
        return result

    async def list_all(
        self,
        resource: str,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        page_size: int = DEFAULT_PAGE,
    ) -> tuple[ObjectList, str]:
        """Every matching object, following ``continue`` tokens, and the first page's resourceVersion
        (the revision to start a watch from)."""
        items: ObjectList = []
        token: str | None = None
        revision = ""
        while True:
            page = await self.list(
                resource, label_selector=label_selector, field_selector=field_selector,
                limit=page_size, continue_token=token,
            )
            items.extend(page.get("items") or [])
            meta = page.get("metadata") or {}
            revision = revision or str(meta.get("resourceVersion") or "")
            token = meta.get("continue") or None
            if not token:
                return items, revision

    async def get(self, resource: str, name: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("GET", self.object_path(resource, name))
        return result

    async def create(self, resource: str, obj: Mapping[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("POST", self.object_path(resource), body=obj)
        return result

    async def replace(self, resource: str, name: str, obj: Mapping[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("PUT", self.object_path(resource, name), body=obj)
        return result

    async def patch(self, resource: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """An RFC 7386 merge patch (``None`` values delete keys)."""
        result: dict[str, Any] = await self.request(
            "PATCH", self.object_path(resource, name), body=patch, content_type=MERGE_PATCH
        )
        return result

    async def delete(self, resource: str, name: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("DELETE", self.object_path(resource, name))
        return result

    async def put_status(self, resource: str, name: str, obj: Mapping[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("PUT", self.object_path(resource, name, "status"), body=obj)
        return result

    async def get_scale(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("GET", self.object_path("units", name, "scale"))
        return result

    async def put_scale(self, name: str, replicas: int) -> dict[str, Any]:
        body = {"apiVersion": API_VERSION, "kind": "Scale", "metadata": {"name": name}, "spec": {"replicas": replicas}}
        result: dict[str, Any] = await self.request("PUT", self.object_path("units", name, "scale"), body=body)
        return result

    async def heartbeat(self, machine: str, body: dict[str, Any]) -> dict[str, Any]:
        """The agent's heartbeat: ``{"machine": ..., "leaseTTL": ..., "lease": ...}``."""
        result: dict[str, Any] = await self.request(
            "POST", self.object_path("machines", machine, "heartbeat"), body=body
        )
        return result

    async def version(self) -> dict[str, Any]:
        """``GET /version``: ``{"version": ...}``."""
        result: dict[str, Any] = await self.request("GET", "/version")
        return result

    # --- streams ---------------------------------------------------------------------------------

    async def watch(
        self,
        resource: str,
        *,
        resource_version: str | int | None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        timeout_seconds: float | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """The watch events after ``resource_version`` (``{"type", "object"}``, BOOKMARKs included,
        so a caller can remember the latest revision). Ends when the server ends the stream
        (``timeout_seconds``); raises ``Gone`` on 410 or an ERROR event with code 410, and the
        matching CPError for any other ERROR event."""
        params = self._query(label_selector=label_selector, field_selector=field_selector)
        params["watch"] = "1"
        if resource_version not in (None, ""):
            params["resourceVersion"] = str(resource_version)
        if timeout_seconds:
            params["timeoutSeconds"] = f"{timeout_seconds:g}"
        url = self.url(self.object_path(resource))
        timeout = aiohttp.ClientTimeout(total=None, connect=self.timeout, sock_connect=self.timeout, sock_read=None)
        try:
            async with self.session().get(url, params=params, timeout=timeout) as resp:
                if resp.status >= 400:
                    raise _error_from_response(resp.status, await resp.read(), url)
                buffer = b""
                async for chunk in resp.content.iter_any():
                    buffer += chunk
                    while b"\n" in buffer:
                        line, buffer = buffer.split(b"\n", 1)
                        if line.strip():
                            yield self._watch_event(line)
                if buffer.strip():
                    yield self._watch_event(buffer)
        except CPError:
            raise
        except (TimeoutError, aiohttp.ClientError, OSError) as err:
            raise self._unreachable(err) from err

    def _watch_event(self, line: bytes) -> dict[str, Any]:
        try:
            event = json.loads(line)
        except ValueError as err:
            raise InternalError(f"the server at {self.server} sent a watch line that is not JSON") from err
        if not isinstance(event, dict):
            raise InternalError(f"the server at {self.server} sent a watch event that is not an object")
        if event.get("type") == "ERROR":
            status = event.get("object") or {}
            if int(status.get("code") or 0) == 410:
                raise Gone(str(status.get("message") or "watch expired; re-list"))
            raise from_status(status)
        return event

    async def logs(self, instance: str, *, follow: bool = False, tail: int | None = None) -> AsyncIterator[bytes]:
        """The instance's container output, as the agent sends it (proxied by the API server)."""
        params: dict[str, str] = {}
        if follow:
            params["follow"] = "1"
        if tail is not None:
            params["tail"] = str(tail)
        url = self.url(self.object_path("instances", instance, "log"))
        total = None if follow else max(self.timeout, 60.0)
        timeout = aiohttp.ClientTimeout(total=total, connect=self.timeout, sock_connect=self.timeout)
        try:
            async with self.session().get(url, params=params, timeout=timeout) as resp:
                if resp.status >= 400:
                    raise _error_from_response(resp.status, await resp.read(), url)
                async for chunk in resp.content.iter_any():
                    yield chunk
        except CPError:
            raise
        except (TimeoutError, aiohttp.ClientError, OSError) as err:
            raise self._unreachable(err) from err
