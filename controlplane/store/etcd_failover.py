"""Failover between etcd endpoints, which aetcd (one host per client) lacks.

``EndpointPool`` keeps one aetcd client per endpoint and the index of the one in use. When
that endpoint stops answering (gRPC UNAVAILABLE / DEADLINE_EXCEEDED / CANCELLED, or aetcd's
connection errors), ``call`` moves to the next one and runs the operation again, telling it
that it is a retry (``EtcdStore`` uses that to recognise its own earlier write); once every
endpoint has been tried and ``timeout`` seconds have passed, it raises ``StoreUnavailable``.
``watch`` does the same for a stream: it resumes from the last delivered revision + 1 on the
next endpoint, so a failover neither loses nor repeats events.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aetcd
import grpc

from controlplane.errors import Gone, RequestEntityTooLarge, StoreUnavailable

log = logging.getLogger("controlplane.store.etcd")  # the store's logger: one name for its messages

T = TypeVar("T")

_RETRYABLE_CODES = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
}

# Keepalive pings notice a silently dead peer; short reconnect backoff lets a restarted
# member serve again soon. etcd refuses pings more often than every 5 s.
_CHANNEL_OPTIONS: dict[str, Any] = {
    "grpc.keepalive_time_ms": 10_000,
    "grpc.keepalive_timeout_ms": 5_000,
    "grpc.keepalive_permit_without_calls": 1,
    "grpc.initial_reconnect_backoff_ms": 100,
    "grpc.min_reconnect_backoff_ms": 100,
    "grpc.max_reconnect_backoff_ms": 1_000,
}


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """``http://host:port``, ``host:port`` or ``host`` -> (host, port); port defaults to 2379."""
    endpoint = endpoint.strip()
    if "//" not in endpoint:
        endpoint = "http://" + endpoint
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", ""):
        raise ValueError(f"unsupported etcd endpoint scheme {parts.scheme!r} in {endpoint!r}")
    if not parts.hostname:
        raise ValueError(f"no host in etcd endpoint {endpoint!r}")
    return parts.hostname, parts.port or 2379


