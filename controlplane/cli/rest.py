"""cpctl's REST client: blocking, stdlib only (``http.client``, ``ssl``), so that cpctl starts in a
few tens of milliseconds instead of importing aiohttp (0.13 s) for one request.

It keeps the contract of the async client (controlplane/client.py, still what the agent uses):
the same methods with the same answers; every server error is the matching ``CPError`` rebuilt
from its Status object (controlplane/wire.py); a server that cannot be reached is a
``ServiceUnavailable`` naming it (a failed TLS verification says so, and against which CA).
Several servers (``"URL,URL"``) fail over as there: a server that cannot be reached or answers
503 hands the call to the next one (controlplane/servers.py orders them); a request that may
already have been applied (a POST whose connection broke after it was sent) is not sent again.
One keep-alive connection per server; watches and logs get their own and are read line by line
(chunk by chunk for logs).

    with RestClient("http://127.0.0.1:7070", token="admin-token") as api:
        unit = api.get("units", "web")
"""

from __future__ import annotations

import http.client
import json
import select
import ssl
from collections.abc import Iterator, Mapping, Sequence
from http.client import HTTPConnection, HTTPException, HTTPResponse
from types import TracebackType
from typing import Any
from urllib.parse import urlencode, urlsplit

from controlplane.errors import CPError, ServiceUnavailable
from controlplane.servers import ServerList
from controlplane.wire import (
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

ObjectList = list[dict[str, Any]]  # the class defines ``list``, which hides the builtin in its annotations
USER_AGENT = "cpctl"
# what a request that reached the server may fail with: a reset or closed connection, a read
# timeout, an answer that is not HTTP (a bad status line, a body cut short)
BROKEN = (OSError, HTTPException)
# a kept-alive connection the server had closed: nothing of the answer arrived
STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)


