"""An in-memory Store with etcd's semantics, for pure tests and scale simulations.

It keeps what the control plane relies on from etcd -- one global revision bumped by
every write, per-key create/mod revisions, compare-and-swap, leases whose expiry deletes
their keys, and watches that replay history from an older revision until it is compacted
-- so code tested against it behaves the same on etcd (the contract suite checks both).

Time is injectable: leases expire against ``clock`` (``time.monotonic`` by default) when
``expire_leases()`` runs. Tests with a fake clock call it themselves; inside an event loop
a background task also calls it every ``reap_interval`` seconds (``None`` disables that).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field, replace

from controlplane.errors import AlreadyExists, BadRequest, Conflict, Gone, KeysExist, NotFound
from controlplane.store.base import KV, WatchEvent


@dataclass
class _Lease:
    ttl: int
    deadline: float
    keys: set[str] = field(default_factory=set)


class _Watcher:
    """One open watch: events under ``prefix`` are queued until the watcher's generator reads them."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.queue: asyncio.Queue[WatchEvent] = asyncio.Queue()


class MemoryStore:
    """The Store protocol in one process's memory (see the module docstring)."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        reap_interval: float | None = 0.2,
    ) -> None:
        self._clock = clock
        self._reap_interval = reap_interval
        self._data: dict[str, KV] = {}
        # etcd starts at revision 1 with an empty keyspace; mirror that.
        self._revision = 1
        self._compacted = 0
        self._history: list[WatchEvent] = []
        self._watchers: set[_Watcher] = set()
        self._leases: dict[int, _Lease] = {}
        self._lease_ids = itertools.count(0x1000)
        self._reaper: asyncio.Task[None] | None = None
        self._closed = False

    # -- reads ---------------------------------------------------------------------------

    async def get(self, key: str) -> KV | None:
        self._ensure_reaper()
        return self._data.get(key)

    async def range(
        self, prefix: str, *, start_after: str | None = None, limit: int = 0
    ) -> tuple[list[KV], int]:
        self._ensure_reaper()
        keys = sorted(
            k for k in self._data if k.startswith(prefix) and (start_after is None or k > start_after)
        )
        if limit > 0:
            keys = keys[:limit]
        return [self._data[k] for k in keys], self._revision

    async def revision(self) -> int:
        self._ensure_reaper()
        return self._revision

    # -- writes --------------------------------------------------------------------------

    async def create(self, key: str, value: bytes, *, lease: int = 0) -> int:
        self._ensure_reaper()
        if key in self._data:
            raise AlreadyExists(f"key {key!r} already exists")
        self._check_lease(lease)
        return self._write(key, value, lease)

    async def create_many(self, items: list[tuple[str, bytes]]) -> int:
        self._ensure_reaper()
        existing = [key for key, _ in items if key in self._data]
        if existing:
            raise KeysExist(f"key {existing[0]!r} already exists", keys=tuple(existing))
        if not items:
            return self._revision
        self._revision += 1  # one transaction: every key gets its revision, as in etcd
        for key, value in items:
            self._write(key, value, 0, revision=self._revision)
        return self._revision

    async def update(self, key: str, value: bytes, *, expected_revision: int, lease: int = 0,
                     also_put: tuple[tuple[str, bytes], ...] = ()) -> int:
        self._ensure_reaper()
        current = self._data.get(key)
        if current is None:
            raise NotFound(f"key {key!r} not found")
        if current.mod_revision != expected_revision:
            raise Conflict(
                f"key {key!r} is at revision {current.mod_revision}, not {expected_revision}"
            )
        self._check_lease(lease)
        revision = self._write(key, value, lease)
        for extra_key, extra_value in also_put:  # etcd gives them the same revision; close enough here
            self._write(extra_key, extra_value, 0)
        return revision

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        self._ensure_reaper()
        self._check_lease(lease)
        return self._write(key, value, lease)

    async def delete(self, key: str, *, expected_revision: int = 0) -> KV:
        self._ensure_reaper()
        current = self._data.get(key)
        if current is None:
            raise NotFound(f"key {key!r} not found")
        if expected_revision and current.mod_revision != expected_revision:
            raise Conflict(
                f"key {key!r} is at revision {current.mod_revision}, not {expected_revision}"
            )
        self._revision += 1
        self._remove(current, self._revision)
        return current

    # -- leases --------------------------------------------------------------------------

    async def grant_lease(self, ttl: int) -> int:
        self._ensure_reaper()
        if ttl <= 0:
            raise BadRequest(f"lease TTL must be positive, got {ttl}")
        lease_id = next(self._lease_ids)
        self._leases[lease_id] = _Lease(ttl=ttl, deadline=self._clock() + ttl)
        return lease_id

    async def refresh_lease(self, lease_id: int, *, bulk: bool = False) -> int:
        self._ensure_reaper()
        lease = self._live_lease(lease_id)
        lease.deadline = self._clock() + lease.ttl
        return lease.ttl

    async def revoke_lease(self, lease_id: int) -> None:
        self._ensure_reaper()
        self._live_lease(lease_id)
        self._drop_lease(lease_id)

    def expire_leases(self) -> list[int]:
        """Revoke every lease whose deadline has passed; returns their ids."""
        now = self._clock()
        expired = [lid for lid, lease in self._leases.items() if lease.deadline <= now]
        for lease_id in expired:
            self._drop_lease(lease_id)
        return expired

    # -- history -------------------------------------------------------------------------

    async def compact(self, revision: int) -> None:
        """Forget history before ``revision``; compacting an already compacted revision is a no-op."""
        self._ensure_reaper()
        if revision > self._revision:
            raise BadRequest(f"cannot compact to future revision {revision} (current {self._revision})")
        if revision <= self._compacted:
            return
        self._compacted = revision
        self._history = [ev for ev in self._history if ev.kv.mod_revision >= revision]

    async def watch(self, prefix: str, *, start_revision: int) -> AsyncGenerator[WatchEvent, None]:
        """Replays history from ``start_revision`` (0: from the next change), then follows live."""
        self._ensure_reaper()
        if start_revision and start_revision < self._compacted:
            raise Gone(
                f"revision {start_revision} has been compacted (compacted up to {self._compacted})"
            )
        if start_revision <= 0:
            start_revision = self._revision + 1
        # Snapshot the history and register in one step (no await between), so no event is
        # missed or delivered twice.
        backlog = [
            ev for ev in self._history if ev.kv.mod_revision >= start_revision and ev.kv.key.startswith(prefix)
        ]
        watcher = _Watcher(prefix)
        self._watchers.add(watcher)
        try:
            for ev in backlog:
                yield ev
            while True:
                yield await watcher.queue.get()
        finally:
            self._watchers.discard(watcher)

    async def watch_batches(self, prefix: str, *, start_revision: int) -> AsyncGenerator[list[WatchEvent], None]:
        """``watch``'s events, one per list."""
        async with contextlib.aclosing(self.watch(prefix, start_revision=start_revision)) as events:
            async for event in events:
                yield [event]

    async def close(self) -> None:
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None

    # -- internals -----------------------------------------------------------------------

    def _write(self, key: str, value: bytes, lease: int, *, revision: int = 0) -> int:
        """Write at ``revision`` (one already taken for a transaction), else at the next one."""
        if not revision:
            self._revision += 1
        rev = revision or self._revision
        previous = self._data.get(key)
        if previous is not None and previous.lease and previous.lease in self._leases:
            self._leases[previous.lease].keys.discard(key)
        kv = KV(
            key=key,
            value=value,
            create_revision=previous.create_revision if previous else rev,
            mod_revision=rev,
            lease=lease,
        )
        self._data[key] = kv
        if lease:
            self._leases[lease].keys.add(key)
        self._emit(WatchEvent("PUT", kv))
        return rev

    def _remove(self, kv: KV, rev: int) -> None:
        del self._data[kv.key]
        if kv.lease and kv.lease in self._leases:
            self._leases[kv.lease].keys.discard(kv.key)
        self._emit(WatchEvent("DELETE", replace(kv, mod_revision=rev)))

    def _emit(self, event: WatchEvent) -> None:
        self._history.append(event)
        for watcher in self._watchers:
            if event.kv.key.startswith(watcher.prefix):
                watcher.queue.put_nowait(event)

    def _drop_lease(self, lease_id: int) -> None:
        lease = self._leases.pop(lease_id)
        if not lease.keys:
            return
        # Like etcd, all of a lease's keys go in one transaction: one revision.
        self._revision += 1
        for key in sorted(lease.keys):
            kv = self._data.get(key)
            if kv is not None and kv.lease == lease_id:
                self._remove(kv, self._revision)

    def _check_lease(self, lease_id: int) -> None:
        if lease_id:
            self._live_lease(lease_id)

    def _live_lease(self, lease_id: int) -> _Lease:
        lease = self._leases.get(lease_id)
        if lease is not None and lease.deadline <= self._clock():
            self._drop_lease(lease_id)
            lease = None
        if lease is None:
            raise NotFound(f"lease {lease_id:x} not found or expired")
        return lease

    def _ensure_reaper(self) -> None:
        if self._reaper is not None or self._closed or self._reap_interval is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._reaper = loop.create_task(self._reap_forever(self._reap_interval), name="memory-store-reaper")

    async def _reap_forever(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self.expire_leases()
