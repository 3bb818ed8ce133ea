"""Typed object storage: metadata bookkeeping, optimistic concurrency and reads from the watch cache.

The API handlers and the in-process controllers both go through a Registry, so the rules
(uid and creationTimestamp set once, generation bumped on spec changes, status ignored on
spec writes, compare-and-swap on resourceVersion) live in one place. Reads come from the
watch cache; every write waits until the cache has seen it, so a client reading from the
same server right after a write sees its own write.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

from controlplane import group_commit, jsoncodec, stamps
from controlplane.errors import (
    AlreadyExists,
    BadRequest,
    Cause,
    Conflict,
    CPError,
    Invalid,
    NotFound,
    PartialFailure,
    RequestEntityTooLarge,
)
from controlplane.events import event_about
from controlplane.group_commit import CreateGroup, chunked, write_in_turn
from controlplane.model import (
    API_VERSION,
    HAS_STATUS,
    MAX_OBJECT_BYTES,
    RESOURCES,
    SPEC_FIELDS,
    now_rfc3339,
    rfc3339,
)
from controlplane.selectors import parse_field_selector, parse_label_selector
from controlplane.store.base import Store
from controlplane.watchcache import INDEXED_FIELD, WatchCache, decode

JsonList = list[dict[str, Any]]
# (current, new) -> the (key, value) pairs to write in the same transaction as that update
WriteHook = Callable[[dict[str, Any], dict[str, Any]], Awaitable[tuple[tuple[str, bytes], ...]]]


def encode(obj: dict[str, Any]) -> bytes:
    """Stored form: the object without its resourceVersion (that is etcd's mod revision). Invalid
    when over MAX_OBJECT_BYTES, so no write, however it was built, sends etcd a larger value."""
    meta = dict(obj.get("metadata") or {})
    meta.pop("resourceVersion", None)
    data = jsoncodec.dumps({**obj, "metadata": meta}, sort_keys=True)
    if len(data) > MAX_OBJECT_BYTES:
        kind, name = str(obj.get("kind") or "object"), str(meta.get("name") or "")
        message = f"the object is {len(data)} bytes as stored, over the limit of {MAX_OBJECT_BYTES} bytes (256 KiB)"
        raise Invalid(f'{kind} "{name}" is invalid: {message}', kind=kind, name=name,
                      causes=[Cause("<body>", message, "FieldValueTooLong")])
    return data


def object_key(resource: str, name: str) -> str:
    return f"{resource}/{name}"


def _spec_of(kind: str, obj: dict[str, Any]) -> list[Any]:
    return [obj.get(f) for f in SPEC_FIELDS[kind]]


def not_found(resource: str, name: str) -> NotFound:
    kind = RESOURCES[resource]
    return NotFound(f'{resource} "{name}" not found', kind=kind, name=name)


def conflict(resource: str, name: str) -> Conflict:
    kind = RESOURCES[resource]
    return Conflict(
        f'Operation cannot be fulfilled on {resource} "{name}": the object has been modified; '
        "please apply your changes to the latest version and try again",
        kind=kind,
        name=name,
    )


def carry_metadata(kind: str, current: dict[str, Any], new: dict[str, Any]) -> None:
    """Keep what a write may not change (name, uid, creationTimestamp) and bump generation when
    the spec changed."""
    meta = new.setdefault("metadata", {})
    cur_meta = current["metadata"]
    for key in ("name", "uid", "creationTimestamp"):
        meta[key] = cur_meta.get(key)
    meta["generation"] = cur_meta.get("generation", 1) + (1 if _spec_of(kind, new) != _spec_of(kind, current) else 0)


def encode_continue(name: str, revision: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"after": name, "rv": revision}).encode()).decode()


def decode_continue(token: str) -> str:
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        return str(data["after"])
    except (binascii.Error, ValueError, KeyError, TypeError) as err:
        raise BadRequest(f"invalid continue token {token!r}") from err


class Registry:
    """CRUD of API objects over a Store, with one watch cache per resource."""

    def __init__(self, store: Store, *, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock
        # Events grouped by the object they are about; instances by machine, so each agent's LIST of
        # ``spec.machine=<itself>`` (at start, after a watch failure, to unfence) reads its own few
        groups: dict[str, dict[str, Any]] = {"events": {"group_by": event_about},
                                             "instances": {"group_field": INDEXED_FIELD}}
        self.caches = {resource: WatchCache(store, resource, **groups.get(resource, {})) for resource in RESOURCES}
        self.on_store_call: Callable[[str, float], None] = lambda op, seconds: None
        self.write_hooks: dict[str, WriteHook] = {}  # resource -> its hook (api/revisions.py: unit history)
        # single creates grouped into one transaction while another is in flight (group_commit.py)
        self._create_groups = {resource: CreateGroup(store, self._timed, max_ops=group_commit.BULK_CREATE_BATCH,
                                                     max_bytes=group_commit.MAX_TXN_BYTES) for resource in RESOURCES}

    async def start(self) -> None:
        await asyncio.gather(*(cache.start() for cache in self.caches.values()))

    async def stop(self) -> None:
        await asyncio.gather(*(cache.stop() for cache in self.caches.values()))

    async def _timed(self, op: str, call: Awaitable[Any]) -> Any:
        started = time.perf_counter()
        try:
            return await call
        finally:
            self.on_store_call(op, time.perf_counter() - started)

    # ---- reads (watch cache) ----
    def get(self, resource: str, name: str) -> dict[str, Any]:
        obj = self.caches[resource].get(name)
        if obj is None:
            raise not_found(resource, name)
        return copy.deepcopy(obj)

    def find(self, resource: str, name: str) -> dict[str, Any] | None:
        obj = self.caches[resource].get(name)
        return copy.deepcopy(obj) if obj is not None else None

    def peek(self, resource: str, name: str) -> dict[str, Any] | None:
        """The cached object itself, not a copy: for callers that only read it (the heartbeat)."""
        return self.caches[resource].get(name)

    def list(
        self,
        resource: str,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        limit: int = 0,
        continue_token: str | None = None,
    ) -> tuple[JsonList, int, str]:
        """Matching objects in name order, the cache revision, and a continue token when truncated."""
        cache = self.caches[resource]
        by_label = parse_label_selector(label_selector)
        by_field = parse_field_selector(field_selector)
        after = decode_continue(continue_token) if continue_token else None
        revision = cache.revision
        items: JsonList = []
        next_token = ""
        for name in cache.list_names(field_selector):
            if after is not None and name <= after:
                continue
            obj = cache.objects[name]
            if not (by_label(obj) and by_field(obj)):
                continue
            if limit and len(items) == limit:
                next_token = encode_continue(items[-1]["metadata"]["name"], revision)
                break
            items.append(obj)
        return copy.deepcopy(items), revision, next_token

    def objects(self, resource: str) -> JsonList:
        """Every object of a resource, shared (not copied): for controllers that only read."""
        return list(self.caches[resource].objects.values())

    # ---- writes ----
    async def _settle(self, resource: str, revision: int) -> None:
        await self.caches[resource].wait_for(revision)

    async def create(self, resource: str, obj: Mapping[str, Any], *, lease: int = 0,
                     dry_run: bool = False) -> dict[str, Any]:
        """Create ``obj``; with ``dry_run`` everything but the write (the answer has no resourceVersion)."""
        kind = RESOURCES[resource]
        new = self._stamp_new(resource, obj)
        meta = new["metadata"]
        name = meta["name"]
        if dry_run:
            encode(new)
            if self.find(resource, name) is not None:
                raise AlreadyExists(f'{resource} "{name}" already exists', kind=kind, name=name)
            return new
        key, value = object_key(resource, name), encode(new)
        try:
            if lease:
                revision = await self._timed("create", self.store.create(key, value, lease=lease))
            else:
                revision = await self._create_groups[resource].create(key, value)
        except AlreadyExists as err:
            raise AlreadyExists(f'{resource} "{name}" already exists', kind=kind, name=name) from err
        await self._settle(resource, revision)
        meta["resourceVersion"] = str(revision)
        return new

    def _stamp_new(self, resource: str, obj: Mapping[str, Any], *, uid: str = "", created: str = "") -> dict[str, Any]:
        # only the top level and metadata are changed here: copying those is enough
        stamped = {**obj, "metadata": dict(obj.get("metadata") or {})}
        meta = stamped["metadata"]
        meta["uid"] = uid or str(uuid.uuid4())
        meta["creationTimestamp"] = created or now_rfc3339(self.clock)
        meta["generation"] = 1
        meta.pop("resourceVersion", None)
        stamped["kind"], stamped["apiVersion"] = RESOURCES[resource], API_VERSION
        return stamped

    async def create_many(self, resource: str, objs: JsonList, *, batch: int = group_commit.BULK_CREATE_BATCH,
                          batch_bytes: int = group_commit.MAX_TXN_BYTES,
                          in_flight: int = group_commit.BULK_IN_FLIGHT) -> int:
        """Create many objects in transactions of at most ``batch`` objects and ``batch_bytes`` bytes
        (the controllers' bulk path: 10,000 instances are 79 etcd round trips, not 10,000; the byte
        bound keeps a transaction under etcd's request size), ``in_flight`` at a time, each sent as
        soon as it is encoded (``write_in_turn``). A batch that fails falls back to one create per
        object: those that exist are skipped, and the others that fail are raised together as
        ``PartialFailure`` once every object has been tried, so one object that etcd refuses never
        keeps the rest out. Returns how many were created."""
        created = 0
        last = 0
        failures: dict[str, CPError] = {}

        async def one_batch(chunk: list[tuple[str, str, bytes]]) -> None:
            nonlocal created, last
            try:
                revision = await self._timed("create_many", self.store.create_many([(k, v) for _, k, v in chunk]))
                created += len(chunk)
                last = max(last, revision)
                return
            except (AlreadyExists, RequestEntityTooLarge):
                pass
            for name, key, value in chunk:
                try:
                    revision = await self._timed("create", self.store.create(key, value))
                    created += 1
                    last = max(last, revision)
                except AlreadyExists:
                    continue
                except RequestEntityTooLarge as err:
                    failures[name] = err

        await write_in_turn(one_batch, chunked(self._encoded_new(resource, objs, failures), batch, batch_bytes),
                            in_flight=in_flight)
        if last:
            await self._settle(resource, last)
        if failures:
            names = ", ".join(sorted(failures)[:5])
            raise PartialFailure(f"{len(failures)} of {len(objs)} {resource} not created ({names})", failures)
        return created

    def _encoded_new(self, resource: str, objs: JsonList,
                     failures: dict[str, CPError]) -> Iterator[tuple[str, str, bytes]]:
        """(name, key, stored value) of each new object, stamped and encoded as it is asked for; one
        over the object size limit goes to ``failures`` instead, and the others go on. The uids come
        from one urandom call, the timestamps formatted the cheap way (stamps.py)."""
        for obj, uid in zip(objs, stamps.uuid4_strings(len(objs)), strict=True):
            stamped = self._stamp_new(resource, obj, uid=uid, created=rfc3339(self.clock()))
            name = stamped["metadata"]["name"]
            try:
                value = encode(stamped)
            except Invalid as err:
                failures[name] = err
                continue
            yield name, object_key(resource, name), value

    async def _current(self, resource: str, name: str) -> dict[str, Any]:
        kv = await self._timed("get", self.store.get(object_key(resource, name)))
        if kv is None:
            raise not_found(resource, name)
        return decode(kv)

    async def replace(
        self, resource: str, name: str, obj: dict[str, Any], *, expected_rv: str | None = None, dry_run: bool = False
    ) -> dict[str, Any]:
        """Replace spec, labels and annotations; status is kept. ``expected_rv`` (or the object's own
        metadata.resourceVersion) must be current, else Conflict. ``dry_run``: all but the write."""
        kind = RESOURCES[resource]
        rv = expected_rv if expected_rv is not None else (obj.get("metadata") or {}).get("resourceVersion")
        current = self.find(resource, name)
        if current is None or (rv and current["metadata"]["resourceVersion"] != rv):
            current = await self._current(resource, name)
        if rv and current["metadata"]["resourceVersion"] != str(rv):
            raise conflict(resource, name)
        return await self._write(resource, current, self._merged(kind, current, obj), dry_run=dry_run)

    @staticmethod
    def _merged(kind: str, current: dict[str, Any], obj: dict[str, Any]) -> dict[str, Any]:
        new = copy.deepcopy(obj)
        carry_metadata(kind, current, new)
        if kind in HAS_STATUS:
            new["status"] = copy.deepcopy(current.get("status"))
        new["kind"], new["apiVersion"] = kind, API_VERSION
        return new

    async def _write(self, resource: str, current: dict[str, Any], new: dict[str, Any], *,
                     dry_run: bool = False) -> dict[str, Any]:
        name = current["metadata"]["name"]
        rv = int(current["metadata"]["resourceVersion"])
        value = encode(new)
        if dry_run:
            new["metadata"]["resourceVersion"] = str(rv)
            return new
        hook = self.write_hooks.get(resource)
        also = await hook(current, new) if hook is not None else ()
        try:
            revision = await self._timed(
                "update", self.store.update(object_key(resource, name), value, expected_revision=rv, also_put=also)
            )
        except Conflict as err:
            raise conflict(resource, name) from err
        except NotFound as err:
            raise not_found(resource, name) from err
        await self._settle(resource, revision)
        new["metadata"]["resourceVersion"] = str(revision)
        return new

    async def update_status(
        self, resource: str, name: str, status: dict[str, Any], *, expected_rv: str | None = None
    ) -> dict[str, Any]:
        """Replace the status only; with ``expected_rv`` a stale write is a Conflict, else it retries."""

        def set_status(obj: dict[str, Any]) -> dict[str, Any]:
            obj["status"] = copy.deepcopy(status)
            return obj

        return await self.mutate(resource, name, set_status, expected_rv=expected_rv)

    async def mutate(
        self,
        resource: str,
        name: str,
        change: Callable[[dict[str, Any]], dict[str, Any] | None],
        *,
        expected_rv: str | None = None,
        attempts: int = 8,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """Read-modify-write with compare-and-swap, retried on conflicts (controllers' workhorse).

        ``change`` gets a copy of the current object and returns the new one (status included, as is),
        or None to leave it alone. Generation is bumped when the spec changes."""
        kind = RESOURCES[resource]
        current = self.find(resource, name)
        for attempt in range(attempts):
            if current is None or attempt > 0:
                current = await self._current(resource, name)
            if expected_rv and current["metadata"]["resourceVersion"] != str(expected_rv):
                raise conflict(resource, name)
            new = change(copy.deepcopy(current))
            if new is None:
                return current
            carry_metadata(kind, current, new)
            try:
                return await self._write(resource, current, new, dry_run=dry_run)
            except Conflict:
                if expected_rv or attempt == attempts - 1:
                    raise
                await asyncio.sleep(0.005 * (attempt + 1))
        raise AssertionError("unreachable")

    async def delete(self, resource: str, name: str, *, expected_rv: str | None = None) -> dict[str, Any]:
        try:
            kv = await self._timed(
                "delete",
                self.store.delete(object_key(resource, name), expected_revision=int(expected_rv or 0)),
            )
        except NotFound as err:
            raise not_found(resource, name) from err
        except Conflict as err:
            raise conflict(resource, name) from err
        # settle on the deleted key itself: the store's current revision may belong to another
        # resource's write, which this resource's cache would never see
        await self.caches[resource].wait_gone(name, created=kv.create_revision)
        return decode(kv)