class _NotSent(Exception):
    """The connection failed before the request went out (connect, TLS handshake): safe to resend."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


def unreachable_text(err: BaseException, *, ca: str | None, seconds: float | None) -> str:
    """Pure: why a server could not be reached, in words (one line)."""
    if isinstance(err, ssl.SSLCertVerificationError):
        reason = err.verify_message or err.reason or str(err)
        trust = f"the CA {ca}" if ca else "the system's CAs (give the cluster CA with --ca or CPCTL_CA)"
        return f"TLS certificate verification failed ({reason}) against {trust}"
    if isinstance(err, ssl.SSLError):
        return f"TLS handshake failed ({err.reason or err.__class__.__name__}); is the server's scheme (http/https) right?"
    if isinstance(err, TimeoutError):
        return f"no answer within {seconds:g}s" if seconds else "no answer"
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return " ".join(str(err).split()) or err.__class__.__name__


class RestClient:
    """A blocking API client for one server, or several it fails over between. ``timeout`` bounds
    the connect and each read of an ordinary request (per server tried)."""

    def __init__(self, server: str | Sequence[str], *, token: str | None = None, ca: str | None = None,
                 timeout: float = 10.0) -> None:
        self.servers = ServerList(server)
        self.token = token
        self.ca = ca
        self.timeout = timeout
        self._connections: dict[str, HTTPConnection] = {}
        self._ssl_context: ssl.SSLContext | None = None

    @property
    def server(self) -> str:
        """The server asked first (the one that answered last)."""
        return self.servers.current

    def __enter__(self) -> RestClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        for connection in self._connections.values():
            connection.close()
        self._connections.clear()

    # --- plumbing --------------------------------------------------------------------------------

    def _tls(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            try:
                self._ssl_context = ssl.create_default_context(cafile=self.ca)
            except (OSError, ssl.SSLError) as err:
                raise ServiceUnavailable(f"cannot load the CA file {self.ca!r}: {err}") from err
        return self._ssl_context

    def _connect(self, server: str, *, timeout: float | None) -> HTTPConnection:
        """A new, connected connection to ``server`` (``_NotSent`` when that fails)."""
        parts = urlsplit(server)
        try:
            host, port = parts.hostname or "127.0.0.1", parts.port
        except ValueError as err:  # "http://host:abc": one line, like any server not reached
            raise _NotSent(err) from err
        connection: HTTPConnection
        if parts.scheme == "https":
            connection = http.client.HTTPSConnection(host, port, timeout=self.timeout, context=self._tls())
        else:
            connection = HTTPConnection(host, port, timeout=self.timeout)
        try:
            connection.connect()
        except OSError as err:  # refused, no route, DNS, TLS verification, connect timeout
            connection.close()
            raise _NotSent(err) from err
        if connection.sock is not None and timeout != self.timeout:
            connection.sock.settimeout(timeout)  # streams: reads may wait longer than a connect
        return connection

    def _headers(self, content_type: str | None) -> dict[str, str]:
        headers = {"Accept": JSON, "User-Agent": USER_AGENT}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    def _exchange(self, server: str, method: str, target: str, data: bytes | None,
                  headers: dict[str, str]) -> tuple[int, bytes]:
        """One request on the server's keep-alive connection: (status, body). A kept connection the
        server has closed is replaced before use; one it closes as the request goes out is replaced
        once, for a request that may be sent again."""
        for attempt in (1, 2):
            connection = self._connections.pop(server, None)
            if connection is not None and _closed_by_peer(connection):
                connection.close()
                connection = None
            reused = connection is not None
            if connection is None:
                connection = self._connect(server, timeout=self.timeout)
            try:
                connection.request(method, target, body=data, headers=headers)
                response = connection.getresponse()
                raw = response.read()
            except BROKEN as err:
                connection.close()
                if reused and attempt == 1 and method in IDEMPOTENT_METHODS and isinstance(err, STALE):
                    continue
                raise
            if not response.will_close:
                self._connections[server] = connection
            else:
                connection.close()
            return response.status, raw
        raise AssertionError("unreachable")

    def _unreachable(self, err: BaseException, *, server: str, seconds: float | None = None) -> ServiceUnavailable:
        text = unreachable_text(err, ca=self.ca, seconds=self.timeout if seconds is None else seconds)
        return ServiceUnavailable(f"cannot reach the server at {server}: {text}")

    def request(self, method: str, path: str, *, params: Mapping[str, str] | None = None, body: Any = None,
                content_type: str = JSON, idempotent: bool | None = None) -> Any:
        """One request; the decoded JSON answer, or the server's error as a CPError. Each server is
        tried once at most."""
        target = path + ("?" + urlencode(params) if params else "")
        data = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        headers = self._headers(content_type if data is not None else None)
        resend = method in IDEMPOTENT_METHODS if idempotent is None else idempotent
        failures: list[CPError] = []
        for server in self.servers.attempts():
            try:
                code, raw = self._exchange(server, method, target, data, headers)
            except _NotSent as err:  # never sent: the next server may have it
                failures.append(self._unreachable(err.cause, server=server))
                self.servers.failed(server)
                continue
            except BROKEN as err:
                failures.append(self._unreachable(err, server=server))
                self.servers.failed(server)
                if resend:
                    continue
                raise failures[-1] from err
            if code >= 400:
                error = error_from_response(code, raw, server + target)
                if code == 503 and len(self.servers) > 1:
                    failures.append(error)
                    self.servers.failed(server)
                    continue
                self.servers.answered(server)
                raise error
            self.servers.answered(server)
            return decode_body(raw, server=server, what=f"{method} {path}")
        raise none_answered(failures)

    # --- objects ---------------------------------------------------------------------------------

    def list(self, resource: str, *, label_selector: str | None = None, field_selector: str | None = None,
             limit: int = 0, continue_token: str | None = None) -> dict[str, Any]:
        """One page of ``resource``: the ``<Kind>List`` object (``metadata.continue`` when more)."""
        params = list_query(label_selector=label_selector, field_selector=field_selector, limit=limit,
                            continue_token=continue_token)
        result: dict[str, Any] = self.request("GET", object_path(resource), params=params)
        return result

    def list_all(self, resource: str, *, label_selector: str | None = None, field_selector: str | None = None,
                 page_size: int = DEFAULT_PAGE) -> tuple[ObjectList, str]:
        """Every matching object, following ``continue`` tokens, and the first page's resourceVersion."""
        items: ObjectList = []
        token: str | None = None
        revision = ""
        while True:
            page = self.list(resource, label_selector=label_selector, field_selector=field_selector,
                             limit=page_size, continue_token=token)
            items.extend(page.get("items") or [])
            meta = page.get("metadata") or {}
            revision = revision or str(meta.get("resourceVersion") or "")
            token = meta.get("continue") or None
            if not token:
                return items, revision

    def get(self, resource: str, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", object_path(resource, name))
        return result

    def create(self, resource: str, obj: Mapping[str, Any], *, dry_run: bool = False) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", object_path(resource), body=obj, params=_dry(dry_run))
        return result

    def replace(self, resource: str, name: str, obj: Mapping[str, Any], *, dry_run: bool = False) -> dict[str, Any]:
        result: dict[str, Any] = self.request("PUT", object_path(resource, name), body=obj, params=_dry(dry_run))
        return result

    def patch(self, resource: str, name: str, patch: dict[str, Any], *, dry_run: bool = False) -> dict[str, Any]:
        """An RFC 7386 merge patch (``None`` values delete keys)."""
        result: dict[str, Any] = self.request("PATCH", object_path(resource, name), body=patch,
                                              content_type=MERGE_PATCH, params=_dry(dry_run))
        return result

    def delete(self, resource: str, name: str, *, dry_run: bool = False) -> dict[str, Any]:
        result: dict[str, Any] = self.request("DELETE", object_path(resource, name), params=_dry(dry_run))
        return result

    def put_scale(self, name: str, replicas: int, *, dry_run: bool = False) -> dict[str, Any]:
        result: dict[str, Any] = self.request("PUT", object_path("units", name, "scale"),
                                              body=scale_body(name, replicas), params=_dry(dry_run))
        return result

    def revisions(self, unit: str) -> dict[str, Any]:
        """``GET /api/v1/units/NAME/revisions``: the unit's rollout history (UnitRevisionList)."""
        result: dict[str, Any] = self.request("GET", object_path("units", unit, "revisions"))
        return result

    def version(self) -> dict[str, Any]:
        """``GET /version``: ``{"version": ...}``."""
        result: dict[str, Any] = self.request("GET", "/version")
        return result

    # --- streams ---------------------------------------------------------------------------------

    def _open_stream(self, path: str, params: Mapping[str, str], *, read_timeout: float | None,
                     body: Any = None) -> tuple[HTTPConnection, HTTPResponse, str]:
        """A GET (a POST of ``body``) whose answer the caller streams, on a connection of its own, from
        the first server that answers it (the caller closes the connection); an error answer is raised,
        a 503 tries the next. A POST whose connection broke once sent is not sent again."""
        target = path + ("?" + urlencode(params) if params else "")
        data = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        method = "GET" if data is None else "POST"
        failures: list[CPError] = []
        for server in self.servers.attempts():
            try:
                connection = self._connect(server, timeout=read_timeout)
                connection.request(method, target, body=data, headers=self._headers(None if data is None else JSON))
                response = connection.getresponse()
            except _NotSent as err:
                failures.append(self._unreachable(err.cause, server=server))
                self.servers.failed(server)
                continue
            except BROKEN as err:
                connection.close()
                failures.append(self._unreachable(err, server=server, seconds=read_timeout))
                self.servers.failed(server)
                if data is not None:
                    raise failures[-1] from err
                continue
            if response.status < 400:
                self.servers.answered(server)
                return connection, response, server
            error = error_from_response(response.status, response.read(), server + target)
            connection.close()
            if not (response.status == 503 and len(self.servers) > 1):
                self.servers.answered(server)
                raise error
            failures.append(error)
            self.servers.failed(server)
        raise none_answered(failures)

    def watch(self, resource: str, *, resource_version: str | int | None, label_selector: str | None = None,
              field_selector: str | None = None, timeout_seconds: float | None = None,
              read_timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """The watch events after ``resource_version`` (BOOKMARKs included), one per line as the server
        writes them. Ends when the server ends the stream (``timeout_seconds``); raises ``Gone`` on 410
        (an answer or an ERROR event), the matching CPError for any other ERROR event, and
        ServiceUnavailable when the stream breaks or stays silent for ``read_timeout`` seconds."""
        params = list_query(label_selector=label_selector, field_selector=field_selector)
        params["watch"] = "1"
        if resource_version not in (None, ""):
            params["resourceVersion"] = str(resource_version)
        if timeout_seconds:
            params["timeoutSeconds"] = f"{timeout_seconds:g}"
        connection, response, server = self._open_stream(object_path(resource), params, read_timeout=read_timeout)
        try:
            while True:
                try:
                    line = response.readline()
                except BROKEN as err:
                    self.servers.failed(server)
                    raise self._unreachable(err, server=server, seconds=read_timeout) from err
                if not line:
                    return
                if line.strip():
                    yield watch_event(line, server=server)
        finally:
            connection.close()

    def exec(self, instance: str, body: dict[str, Any]) -> Iterator[bytes]:
        """The answer of ``POST /api/v1/instances/NAME/exec`` in chunks (frames: controlplane/execstream.py)."""
        connection, response, server = self._open_stream(object_path("instances", instance, "exec"), {},
                                                         read_timeout=None, body=body)
        return self._chunks(connection, response, server, read_timeout=None)

    def _chunks(self, connection: HTTPConnection, response: HTTPResponse, server: str, *,
                read_timeout: float | None) -> Iterator[bytes]:
        try:
            while True:
                try:
                    chunk = response.read1(65536)
                except BROKEN as err:  # not resumed elsewhere: it would repeat
                    self.servers.failed(server)
                    raise self._unreachable(err, server=server, seconds=read_timeout) from err
                if not chunk:
                    return
                yield chunk
        finally:
            connection.close()

    def logs(self, instance: str, *, follow: bool = False, tail: int | None = None) -> Iterator[bytes]:
        """The instance's container output in chunks, as the agent sends it (proxied by the API server)."""
        params: dict[str, str] = {}
        if follow:
            params["follow"] = "1"
        if tail is not None:
            params["tail"] = str(tail)
        read_timeout = None if follow else max(self.timeout, 60.0)
        connection, response, server = self._open_stream(object_path("instances", instance, "log"), params,
                                                         read_timeout=read_timeout)
        yield from self._chunks(connection, response, server, read_timeout=read_timeout)


def _dry(dry_run: bool) -> dict[str, str] | None:
    """The query of a write: ``?dryRun=All`` (the server validates and answers, stores nothing)."""
    return {"dryRun": "All"} if dry_run else None


def _closed_by_peer(connection: HTTPConnection) -> bool:
    """A kept connection with something to read before we asked: the server's close (EOF)."""
    if connection.sock is None:
        return True
    try:
        readable, _, _ = select.select([connection.sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)
