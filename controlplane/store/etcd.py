"""The production Store: etcd v3 through aetcd, with the failover aetcd lacks.

aetcd talks to one host. This module keeps one aetcd client per endpoint and, when the
endpoint in use stops answering (gRPC UNAVAILABLE / DEADLINE_EXCEEDED / CANCELLED), moves
to the next one and retries the operation, until every endpoint has been tried for
``timeout`` seconds; then it raises ``StoreUnavailable``.

Retried writes and ambiguity. A write whose answer was lost may have been applied. ``put``
is simply repeated (same value, one extra revision). ``create`` and ``update`` are
compare-and-swap transactions, so a retry can never apply twice; when a *retried* attempt
fails its comparison but finds the key holding exactly our value and lease, we take it as
our own earlier attempt having landed and return that key's mod revision instead of
raising AlreadyExists / Conflict. A retried ``delete`` that finds the key gone raises
NotFound (we cannot tell our delete from someone else's; the caller sees a 404 for a delete
that did happen -- Kubernetes behaves the same).

Watches resume from the last delivered revision + 1 after a stream error, on the next
endpoint if needed, so a failover neither loses nor repeats events; compaction past that
revision raises ``Gone``. Every key lives under ``prefix`` ("/cp" + "units/web" ->
"/cp/units/web"), so several clusters and test runs can share one etcd.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aetcd
import grpc
from aetcd import rpc
from aetcd.utils import prefix_range_end

from controlplane.errors import (
    AlreadyExists,
    BadRequest,
    Conflict,
    Gone,
    NotFound,
    StoreUnavailable,
)
from controlplane.store.base import KV, WatchEvent

log = logging.getLogger(__name__)

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


def _rpc_error(exc: BaseException) -> grpc.aio.AioRpcError | None:
    """The gRPC error behind an aetcd error, if any."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, grpc.aio.AioRpcError):
            return seen
        seen = seen.__cause__
    return None


def _is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, aetcd.ConnectionFailedError | aetcd.ConnectionTimeoutError | asyncio.TimeoutError):
        return True
    if isinstance(exc, aetcd.WatchTimeoutError):
        return True
    err = _rpc_error(exc)
    if err is not None:
        return err.code() in _RETRYABLE_CODES
    # aetcd wraps a raw AioRpcError delivered to a watch as ClientError(str(error)).
    return isinstance(exc, aetcd.ClientError) and any(
        code.name in str(exc) for code in _RETRYABLE_CODES
    )


def _is_not_found(exc: BaseException) -> bool:
    err = _rpc_error(exc)
    if err is not None and err.code() == grpc.StatusCode.NOT_FOUND:
        return True
    return "not found" in str(exc)


