"""The watch cache: one list+watch of etcd per resource, shared by every read and watch.

Kubernetes' apiserver does the same: without it each GET and each of 1,000 watchers would
hit etcd. The cache lists the resource's prefix once, then follows a single store watch
from the listed revision + 1, keeping the current objects and a window of recent events.
Watchers subscribe from a revision: events still in the window are replayed, older
revisions are Gone (410), as in Kubernetes. Each event is encoded to JSON once and the
same bytes go to every watcher.
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import logging
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from controlplane import jsoncodec
from controlplane.errors import Gone, ServiceUnavailable
from controlplane.selectors import field_value, required_field_value
from controlplane.store.base import KV, Store

log = logging.getLogger(__name__)


def decode(kv: KV) -> dict[str, Any]:
    """Decode a stored object and stamp its resourceVersion (etcd's mod revision)."""
    obj: dict[str, Any] = jsoncodec.loads(kv.value)
    obj.setdefault("metadata", {})["resourceVersion"] = str(kv.mod_revision)
    return obj


@dataclass
class CacheEvent:
    revision: int
    type: str  # ADDED, MODIFIED, DELETED
    object: dict[str, Any]
    previous: dict[str, Any] | None = None  # the object before a MODIFIED
    _line: bytes | None = None
    _variants: dict[str, CacheEvent] | None = None

    def as_type(self, type_: str) -> CacheEvent:
        """The same change seen through a selector: ADDED when the object starts matching,
        DELETED when it stops (Kubernetes does the same), each encoded once."""
        if type_ == self.type:
            return self
        if self._variants is None:
            self._variants = {}
        variant = self._variants.get(type_)
        if variant is None:
            variant = self._variants[type_] = CacheEvent(self.revision, type_, self.object)
        return variant

    def seen_by(self, matches: Callable[[dict[str, Any]], bool]) -> CacheEvent | None:
        """What a watcher with this selector should receive, if anything."""
        now = matches(self.object)
        before = self.previous is not None and matches(self.previous)
        if self.type != "MODIFIED":
            return self if now else None
        if now:
            return self if before else self.as_type("ADDED")
        return self.as_type("DELETED") if before else None

    def line(self) -> bytes:
        """The NDJSON line for this event, encoded once and shared by every watcher."""
        if self._line is None:
            self._line = jsoncodec.dumps({"type": self.type, "object": self.object}) + b"\n"
        return self._line


@dataclass(eq=False)
class Subscription:
    queue: asyncio.Queue[CacheEvent | None]
    matches: Callable[[dict[str, Any]], bool]
    closed_reason: str = ""
    cache: WatchCache | None = field(default=None, repr=False)
    indexed: str | None = None  # the INDEXED_FIELD value its selector requires (None: any)

    def close(self) -> None:
        if self.cache is not None:
            self.cache.unsubscribe(self)
            self.cache = None


# Watchers whose selector requires a value here (each agent watches ``spec.machine=<itself>``) are
# offered only the events of objects that have (or had) that value: without the index every event
# was matched against every agent's selector, 2,000 matches per instance change at 2,000 machines.
INDEXED_FIELD = "spec.machine"


class WatchCache:
    """Current objects and recent events of one resource, fed by one store watch."""

    def __init__(self, store: Store, resource: str, *, window: int = 20000, queue_size: int = 10000,
                 group_by: Callable[[dict[str, Any]], Hashable] | None = None,
                 group_field: str | None = None) -> None:
        self.store = store
        # names by group_by(object), kept with the objects: Events by the object they are about, so
        # recording one reads its object's few Events, not all of them (controlplane/events.py).
        # ``group_field`` groups by a field selector path's value instead (instances by spec.machine),
        # and list_names then reads one group for a selector that requires a value there
        if group_field is not None and group_by is None:
            group_by = lambda obj: field_value(obj, group_field)  # noqa: E731
        self.group_by = group_by
        self.group_field = group_field
        self._groups: dict[Hashable, set[str]] = {}
        self.resource = resource
        self.prefix = f"{resource}/"
        self.objects: dict[str, dict[str, Any]] = {}
        self._encoded: dict[str, bytes] = {}
        self._created: dict[str, int] = {}  # name -> create revision of the cached incarnation
        self.events: collections.deque[CacheEvent] = collections.deque(maxlen=window)
        self.revision = 0
        self.oldest_revision = 0  # events after this revision are all in the window
        self.subscribers: set[Subscription] = set()
        self._unindexed: set[Subscription] = set()
        self._by_value: dict[str, set[Subscription]] = {}  # INDEXED_FIELD value -> its watchers
        # in-process listeners (the leader's controllers): called with every event, must not block
        self.listeners: list[Callable[[CacheEvent], None]] = []
        self.queue_size = queue_size
        self.ready = asyncio.Event()
        self._advanced = asyncio.Condition()
        self._gone_waiters = 0  # callers inside wait_gone: only they need ``_advanced`` notified
        # writers waiting for their revision: a heap of (revision, seq, future), resolved in order,
        # so an event wakes only the writers it satisfies (a Condition woke all of them every time)
        self._rev_waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._rev_seq = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._relist()
        self._task = asyncio.create_task(self._follow(), name=f"watchcache-{self.resource}")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        for sub in list(self.subscribers):
            sub.queue.put_nowait(None)
        self.subscribers.clear()
        self._unindexed.clear()
        self._by_value.clear()

    async def _relist(self) -> None:
        items, revision = await self.store.range(self.prefix)
        self.objects = {kv.key[len(self.prefix):]: decode(kv) for kv in items}
        self._created = {kv.key[len(self.prefix):]: kv.create_revision for kv in items}
        self._groups = {}
        for name, obj in self.objects.items():
            self._group(name, None, obj)
        self._encoded = {}
        self.revision = revision
        self.oldest_revision = revision
        self.events.clear()
        self.ready.set()
        self._wake_revision_waiters()

    async def _follow(self) -> None:
        while True:
            try:
                async for batch in self.store.watch_batches(self.prefix, start_revision=self.revision + 1):
                    for event in batch:
                        self._apply(event.type, event.kv)
                    await self._wake_waiters()
            except asyncio.CancelledError:
                raise
            except Gone:
                log.warning("watch cache for %s fell behind a compaction; re-listing", self.resource)
                self._drop_subscribers("the watch cache was re-listed after a compaction")
                await self._relist_with_retry()
            except Exception:
                log.exception("watch cache for %s lost its watch; resuming", self.resource)
                await asyncio.sleep(0.5)

    async def _relist_with_retry(self) -> None:
        while True:
            try:
                await self._relist()
                return
            except Exception:
                log.exception("re-list of %s failed", self.resource)
                await asyncio.sleep(0.5)

    def _drop_subscribers(self, reason: str) -> None:
        for sub in list(self.subscribers):
            sub.closed_reason = reason
            sub.queue.put_nowait(None)
        self.subscribers.clear()
        self._unindexed.clear()
        self._by_value.clear()

    async def _wake_waiters(self) -> None:
        """After a batch of events (``Store.watch_batches``): wake the writers waiting for revisions it reached, and those
        waiting in ``wait_gone`` (their lock and notify cost a few us: only when someone waits)."""
        self._wake_revision_waiters()
        if self._gone_waiters:
            async with self._advanced:
                self._advanced.notify_all()

    def _apply(self, kind: str, kv: KV) -> None:
        name = kv.key[len(self.prefix):]
        self._encoded.pop(name, None)
        before: dict[str, Any] | None = None
        if kind == "PUT":
            obj = decode(kv)
            before = self.objects.get(name)
            type_ = "MODIFIED" if before is not None else "ADDED"
            self.objects[name] = obj
            self._created[name] = kv.create_revision
            self._group(name, before, obj)
        else:
            previous = self.objects.pop(name, None)
            self._created.pop(name, None)
            self._group(name, previous, None)
            if previous is None and kv.value:
                previous = decode(kv)
            if previous is None:
                previous = {"metadata": {"name": name}}
            obj = dict(previous)
            obj["metadata"] = dict(previous.get("metadata") or {}, resourceVersion=str(kv.mod_revision))
            type_ = "DELETED"
        event = CacheEvent(kv.mod_revision, type_, obj, before)
        if len(self.events) == self.events.maxlen and self.events:
            self.oldest_revision = self.events[0].revision
        self.events.append(event)
        self.revision = max(self.revision, kv.mod_revision)
        for listener in self.listeners:
            listener(event)
        for sub in self._candidates(event):
            seen = event.seen_by(sub.matches)
            if seen is not None:
                try:
                    sub.queue.put_nowait(seen)
                except asyncio.QueueFull:
                    sub.closed_reason = "watcher too slow"
                    self.unsubscribe(sub)
                    # make room for the end-of-stream marker
                    while not sub.queue.empty():
                        sub.queue.get_nowait()
                    sub.queue.put_nowait(None)

    def _group(self, name: str, before: dict[str, Any] | None, after: dict[str, Any] | None) -> None:
        if self.group_by is None:
            return
        if before is not None:
            key = self.group_by(before)
            members = self._groups.get(key)
            if members is not None:
                members.discard(name)
                if not members:
                    del self._groups[key]
        if after is not None:
            self._groups.setdefault(self.group_by(after), set()).add(name)

    def group(self, key: Hashable) -> list[dict[str, Any]]:
        """The cached objects whose ``group_by`` is ``key`` (shared, not copied); every object
        when the cache keeps no groups."""
        if self.group_by is None:
            return list(self.objects.values())
        return [self.objects[name] for name in self._groups.get(key, ())]

    def list_names(self, field_selector: str | None) -> list[str]:
        """The names a LIST with ``field_selector`` must look at, sorted: the one group the selector
        requires at ``group_field`` (an object outside it cannot match), else every object."""
        wanted = required_field_value(field_selector, self.group_field) if self.group_field else None
        if wanted is None:
            return sorted(self.objects)
        return sorted(self._groups.get(wanted, ()))

    def _candidates(self, event: CacheEvent) -> list[Subscription]:
        """The watchers that may see ``event``: the unindexed ones, and those indexed on the value
        its object has now or had before."""
        if not self._by_value:  # no indexed watcher: no need to read the field
            return list(self._unindexed)
        values = {field_value(event.object, INDEXED_FIELD)}
        if event.previous is not None:
            values.add(field_value(event.previous, INDEXED_FIELD))
        found = list(self._unindexed)
        for value in values:
            found.extend(self._by_value.get(value, ()))
        return found

    def unsubscribe(self, sub: Subscription) -> None:
        self.subscribers.discard(sub)
        self._unindexed.discard(sub)
        if sub.indexed is not None:
            same = self._by_value.get(sub.indexed)
            if same is not None:
                same.discard(sub)
                if not same:
                    del self._by_value[sub.indexed]

    def _wake_revision_waiters(self) -> None:
        while self._rev_waiters and self._rev_waiters[0][0] <= self.revision:
            _, _, future = heapq.heappop(self._rev_waiters)
            if not future.done():
                future.set_result(None)

    async def wait_for(self, revision: int, *, timeout: float = 2.0) -> bool:
        """Wait until the cache has seen ``revision`` (read-your-writes for this server's clients)."""
        if self.revision >= revision:
            return True
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._rev_seq += 1
        heapq.heappush(self._rev_waiters, (revision, self._rev_seq, future))
        try:
            await asyncio.wait_for(future, timeout)
            return True
        except TimeoutError:
            return False

    async def wait_gone(self, name: str, *, created: int, timeout: float = 2.0) -> bool:
        """Wait until the cache no longer holds the incarnation of ``name`` created at ``created``."""

        def gone() -> bool:
            obj = self.objects.get(name)
            return obj is None or self._created.get(name, 0) != created

        if gone():
            return True
        self._gone_waiters += 1
        try:
            async with asyncio.timeout(timeout):
                async with self._advanced:
                    await self._advanced.wait_for(gone)
            return True
        except TimeoutError:
            return False
        finally:
            self._gone_waiters -= 1

    def get(self, name: str) -> dict[str, Any] | None:
        return self.objects.get(name)

    def encoded(self, name: str) -> bytes | None:
        """The object's JSON bytes, encoded once per revision (single-object GETs are the hot path)."""
        data = self._encoded.get(name)
        if data is None:
            obj = self.objects.get(name)
            if obj is None:
                return None
            data = self._encoded[name] = jsoncodec.dumps(obj)
        return data

    def items(self) -> list[dict[str, Any]]:
        return [self.objects[name] for name in sorted(self.objects)]

    def subscribe(self, from_revision: int | None, matches: Callable[[dict[str, Any]], bool], *,
                  indexed: str | None = None) -> tuple[Subscription, list[CacheEvent]]:
        """Subscribe to events after ``from_revision``; returns the subscription and the events to replay.

        ``None`` means "now": the caller sends the current objects as ADDED itself. ``indexed``:
        the value ``matches`` requires at INDEXED_FIELD, if any (selectors.required_field_value)."""
        if not self.ready.is_set():
            raise ServiceUnavailable(f"the {self.resource} cache is not ready")
        replay: list[CacheEvent] = []
        if from_revision is not None and from_revision < self.revision:
            if from_revision < self.oldest_revision:
                raise Gone(
                    f"too old resource version: {from_revision} ({self.oldest_revision})", kind=self.resource
                )
            replay = [seen for e in self.events if e.revision > from_revision
                      and (seen := e.seen_by(matches)) is not None]
        sub = Subscription(asyncio.Queue(maxsize=self.queue_size), matches, cache=self, indexed=indexed)
        self.subscribers.add(sub)
        if indexed is None:
            self._unindexed.add(sub)
        else:
            self._by_value.setdefault(indexed, set()).add(sub)
        return sub, replay
