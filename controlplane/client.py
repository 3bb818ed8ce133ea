"""The async REST client of the controlplane API: ``cp-agent``'s (cpctl has a blocking one, cli/rest.py).

It exists so that no caller builds URLs, encodes bodies or parses Status objects by hand:
every server error comes back as the matching ``CPError`` (rebuilt with
``controlplane.errors.from_status``), and a server that cannot be reached at all is a
``ServiceUnavailable`` whose message names the server. One aiohttp session (keep-alive) is
opened lazily on first use and closed by ``close()`` or the ``async with`` block.

``server`` may name several API servers (``"http://a:7070,http://b:7070"``, see
controlplane/servers.py). A call that cannot reach one, or gets a 503 from it, goes to the next at
once; a request that may already have been applied (a POST whose connection broke after it was
sent) is not sent twice unless the caller says it is idempotent (the heartbeat is). A watch that
breaks marks its server failed, so the caller's re-list (controlplane/mirror.py) asks the next one.

    async with Client("http://127.0.0.1:7070", token="admin-token") as api:
        unit = await api.get("units", "web")
        async for event in api.watch("instances", resource_version=rv):
            ...
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any

import aiohttp

from controlplane.errors import CPError, ServiceUnavailable
from controlplane.servers import ServerList
from controlplane.wire import (  # noqa: F401  (API_PREFIX, JSON, MERGE_PATCH, DEFAULT_PAGE: re-exported)
    API_PREFIX,
    DEFAULT_PAGE,
    IDEMPOTENT_METHODS,
    JSON,
    MERGE_PATCH,
    decode_body,
    error_from_response,
    list_query,
    none_answered,
    object_path,
    scale_body,
    watch_event,
)

UNREACHABLE = (TimeoutError, aiohttp.ClientError, OSError)
# the class defines a method named ``list``, which hides the builtin in its annotations
ObjectList = list[dict[str, Any]]


class Client:
    """An API client for one server, or several (``"URL,URL"`` or a sequence) that it fails over
    between. Optional arguments are keyword-only.

    ``timeout`` bounds each ordinary request (per server tried); watches and followed logs are
    long-lived and are bounded only by the connect timeout and their own ``timeout_seconds``.
    ``on_error`` hears every error met, one per server tried (the agent counts them by reason).
    ``local_address`` is the source address of every connection (the agent's machine address).
    """

    def __init__(self, server: str | Sequence[str], *, token: str | None = None, ca: str | None = None,
                 timeout: float = 10.0, on_error: Callable[[CPError], None] | None = None,
                 local_address: str | None = None) -> None:
        self.servers = ServerList(server)
        self.local_address = local_address
        self.token = token
        self.ca = ca
        self.timeout = timeout
        self.on_error = on_error
        self._session: aiohttp.ClientSession | None = None

    @property
    def server(self) -> str:
        """The server asked first (the one that answered last)."""
        return self.servers.current

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
            local = (self.local_address, 0) if self.local_address else None
            connector = aiohttp.TCPConnector(ssl=self._ssl(), limit=64, local_addr=local)
            self._session = aiohttp.ClientSession(headers=headers, connector=connector)
        return self._session

    # --- plumbing --------------------------------------------------------------------------------

    object_path = staticmethod(object_path)

    def _unreachable(self, err: BaseException, *, server: str, seconds: float | None = None) -> ServiceUnavailable:
        text = str(err) or err.__class__.__name__
        if isinstance(err, TimeoutError):
            text = f"no answer within {self.timeout if seconds is None else seconds:g}s"
        elif isinstance(err, aiohttp.ClientConnectorCertificateError):
            reason = getattr(err.certificate_error, "verify_message", "") or str(err.certificate_error)
            trust = f"the CA {self.ca}" if self.ca else "the system's CAs (give the cluster CA with --ca or CPCTL_CA)"
            text = f"TLS certificate verification failed ({reason}) against {trust}"
        elif isinstance(err, aiohttp.ClientSSLError):
            text = f"TLS handshake failed ({getattr(err, 'strerror', None) or err.__class__.__name__}); " \
                   "is the server's scheme (http/https) right?"
        error = ServiceUnavailable(f"cannot reach the server at {server}: {text}")
        self._noted(error)
        return error

    def _noted(self, err: CPError) -> CPError:
        if self.on_error is not None:
            self.on_error(err)
        return err

    def _fails_over(self, code: int) -> bool:
        """A 503 (that server's store is unreachable) sends the call to the next server, if any."""
        return code == 503 and len(self.servers) > 1

    _none_answered = staticmethod(none_answered)

    async def request(self, method: str, path: str, *, params: dict[str, str] | None = None, body: Any = None,
                      content_type: str = JSON, timeout: float | None = None, idempotent: bool | None = None) -> Any:
        """One request; the decoded JSON answer, or the server's error as a CPError. Each server
        is tried once at most, for ``timeout`` seconds (default: the client's) each."""
        data = None
        headers: dict[str, str] = {}
        if body is not None:
            data = json.dumps(body, separators=(",", ":")).encode()
            headers["Content-Type"] = content_type
        resend = method in IDEMPOTENT_METHODS if idempotent is None else idempotent
        seconds = self.timeout if timeout is None else timeout
        failures: list[CPError] = []
        for server in self.servers.attempts():
            url = server + path
            try:
                async with self.session().request(
                    method, url, params=params, data=data, headers=headers,
                    timeout=aiohttp.ClientTimeout(total=seconds),
                ) as resp:
                    code, raw = resp.status, await resp.read()
            except UNREACHABLE as err:
                failures.append(self._unreachable(err, server=server, seconds=seconds))
                self.servers.failed(server)
                if resend or isinstance(err, aiohttp.ClientConnectorError):  # never connected: not sent
                    continue
                raise failures[-1] from err
            if code >= 400:
                error = self._noted(error_from_response(code, raw, url))
                if self._fails_over(code):
                    failures.append(error)
                    self.servers.failed(server)
                    continue
                self.servers.answered(server)
                raise error
            self.servers.answered(server)
            return self._decode(raw, server=server, what=f"{method} {path}")
        raise self._none_answered(failures)

    _decode = staticmethod(decode_body)
    _query = staticmethod(list_query)

    # --- objects ---------------------------------------------------------------------------------

    async def list(self, resource: str, *, label_selector: str | None = None, field_selector: str | None = None,
                   limit: int = 0, continue_token: str | None = None) -> dict[str, Any]:
        """One page of ``resource``: the ``<Kind>List`` object (``metadata.continue`` when more)."""
        params = self._query(
            label_selector=label_selector, field_selector=field_selector, limit=limit, continue_token=continue_token
        )
        result: dict[str, Any] = await self.request("GET", self.object_path(resource), params=params)
        return result

    async def list_all(self, resource: str, *, label_selector: str | None = None, field_selector: str | None = None,
                       page_size: int = DEFAULT_PAGE) -> tuple[ObjectList, str]:
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
        result: dict[str, Any] = await self.request(
            "PUT", self.object_path("units", name, "scale"), body=scale_body(name, replicas)
        )
        return result

    async def heartbeat(self, machine: str, body: dict[str, Any], *, timeout: float | None = None) -> dict[str, Any]:
        """The agent's heartbeat: ``{"machine": ..., "leaseTTL": ..., "lease": ...}``. Idempotent
        (it refreshes a lease), so it goes to the next server after any failure; ``timeout`` bounds
        each server tried."""
        result: dict[str, Any] = await self.request(
            "POST", self.object_path("machines", machine, "heartbeat"), body=body, timeout=timeout, idempotent=True,
        )
        return result

    async def version(self) -> dict[str, Any]:
        """``GET /version``: ``{"version": ...}``."""
        result: dict[str, Any] = await self.request("GET", "/version")
        return result

    # --- streams ---------------------------------------------------------------------------------

    async def _open_stream(
        self, path: str, params: dict[str, str], timeout: aiohttp.ClientTimeout
    ) -> tuple[aiohttp.ClientResponse, str]:
        """A GET whose body the caller streams, from the first server that answers it (the
        caller closes the response); an error answer is raised, a 503 tries the next server."""
        failures: list[CPError] = []
        for server in self.servers.attempts():
            url = server + path
            try:
                resp = await self.session().get(url, params=params, timeout=timeout)
                if resp.status < 400:
                    self.servers.answered(server)
                    return resp, server
                try:
                    error = self._noted(error_from_response(resp.status, await resp.read(), url))
                finally:
                    resp.close()
            except UNREACHABLE as err:
                failures.append(self._unreachable(err, server=server))
                self.servers.failed(server)
                continue
            if not self._fails_over(resp.status):
                self.servers.answered(server)
                raise error
            failures.append(error)
            self.servers.failed(server)
        raise self._none_answered(failures)

    async def watch(self, resource: str, *, resource_version: str | int | None, label_selector: str | None = None,
                    field_selector: str | None = None, timeout_seconds: float | None = None,
                    read_timeout: float | None = None) -> AsyncIterator[dict[str, Any]]:
        """The watch events after ``resource_version`` (``{"type", "object"}``, BOOKMARKs included,
        so a caller can remember the latest revision). Ends when the server ends the stream
        (``timeout_seconds``); raises ``Gone`` on 410 or an ERROR event with code 410, and the
        matching CPError for any other ERROR event. A stream that breaks, or stays silent for
        ``read_timeout`` seconds (the server sends BOOKMARKs), is a ServiceUnavailable, and its
        server is asked last from then on."""
        params = self._query(label_selector=label_selector, field_selector=field_selector)
        params["watch"] = "1"
        if resource_version not in (None, ""):
            params["resourceVersion"] = str(resource_version)
        if timeout_seconds:
            params["timeoutSeconds"] = f"{timeout_seconds:g}"
        timeout = aiohttp.ClientTimeout(total=None, connect=self.timeout, sock_connect=self.timeout,
                                        sock_read=read_timeout)
        resp, server = await self._open_stream(self.object_path(resource), params, timeout)
        try:
            buffer = b""
            async for chunk in resp.content.iter_any():
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        yield watch_event(line, server=server)
            if buffer.strip():
                yield watch_event(buffer, server=server)
        except UNREACHABLE as err:
            self.servers.failed(server)
            raise self._unreachable(err, server=server, seconds=read_timeout) from err
        finally:
            resp.close()

    async def logs(self, instance: str, *, follow: bool = False, tail: int | None = None) -> AsyncIterator[bytes]:
        """The instance's container output, as the agent sends it (proxied by the API server)."""
        params: dict[str, str] = {}
        if follow:
            params["follow"] = "1"
        if tail is not None:
            params["tail"] = str(tail)
        total = None if follow else max(self.timeout, 60.0)
        timeout = aiohttp.ClientTimeout(total=total, connect=self.timeout, sock_connect=self.timeout)
        resp, server = await self._open_stream(self.object_path("instances", instance, "log"), params, timeout)
        try:
            async for chunk in resp.content.iter_any():
                yield chunk
        except UNREACHABLE as err:  # not resumed elsewhere: the output so far would repeat
            self.servers.failed(server)
            raise self._unreachable(err, server=server, seconds=total) from err
        finally:
            resp.close()
