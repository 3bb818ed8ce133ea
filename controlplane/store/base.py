"""The Store protocol: the few etcd v3 operations the control plane needs.

Two implementations pass one contract suite (tests/integration/test_store_contract.py):
``EtcdStore`` on aetcd, and ``MemoryStore`` for pure tests and scale simulations.
Keys are strings relative to the store's prefix; values are bytes. Revisions are
etcd's: a global counter bumped by every write, and each key's mod revision is the
object's ``resourceVersion``.

Errors: ``AlreadyExists`` (create on an existing key), ``Conflict`` (compare-and-swap
on a stale mod revision), ``NotFound``, ``Gone`` (watch from a compacted revision),
``StoreUnavailable`` (no endpoint answers) -- all from ``controlplane.errors``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal, Protocol


@dataclass(frozen=True)
class KV:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int = 0


@dataclass(frozen=True)
class WatchEvent:
    """One change. For DELETE, ``kv.value`` is the value before deletion (prev_kv) when known,
    and ``kv.mod_revision`` is the revision of the delete."""

    type: Literal["PUT", "DELETE"]
    kv: KV


class Store(Protocol):
    async def get(self, key: str) -> KV | None: ...

    async def range(
        self, prefix: str, *, start_after: str | None = None, limit: int = 0
    ) -> tuple[list[KV], int]:
        """Keys starting with ``prefix`` in key order, after ``start_after`` when given;
        ``limit`` 0 means all. Returns the items and the store revision they were read at."""
        ...

    async def create(self, key: str, value: bytes, *, lease: int = 0) -> int:
        """Write only if the key does not exist; returns the new mod revision. AlreadyExists otherwise."""
        ...

    async def create_many(self, items: list[tuple[str, bytes]]) -> int:
        """Create every key in one transaction, or none: KeysExist (an AlreadyExists naming the keys
        found) if any exists. Every key gets the one revision of the write, which it returns. Callers
        keep batches at most 128 keys (etcd's --max-txn-ops)."""
        ...

    async def update(self, key: str, value: bytes, *, expected_revision: int, lease: int = 0,
                     also_put: tuple[tuple[str, bytes], ...] = ()) -> int:
        """Compare-and-swap on mod revision. NotFound if missing, Conflict if stale. ``also_put`` keys
        (no lease) are written in the same transaction, only when the swap succeeds."""
        ...

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        """Unconditional write; returns the new mod revision."""
        ...

    async def delete(self, key: str, *, expected_revision: int = 0) -> KV:
        """Delete and return the previous KV. NotFound if missing; Conflict if ``expected_revision``
        is set and stale."""
        ...

    def watch(self, prefix: str, *, start_revision: int) -> AsyncIterator[WatchEvent]:
        """Every change under ``prefix`` from ``start_revision`` (inclusive) on, in revision order.
        Resumes by itself after connection errors; raises Gone if ``start_revision`` is compacted."""
        ...

    def watch_batches(self, prefix: str, *, start_revision: int) -> AsyncIterator[list[WatchEvent]]:
        """``watch``'s events in lists, as they arrive together (etcd: one answer of its watch, up to
        a whole transaction's writes), so a consumer of 10,000 bulk creates is not called 10,000 times."""
        ...

    async def grant_lease(self, ttl: int) -> int: ...

    async def refresh_lease(self, lease_id: int, *, bulk: bool = False) -> int:
        """Keep a lease alive once; returns the remaining TTL (0 or NotFound if expired). ``bulk``: one
        of many alike (machine presence), kept apart from the store's own leases (leadership) so a
        flood of them never delays those."""
        ...

    async def revoke_lease(self, lease_id: int) -> None: ...

    async def revision(self) -> int:
        """The current store revision."""
        ...

    async def compact(self, revision: int) -> None: ...

    async def close(self) -> None: ...
