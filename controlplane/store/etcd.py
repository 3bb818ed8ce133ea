"""The production Store: etcd v3 through aetcd, with the failover aetcd lacks.

aetcd talks to one host. ``etcd_failover.EndpointPool`` keeps one aetcd client per endpoint
and, when the endpoint in use stops answering, moves to the next one and retries the
operation, until every endpoint has been tried for ``timeout`` seconds (then
``StoreUnavailable``); this module is the operations on top of it.

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

A secured etcd (``https://`` endpoints, client certificates, etcd users) takes an ``EtcdAccess``
(etcd_access.py); logging in again when a token expires is the pool's job.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from typing import Any

import aetcd
import grpc
from aetcd import rpc
from aetcd.utils import prefix_range_end

from controlplane.errors import (
    AlreadyExists,
    BadRequest,
    Conflict,
    KeysExist,
    NotFound,
)
from controlplane.store.base import KV, WatchEvent
from controlplane.store.etcd_access import EtcdAccess
from controlplane.store.etcd_client import create_all_request, txn_request
from controlplane.store.etcd_failover import (
    EndpointPool,
    is_not_found,
    rpc_error,
)
from controlplane.store.keepalive import KeepaliveStreams

# machine presence renewals side by side (a burst of writes holds each renewal back: keepalive.py)
BULK_KEEPALIVE_STREAMS = 16


class EtcdStore:
    """The Store protocol on an etcd v3 cluster (see the module docstring)."""

    def __init__(
        self, endpoints: list[str], *, prefix: str = "/cp", timeout: float = 5.0, access: EtcdAccess | None = None
    ) -> None:
        self._pool = EndpointPool(endpoints, timeout=timeout, access=access)
        self.endpoints = self._pool.endpoints
        self.prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
        self.timeout = timeout
        self._root = (self.prefix + "/").encode()
        self._call = self._pool.call
        # one LeaseKeepAlive stream per endpoint (store/keepalive.py) for this server's own leases, and
        # others for the bulk of machine presence, so 2,000 heartbeats never queue its leadership
        self._keepalives = KeepaliveStreams()
        self._bulk_keepalives = KeepaliveStreams(width=BULK_KEEPALIVE_STREAMS)

    @classmethod
    async def open(
        cls,
        endpoints: list[str],
        *,
        prefix: str = "/cp",
        timeout: float = 5.0,  # noqa: ASYNC109 -- the per-request timeout the store keeps
        access: EtcdAccess | None = None,
    ) -> EtcdStore:
        """Build a store and check that some endpoint answers (StoreUnavailable otherwise)."""
        store = cls(endpoints, prefix=prefix, timeout=timeout, access=access)
        await store.connect()
        return store

    async def connect(self) -> None:
        """Check that some endpoint answers; raises StoreUnavailable when none does."""
        await self.revision()

    @property
    def current_endpoint(self) -> str:
        """``host:port`` of the endpoint operations go to now (tests kill exactly that one)."""
        host, port = self.endpoints[self._pool.current]
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
            reply = await txn_request(client, create_all_request(fulls))
            if reply.succeeded:
                return int(reply.header.revision)
            _, responses = await self._txn(client, compare=[], success=[aetcd_get(full) for full, _ in fulls],
                                           failure=[])
            found = [_first_kv([r]) for r in responses]
            # a retry after a failover finds our own earlier write: all or nothing, and each value is
            # ours alone (it holds a uid), so one key holding its value means it landed
            if retrying:
                ours = [kv for kv, (_, value) in zip(found, fulls, strict=True) if kv is not None and kv.value == value]
                if ours:
                    return int(ours[0].mod_revision)
            taken = tuple(key for kv, (key, _) in zip(found, items, strict=True) if kv is not None)
            raise KeysExist(f"key {(taken or (items[0][0],))[0]!r} already exists", keys=taken)

        return await self._call(op)

    async def update(self, key: str, value: bytes, *, expected_revision: int, lease: int = 0,
                     also_put: tuple[tuple[str, bytes], ...] = ()) -> int:
        full = self._full(key)
        extra = [aetcd_put(self._full(k), v, 0) for k, v in also_put]

        async def op(client: aetcd.Client, retrying: bool) -> int:
            tx = client.transactions
            ok, responses = await self._txn(
                client,
                compare=[tx.mod(full) == expected_revision],
                success=[aetcd_put(full, value, lease), *extra],
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
                if is_not_found(exc):
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
            if is_not_found(exc):
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

    async def refresh_lease(self, lease_id: int, *, bulk: bool = False) -> int:
        streams = self._bulk_keepalives if bulk else self._keepalives

        async def op(client: aetcd.Client, retrying: bool) -> int:
            try:
                reply = await streams.refresh(client, lease_id)
            except aetcd.ClientError as exc:
                if is_not_found(exc):
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
                if is_not_found(exc):
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
                err = rpc_error(exc)
                if err is not None and err.code() == grpc.StatusCode.OUT_OF_RANGE:
                    if "future revision" in (err.details() or ""):
                        raise BadRequest(f"cannot compact to future revision {revision}") from exc
                    return  # already compacted
                raise

        await self._call(op)

    async def watch(self, prefix: str, *, start_revision: int) -> AsyncGenerator[WatchEvent, None]:
        """Every change under ``prefix`` from ``start_revision`` on, across stream errors and failovers."""
        async with contextlib.aclosing(self.watch_batches(prefix, start_revision=start_revision)) as batches:
            async for batch in batches:
                for event in batch:
                    yield event

    async def watch_batches(self, prefix: str, *, start_revision: int) -> AsyncGenerator[list[WatchEvent], None]:
        """``watch``'s events, one list per answer of etcd (up to a whole bulk transaction's)."""
        start = self._full(prefix)
        first = start_revision if start_revision > 0 else await self.revision() + 1
        # aclosing: when our consumer stops, the pool's stream (and its etcd watch) ends now, not at GC
        async with contextlib.aclosing(self._pool.watch(start, prefix_range_end(start), first, what=prefix)) as events:
            async for batch in events:
                yield [self._event(event) for event in batch]

    def _event(self, event: Any) -> WatchEvent:
        """Our WatchEvent from etcd's ``mvccpb.Event`` (an unset prev_kv reads as an empty one)."""
        kv = event.kv
        if event.type == rpc.Event.DELETE:
            prev = event.prev_kv
            return WatchEvent(
                "DELETE",
                KV(key=self._relative(kv.key), value=bytes(prev.value), create_revision=prev.create_revision,
                   mod_revision=kv.mod_revision, lease=prev.lease),
            )
        return WatchEvent("PUT", self._kv(kv))

    async def close(self) -> None:
        self._keepalives.close()
        self._bulk_keepalives.close()
        await self._pool.close()


def aetcd_put(key: bytes, value: bytes, lease: int) -> aetcd.transactions.Put:
    return aetcd.transactions.Put(key, value, lease=lease or None)


def aetcd_get(key: bytes) -> aetcd.transactions.Get:
    return aetcd.transactions.Get(key)


def _first_kv(responses: list[Any]) -> Any:
    """The KeyValue of a transaction whose only failure op was a Get, or None."""
    if responses and isinstance(responses[0], list) and responses[0]:
        return responses[0][0][1]
    return None