def rpc_error(exc: BaseException) -> grpc.aio.AioRpcError | None:
    """The gRPC error behind an aetcd error, if any."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, grpc.aio.AioRpcError):
            return seen
        seen = seen.__cause__
    return None


def is_retryable(exc: BaseException) -> bool:
    """True for errors that say "this endpoint does not answer" (try the next), not "no"."""
    if isinstance(exc, aetcd.ConnectionFailedError | aetcd.ConnectionTimeoutError | asyncio.TimeoutError):
        return True
    if isinstance(exc, aetcd.WatchTimeoutError):
        return True
    err = rpc_error(exc)
    if err is not None:
        return err.code() in _RETRYABLE_CODES
    # aetcd wraps a raw AioRpcError delivered to a watch as ClientError(str(error)).
    return isinstance(exc, aetcd.ClientError) and any(
        code.name in str(exc) for code in _RETRYABLE_CODES
    )


def is_not_found(exc: BaseException) -> bool:
    err = rpc_error(exc)
    if err is not None and err.code() == grpc.StatusCode.NOT_FOUND:
        return True
    return "not found" in str(exc)


def is_too_large(exc: BaseException) -> bool:
    """etcd (or gRPC before it) refused a request for its size: no other endpoint takes it either."""
    text = str(exc)
    return "request is too large" in text or "larger than max" in text


def describe(exc: BaseException) -> str:
    err = rpc_error(exc)
    if err is not None:
        return f"{err.code().name}: {err.details()}"
    return f"{type(exc).__name__}: {exc}"


class EndpointPool:
    """One aetcd client per endpoint (made on first use), the one in use, and moving on from it."""

    def __init__(self, endpoints: list[str], *, timeout: float) -> None:
        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        self.endpoints = [parse_endpoint(e) for e in endpoints]
        self.timeout = timeout
        self.current = 0
        self.closed = False
        self._clients: list[aetcd.Client | None] = [None] * len(self.endpoints)

    def client(self, index: int) -> aetcd.Client:
        client = self._clients[index]
        if client is None:
            host, port = self.endpoints[index]
            client = aetcd.Client(
                host=host, port=port, timeout=self.timeout, options=dict(_CHANNEL_OPTIONS)
            )
            self._clients[index] = client
        return client

    def failed(self, index: int, exc: BaseException) -> None:
        """Move on from endpoint ``index`` (unless another task already did)."""
        if index == self.current and len(self.endpoints) > 1:
            self.current = (index + 1) % len(self.endpoints)
            host, port = self.endpoints[index]
            new_host, new_port = self.endpoints[self.current]
            log.warning(
                "etcd endpoint %s:%d failed (%s); switching to %s:%d",
                host, port, describe(exc), new_host, new_port,
            )

    async def call(self, op: Callable[[aetcd.Client, bool], Awaitable[T]]) -> T:
        """Run ``op(client, retrying)``, failing over between endpoints on connection errors."""
        if self.closed:
            raise StoreUnavailable("the etcd store is closed")
        deadline = time.monotonic() + self.timeout
        retrying = False
        tried: set[int] = set()
        delay = 0.05
        while True:
            index = self.current
            try:
                return await op(self.client(index), retrying)
            except Exception as exc:
                if is_too_large(exc):
                    raise RequestEntityTooLarge(f"etcd refused the write: {describe(exc)}") from exc
                if not is_retryable(exc):
                    raise
                tried.add(index)
                self.failed(index, exc)
                if len(tried) >= len(self.endpoints) and time.monotonic() >= deadline:
                    raise StoreUnavailable(f"etcd unavailable at {self.describe_endpoints()}: "
                                           f"{describe(exc)}") from exc
                retrying = True
                if len(tried) >= len(self.endpoints):
                    # Every endpoint failed once: wait a little (leader election, restarts).
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 0.5)

    async def watch(self, start: bytes, end: bytes, first_revision: int, *, what: str) -> AsyncGenerator[Any, None]:
        """aetcd's events on keys [start, end) from ``first_revision`` on. After a stream error it
        resumes from the last delivered revision + 1, on the next endpoint if need be, so a failover
        neither loses nor repeats events; compaction past that revision raises ``Gone``."""
        next_revision = first_revision
        failing_since: float | None = None
        tried: set[int] = set()
        while True:
            if self.closed:
                raise StoreUnavailable("the etcd store is closed")
            index = self.current
            client = self.client(index)
            handle: Any = None
            try:
                handle = await client.watch(
                    start, range_end=end, start_revision=next_revision, prev_kv=True
                )
                failing_since = None
                tried.clear()
                async for event in handle:
                    next_revision = event.kv.mod_revision + 1
                    yield event
                # The stream ended without an error (the client was closed).
                raise StoreUnavailable("etcd watch stream closed")
            except aetcd.RevisionCompactedError as exc:
                raise Gone(
                    f"revision {next_revision} has been compacted (compacted up to {exc.compacted_revision})"
                ) from exc
            except Exception as exc:
                if not is_retryable(exc):
                    raise
                now = time.monotonic()
                failing_since = failing_since or now
                tried.add(index)
                self.failed(index, exc)
                if len(tried) >= len(self.endpoints) and now - failing_since >= self.timeout:
                    raise StoreUnavailable(
                        f"etcd watch unavailable at {self.describe_endpoints()}: {describe(exc)}"
                    ) from exc
                log.info("etcd watch on %r interrupted (%s); resuming from revision %d",
                         what, describe(exc), next_revision)
                if len(tried) >= len(self.endpoints):
                    await asyncio.sleep(0.1)
            finally:
                if handle is not None:
                    try:
                        await handle.cancel()
                    except Exception:  # the stream may already be gone
                        log.debug("cancelling an etcd watch failed", exc_info=True)

    def describe_endpoints(self) -> str:
        return ",".join(f"{h}:{p}" for h, p in self.endpoints)

    async def close(self) -> None:
        self.closed = True
        clients, self._clients = self._clients, [None] * len(self.endpoints)
        for client in clients:
            if client is not None:
                try:
                    await client.close()
                except Exception:
                    log.debug("closing an etcd client failed", exc_info=True)