class EtcdStore:
    """The Store protocol on an etcd v3 cluster (see the module docstring)."""

    def __init__(self, endpoints: list[str], *, prefix: str = "/cp", timeout: float = 5.0) -> None:
        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        self.endpoints = [parse_endpoint(e) for e in endpoints]
        self.prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
        self.timeout = timeout
        self._root = (self.prefix + "/").encode()
        self._clients: list[aetcd.Client | None] = [None] * len(self.endpoints)
        self._current = 0
        self._closed = False

    @classmethod
    async def open(
        cls,
        endpoints: list[str],
        *,
        prefix: str = "/cp",
        timeout: float = 5.0,  # noqa: ASYNC109 -- the per-request timeout the store keeps
    ) -> EtcdStore:
        """Build a store and check that some endpoint answers (StoreUnavailable otherwise)."""
        store = cls(endpoints, prefix=prefix, timeout=timeout)
        await store.connect()
        return store

    async def connect(self) -> None:
        """Check that some endpoint answers; raises StoreUnavailable when none does."""
        await self.revision()

    @property
    def current_endpoint(self) -> str:
        """``host:port`` of the endpoint operations go to now (tests kill exactly that one)."""
        host, port = self.endpoints[self._current]
        return f"{host}:{port}"

    # -- keys ----------------------------------------------------------------------------

    def _full(self, key: str) -> bytes:
        return self._root + key.encode()

    def _relative(self, key: bytes) -> str:
        return key[len(self._root):].decode()

    def _kv(self, kv: Any) -> KV:
        return KV(
            key=self._relative(kv.key),
            value=bytes(kv.value),
            create_revision=kv.create_revision,
            mod_revision=kv.mod_revision,
            lease=kv.lease,
        )

    # -- failover ------------------------------------------------------------------------

    def _client(self, index: int) -> aetcd.Client:
        client = self._clients[index]
        if client is None:
            host, port = self.endpoints[index]
            client = aetcd.Client(
                host=host, port=port, timeout=self.timeout, options=dict(_CHANNEL_OPTIONS)
            )
            self._clients[index] = client
        return client

    def _failed(self, index: int, exc: BaseException) -> None:
        """Move on from endpoint ``index`` (unless another task already did)."""
        if index == self._current and len(self.endpoints) > 1:
            self._current = (index + 1) % len(self.endpoints)
            host, port = self.endpoints[index]
            new_host, new_port = self.endpoints[self._current]
            log.warning(
                "etcd endpoint %s:%d failed (%s); switching to %s:%d",
                host, port, _describe(exc), new_host, new_port,
            )

    async def _call(self, op: Callable[[aetcd.Client, bool], Awaitable[T]]) -> T:
        """Run ``op(client, retrying)``, failing over between endpoints on connection errors."""
        if self._closed:
            raise StoreUnavailable("the etcd store is closed")
        deadline = time.monotonic() + self.timeout
        retrying = False
        tried: set[int] = set()
        delay = 0.05
        while True:
            index = self._current
            try:
                return await op(self._client(index), retrying)
            except Exception as exc:
                if not _is_retryable(exc):
                    raise
                tried.add(index)
                self._failed(index, exc)
                if len(tried) >= len(self.endpoints) and time.monotonic() >= deadline:
                    raise StoreUnavailable(f"etcd unavailable at {self._describe_endpoints()}: "
                                           f"{_describe(exc)}") from exc
                retrying = True
                if len(tried) >= len(self.endpoints):
                    # Every endpoint failed once: wait a little (leader election, restarts).
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 0.5)

    def _describe_endpoints(self) -> str:
        return ",".join(f"{h}:{p}" for h, p in self.endpoints)

    # -- reads ---------------------------------------------------------------------------

    async def get(self, key: str) -> KV | None:
        full = self._full(key)

        async def op(client: aetcd.Client, retrying: bool) -> KV | None:
            got = await client.get(full)
            return None if got is None else self._kv(got)

        return await self._call(op)

    async def range(
        self, prefix: str, *, start_after: str | None = None, limit: int = 0
    ) -> tuple[list[KV], int]:
        start = self._full(prefix)
        end = prefix_range_end(start)
        if start_after is not None:
            start = max(start, self._full(start_after) + b"\0")
        request = rpc.RangeRequest(
            key=start,
            range_end=end,
            limit=max(limit, 0),
            sort_order=rpc.RangeRequest.ASCEND,
            sort_target=rpc.RangeRequest.KEY,
        )

        async def op(client: aetcd.Client, retrying: bool) -> tuple[list[KV], int]:
            await client.connect()
            try:
                resp = await client.kvstub.Range(request, timeout=self.timeout, metadata=client.metadata)
            except grpc.aio.AioRpcError as exc:
                raise aetcd.ClientError(exc.details()) from exc
            return [self._kv(kv) for kv in resp.kvs], resp.header.revision

        return await self._call(op)

    async def revision(self) -> int:
        probe = self._full("")

        async def op(client: aetcd.Client, retrying: bool) -> int:
            await client.connect()
            request = rpc.RangeRequest(key=probe, count_only=True)
            try:
                resp = await client.kvstub.Range(request, timeout=self.timeout, metadata=client.metadata)
            except grpc.aio.AioRpcError as exc:
                raise aetcd.ClientError(exc.details()) from exc
            return int(resp.header.revision)

        return await self._call(op)

    # -- writes --------------------------------------------------------------------------

    async def create(self, key: str, value: bytes, *, lease: int = 0) -> int:
        full = self._full(key)

        async def op(client: aetcd.Client, retrying: bool) -> int:
            tx = client.transactions
            ok, responses = await self._txn(
                client,
                compare=[tx.create(full) == 0],
                success=[aetcd_put(full, value, lease)],
                failure=[aetcd_get(full)],
            )
            if ok:
                return int(responses[0].response_put.header.revision)
            existing = _first_kv(responses)
            if retrying and existing is not None and existing.value == value and existing.lease == lease:
                return int(existing.mod_revision)
            raise AlreadyExists(f"key {key!r} already exists")

        return await self._call(op)

    async def create_many(self, items: list[tuple[str, bytes]]) -> int:
        fulls = [(self._full(key), value) for key, value in items]
        if not fulls:
            return await self.revision()

        async def op(client: aetcd.Client, retrying: bool) -> int:
            tx = client.transactions
            ok, responses = await self._txn(
                client,
                compare=[tx.create(full) == 0 for full, _ in fulls],
                success=[aetcd_put(full, value, 0) for full, value in fulls],
                failure=[aetcd_get(full) for full, _ in fulls],
            )
            if ok:
                return int(responses[0].response_put.header.revision)
            found = [_first_kv([r]) for r in responses]
            # a retry after a failover finds our own earlier write: every key holds our value
            if retrying and all(kv is not None and kv.value == value for kv, (_, value) in zip(found, fulls, strict=True)):
                return max(int(kv.mod_revision) for kv in found)
            taken = next((key for kv, (key, _) in zip(found, items, strict=True) if kv is not None), items[0][0])
            raise AlreadyExists(f"key {taken!r} already exists")

        return await self._call(op)

    async def update(self, key: str, value: bytes, *, expected_revision: int, lease: int = 0) -> int:
        full = self._full(key)

        async def op(client: aetcd.Client, retrying: bool) -> int:
            tx = client.transactions
            ok, responses = await self._txn(
                client,
                compare=[tx.mod(full) == expected_revision],
                success=[aetcd_put(full, value, lease)],
                failure=[aetcd_get(full)],
            )
            if ok:
                return int(responses[0].response_put.header.revision)
            existing = _first_kv(responses)
            if existing is None:
                raise NotFound(f"key {key!r} not found")
            if (
                retrying
                and existing.value == value
                and existing.lease == lease
                and existing.mod_revision > expected_revision
            ):
                return int(existing.mod_revision)
            raise Conflict(f"key {key!r} is at revision {existing.mod_revision}, not {expected_revision}")

        return await self._call(op)

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        full = self._full(key)

        async def op(client: aetcd.Client, retrying: bool) -> int:
            try:
                result = await client.put(full, value, lease=lease or None)
            except aetcd.ClientError as exc:
                if _is_not_found(exc):
                    raise NotFound(f"lease {lease:x} not found") from exc
                raise
            return int(result.header.revision)

        return await self._call(op)

    async def delete(self, key: str, *, expected_revision: int = 0) -> KV:
        full = self._full(key)

        async def op(client: aetcd.Client, retrying: bool) -> KV:
            tx = client.transactions
            compare = [tx.mod(full) == expected_revision] if expected_revision else [tx.create(full) > 0]
            ok, responses = await self._txn(
                client,
                compare=compare,
                success=[aetcd.transactions.Delete(full, prev_kv=True)],
                failure=[aetcd_get(full)],
            )
            if ok:
                prev = responses[0].response_delete_range.prev_kvs
                if prev:
                    return self._kv(prev[0])
                raise NotFound(f"key {key!r} not found")
            existing = _first_kv(responses)
            if existing is None:
                raise NotFound(f"key {key!r} not found")
            raise Conflict(f"key {key!r} is at revision {existing.mod_revision}, not {expected_revision}")

        return await self._call(op)

    async def _txn(
        self, client: aetcd.Client, *, compare: list[Any], success: list[Any], failure: list[Any]
    ) -> tuple[bool, list[Any]]:
        try:
            ok, responses = await client.transaction(compare=compare, success=success, failure=failure)
        except aetcd.ClientError as exc:
            if _is_not_found(exc):
                raise NotFound(f"lease not found: {exc}") from exc
            raise
        return bool(ok), list(responses)

    # -- leases --------------------------------------------------------------------------

    async def grant_lease(self, ttl: int) -> int:
        if ttl <= 0:
            raise BadRequest(f"lease TTL must be positive, got {ttl}")

        async def op(client: aetcd.Client, retrying: bool) -> int:
            lease = await client.lease(ttl)
            return int(lease.id)

        return await self._call(op)

    async def refresh_lease(self, lease_id: int) -> int:
        async def op(client: aetcd.Client, retrying: bool) -> int:
            try:
                reply = await client.refresh_lease(lease_id)
            except aetcd.ClientError as exc:
                if _is_not_found(exc):
                    raise NotFound(f"lease {lease_id:x} not found") from exc
                raise
            if reply is None or reply.TTL <= 0:
                raise NotFound(f"lease {lease_id:x} not found or expired")
            return int(reply.TTL)

        return await self._call(op)

    async def revoke_lease(self, lease_id: int) -> None:
        async def op(client: aetcd.Client, retrying: bool) -> None:
            try:
                await client.revoke_lease(lease_id)
            except aetcd.ClientError as exc:
                if _is_not_found(exc):
                    if retrying:
                        return  # our earlier attempt most likely landed
                    raise NotFound(f"lease {lease_id:x} not found") from exc
                raise

        await self._call(op)

    # -- history -------------------------------------------------------------------------

    async def compact(self, revision: int) -> None:
        """Compact history before ``revision``; an already compacted revision is a no-op."""

        async def op(client: aetcd.Client, retrying: bool) -> None:
            try:
                await client.compact(revision, physical=True)
            except aetcd.ClientError as exc:
                err = _rpc_error(exc)
                if err is not None and err.code() == grpc.StatusCode.OUT_OF_RANGE:
                    if "future revision" in (err.details() or ""):
                        raise BadRequest(f"cannot compact to future revision {revision}") from exc
                    return  # already compacted
                raise

        await self._call(op)

    async def watch(self, prefix: str, *, start_revision: int) -> AsyncIterator[WatchEvent]:
        """Every change under ``prefix`` from ``start_revision`` on, across stream errors and failovers."""
        start = self._full(prefix)
        end = prefix_range_end(start)
        next_revision = start_revision if start_revision > 0 else await self.revision() + 1
        failing_since: float | None = None
        tried: set[int] = set()
        while True:
            if self._closed:
                raise StoreUnavailable("the etcd store is closed")
            index = self._current
            client = self._client(index)
            handle: Any = None
            try:
                handle = await client.watch(
                    start, range_end=end, start_revision=next_revision, prev_kv=True
                )
                failing_since = None
                tried.clear()
                async for event in handle:
                    converted = self._event(event)
                    next_revision = converted.kv.mod_revision + 1
                    yield converted
                # The stream ended without an error (the client was closed).
                raise StoreUnavailable("etcd watch stream closed")
            except aetcd.RevisionCompactedError as exc:
                raise Gone(
                    f"revision {next_revision} has been compacted (compacted up to {exc.compacted_revision})"
                ) from exc
            except Exception as exc:
                if not _is_retryable(exc):
                    raise
                now = time.monotonic()
                failing_since = failing_since or now
                tried.add(index)
                self._failed(index, exc)
                if len(tried) >= len(self.endpoints) and now - failing_since >= self.timeout:
                    raise StoreUnavailable(
                        f"etcd watch unavailable at {self._describe_endpoints()}: {_describe(exc)}"
                    ) from exc
                log.info("etcd watch on %r interrupted (%s); resuming from revision %d",
                         prefix, _describe(exc), next_revision)
                if len(tried) >= len(self.endpoints):
                    await asyncio.sleep(0.1)
            finally:
                if handle is not None:
                    try:
                        await handle.cancel()
                    except Exception:  # the stream may already be gone
                        log.debug("cancelling an etcd watch failed", exc_info=True)

    def _event(self, event: Any) -> WatchEvent:
        kv = event.kv
        if event.kind == "DELETE":
            prev = event.prev_kv
            return WatchEvent(
                "DELETE",
                KV(
                    key=self._relative(kv.key),
                    value=bytes(prev.value) if prev is not None else b"",
                    create_revision=prev.create_revision if prev is not None else 0,
                    mod_revision=kv.mod_revision,
                    lease=prev.lease if prev is not None else 0,
                ),
            )
        return WatchEvent("PUT", self._kv(kv))

    async def close(self) -> None:
        self._closed = True
        clients, self._clients = self._clients, [None] * len(self.endpoints)
        for client in clients:
            if client is not None:
                try:
                    await client.close()
                except Exception:
                    log.debug("closing an etcd client failed", exc_info=True)


def aetcd_put(key: bytes, value: bytes, lease: int) -> aetcd.transactions.Put:
    return aetcd.transactions.Put(key, value, lease=lease or None)


def aetcd_get(key: bytes) -> aetcd.transactions.Get:
    return aetcd.transactions.Get(key)


def _first_kv(responses: list[Any]) -> Any:
    """The KeyValue of a transaction whose only failure op was a Get, or None."""
    if responses and isinstance(responses[0], list) and responses[0]:
        return responses[0][0][1]
    return None


def _describe(exc: BaseException) -> str:
    err = _rpc_error(exc)
    if err is not None:
        return f"{err.code().name}: {err.details()}"
    return f"{type(exc).__name__}: {exc}"
