"""One contract suite for every Store: MemoryStore and EtcdStore against a real etcd.

Whatever the control plane relies on from the store is asserted here, once, so the memory
store used by pure tests and simulations cannot drift from etcd's behaviour. Each test
gets a fresh store: a new MemoryStore, or an EtcdStore under a prefix no other test uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from etcd_fixture import EtcdServer

from controlplane.errors import AlreadyExists, Conflict, Gone, KeysExist, NotFound
from controlplane.store import LeaseKeeper, MemoryStore, Store, WatchEvent, open_store
from controlplane.store.etcd import EtcdStore


@dataclass
class Backend:
    """A store under test, and how to let time pass for its leases."""

    name: str
    store: Store
    fake_time: list[float] | None = None

    async def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass for lease expiry: instantly for memory, really for etcd."""
        if self.fake_time is not None and isinstance(self.store, MemoryStore):
            self.fake_time[0] += seconds
            self.store.expire_leases()
        else:
            await asyncio.sleep(seconds)


@pytest.fixture(params=["memory", "etcd"])
async def backend(request: pytest.FixtureRequest, unique_prefix: str) -> AsyncIterator[Backend]:
    if request.param == "memory":
        now = [1000.0]
        b = Backend("memory", MemoryStore(clock=lambda: now[0], reap_interval=None), fake_time=now)
    else:
        server: EtcdServer = request.getfixturevalue("etcd")
        b = Backend("etcd", await EtcdStore.open([server.url], prefix=unique_prefix))
    try:
        yield b
    finally:
        await b.store.close()


async def next_event(events: AsyncIterator[WatchEvent], within: float = 5.0) -> WatchEvent:
    return await asyncio.wait_for(anext(events), within)


async def no_event(events: AsyncIterator[WatchEvent], wait: float = 0.3) -> None:
    task = asyncio.ensure_future(anext(events))
    done, _ = await asyncio.wait({task}, timeout=wait)
    if done:
        pytest.fail(f"unexpected event {task.result()}")
    task.cancel()
    try:
        await task
    except (asyncio.CancelledError, StopAsyncIteration):
        pass


# -- get / create / update / put / delete ------------------------------------------------


async def test_create_then_get(backend: Backend) -> None:
    s = backend.store
    assert await s.get("units/web") is None
    rev = await s.create("units/web", b"v1")
    kv = await s.get("units/web")
    assert kv is not None
    assert (kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.lease) == ("units/web", b"v1", rev, rev, 0)
    assert await s.revision() == rev


async def test_create_existing_raises_already_exists(backend: Backend) -> None:
    s = backend.store
    rev = await s.create("k", b"one")
    with pytest.raises(AlreadyExists):
        await s.create("k", b"two")
    kv = await s.get("k")
    assert kv is not None and kv.value == b"one" and kv.mod_revision == rev


async def test_create_many_writes_all_or_nothing(backend: Backend) -> None:
    s = backend.store
    rev = await s.create_many([("i/a", b"A"), ("i/b", b"B"), ("i/c", b"C")])
    items, _ = await s.range("i/")
    assert [(kv.key, kv.value) for kv in items] == [("i/a", b"A"), ("i/b", b"B"), ("i/c", b"C")]
    assert [kv.mod_revision for kv in items] == [rev] * 3  # one transaction, one revision (etcd's rule)
    with pytest.raises(AlreadyExists) as refused:
        await s.create_many([("i/d", b"D"), ("i/b", b"other")])
    assert isinstance(refused.value, KeysExist) and refused.value.keys == ("i/b",)  # the keys found
    assert await s.get("i/d") is None  # nothing of a refused batch is written
    kv = await s.get("i/b")
    assert kv is not None and kv.value == b"B"


async def test_a_watch_catches_up_over_many_bulk_writes(backend: Backend) -> None:
    """A watch started from before 64 bulk writes of 128 keys gets every event. etcd sends a watch
    that catches up up to 1,000 revisions in one message (here ~8.6 MB, over gRPC's default
    4 MiB receive limit, which broke the stream on every resume: the leader's own bulk creates
    could stop its watch caches for good)."""
    s = backend.store
    start = await s.create("w/start", b"x")
    value = b"v" * 1000
    for batch in range(64):
        await s.create_many([(f"w/{batch:02}-{i:03}", value) for i in range(128)])
    seen: list[str] = []
    async with contextlib.aclosing(s.watch("w/", start_revision=start + 1)) as events:
        while len(seen) < 64 * 128:
            seen.append((await next_event(events, within=10)).kv.key)
    assert seen == [f"w/{batch:02}-{i:03}" for batch in range(64) for i in range(128)]


async def test_watch_batches_are_the_watch_in_lists(backend: Backend) -> None:
    """``watch_batches`` gives ``watch``'s events, in order, in lists; a delete carries the value it
    removed. On etcd a bulk write's 128 events come together (the watch cache's cheap path)."""
    s = backend.store
    start = await s.revision() + 1
    await s.create_many([(f"b/{i:03}", b"v%d" % i) for i in range(128)])
    await s.put("b/one", b"1")
    await s.delete("b/one")
    batches: list[list[WatchEvent]] = []
    async with contextlib.aclosing(s.watch_batches("b/", start_revision=start)) as stream:
        while sum(len(b) for b in batches) < 130:
            batches.append(await asyncio.wait_for(anext(stream), 5))
    flat = [(e.type, e.kv.key, e.kv.value) for batch in batches for e in batch]
    async with contextlib.aclosing(s.watch("b/", start_revision=start)) as events:
        single = [(e.type, e.kv.key, e.kv.value) for e in [await next_event(events) for _ in range(130)]]
    assert flat == single
    assert flat[:128] == [("PUT", f"b/{i:03}", b"v%d" % i) for i in range(128)]
    assert flat[128:] == [("PUT", "b/one", b"1"), ("DELETE", "b/one", b"1")]
    if backend.name == "etcd":
        assert len(batches[0]) >= 128  # catching up, later writes may share the answer


async def test_update_compares_mod_revision(backend: Backend) -> None:
    s = backend.store
    created = await s.create("k", b"one")
    updated = await s.update("k", b"two", expected_revision=created)
    assert updated > created
    kv = await s.get("k")
    assert kv is not None
    assert (kv.value, kv.create_revision, kv.mod_revision) == (b"two", created, updated)
    with pytest.raises(Conflict):
        await s.update("k", b"three", expected_revision=created)
    with pytest.raises(NotFound):
        await s.update("missing", b"x", expected_revision=created)
    kv = await s.get("k")
    assert kv is not None and kv.value == b"two"


async def test_update_also_puts_only_when_the_swap_succeeds(backend: Backend) -> None:
    s = backend.store
    created = await s.create("k", b"one")
    with pytest.raises(Conflict):
        await s.update("k", b"two", expected_revision=created + 100, also_put=(("side", b"no"),))
    assert await s.get("side") is None
    updated = await s.update("k", b"two", expected_revision=created, also_put=(("side", b"yes"),))
    side = await s.get("side")
    assert side is not None and side.value == b"yes" and side.lease == 0 and side.mod_revision >= updated


async def test_put_creates_and_overwrites(backend: Backend) -> None:
    s = backend.store
    first = await s.put("k", b"one")
    second = await s.put("k", b"two")
    assert second > first
    kv = await s.get("k")
    assert kv is not None
    assert (kv.value, kv.create_revision, kv.mod_revision) == (b"two", first, second)


async def test_revisions_are_global_and_increasing(backend: Backend) -> None:
    s = backend.store
    start = await s.revision()
    revs = [await s.put(f"k{i}", b"x") for i in range(5)]
    assert revs == sorted(revs) and len(set(revs)) == 5
    assert revs[0] > start
    assert revs[-1] - revs[0] == 4  # nothing else writes under this test's keys or store
    assert await s.revision() == revs[-1]


async def test_delete_returns_previous_and_checks_revision(backend: Backend) -> None:
    s = backend.store
    rev = await s.create("k", b"one")
    with pytest.raises(Conflict):
        await s.delete("k", expected_revision=rev + 1000)
    prev = await s.delete("k", expected_revision=rev)
    assert (prev.key, prev.value, prev.mod_revision, prev.create_revision) == ("k", b"one", rev, rev)
    assert await s.get("k") is None
    with pytest.raises(NotFound):
        await s.delete("k")
    await s.put("k", b"two")
    assert (await s.delete("k")).value == b"two"
    assert await s.revision() > rev


async def test_recreated_key_has_new_create_revision(backend: Backend) -> None:
    s = backend.store
    first = await s.create("k", b"one")
    await s.delete("k")
    second = await s.create("k", b"two")
    kv = await s.get("k")
    assert kv is not None and kv.create_revision == second > first


# -- range ---------------------------------------------------------------------------------


async def test_range_by_prefix_in_key_order(backend: Backend) -> None:
    s = backend.store
    for key in ["units/b", "units/a", "units/c", "unitsx/a", "machines/m1"]:
        await s.put(key, key.encode())
    items, rev = await s.range("units/")
    assert [kv.key for kv in items] == ["units/a", "units/b", "units/c"]
    assert [kv.value for kv in items] == [b"units/a", b"units/b", b"units/c"]
    assert rev == await s.revision()
    everything, _ = await s.range("")
    assert [kv.key for kv in everything] == ["machines/m1", "units/a", "units/b", "units/c", "unitsx/a"]
    assert (await s.range("nothing/"))[0] == []


async def test_range_start_after_and_limit_paginate(backend: Backend) -> None:
    s = backend.store
    keys = [f"instances/web-{i:02d}" for i in range(7)]
    for key in reversed(keys):
        await s.put(key, b"x")
    await s.put("instances0", b"outside")
    page, _ = await s.range("instances/", limit=3)
    assert [kv.key for kv in page] == keys[:3]
    page, _ = await s.range("instances/", start_after=keys[2], limit=3)
    assert [kv.key for kv in page] == keys[3:6]
    page, _ = await s.range("instances/", start_after=keys[5])
    assert [kv.key for kv in page] == keys[6:]
    page, _ = await s.range("instances/", start_after=keys[6])
    assert page == []
    # start_after before the prefix does not leak keys from outside it
    page, _ = await s.range("instances/", start_after="a")
    assert [kv.key for kv in page] == keys
    seen: list[str] = []
    after: str | None = None
    while True:
        page, _ = await s.range("instances/", start_after=after, limit=2)
        if not page:
            break
        seen += [kv.key for kv in page]
        after = page[-1].key
    assert seen == keys


# -- leases --------------------------------------------------------------------------------


async def test_lease_revoke_deletes_keys_and_emits_delete(backend: Backend) -> None:
    s = backend.store
    lease = await s.grant_lease(30)
    await s.put("machines/m1", b"alive", lease=lease)
    await s.create("machines/m2", b"alive", lease=lease)
    await s.put("machines/m3", b"no lease")
    kv = await s.get("machines/m1")
    assert kv is not None and kv.lease == lease
    assert await s.refresh_lease(lease) > 0
    events = s.watch("machines/", start_revision=await s.revision() + 1)
    try:
        await s.revoke_lease(lease)
        deleted = [await next_event(events), await next_event(events)]
        assert sorted((e.type, e.kv.key, e.kv.value) for e in deleted) == [
            ("DELETE", "machines/m1", b"alive"),
            ("DELETE", "machines/m2", b"alive"),
        ]
        assert deleted[0].kv.mod_revision == deleted[1].kv.mod_revision == await s.revision()
    finally:
        await events.aclose()  # type: ignore[attr-defined]
    assert [kv.key for kv in (await s.range("machines/"))[0]] == ["machines/m3"]
    with pytest.raises(NotFound):
        await s.refresh_lease(lease)
    with pytest.raises(NotFound):
        await s.revoke_lease(lease)


async def test_lease_expiry_deletes_keys_and_emits_delete(backend: Backend) -> None:
    s = backend.store
    lease = await s.grant_lease(1)
    rev = await s.put("machines/m1", b"alive", lease=lease)
    events = s.watch("machines/", start_revision=rev + 1)
    try:
        await backend.advance(1.5)
        event = await next_event(events, within=10)
        assert (event.type, event.kv.key, event.kv.value) == ("DELETE", "machines/m1", b"alive")
        assert event.kv.mod_revision > rev
    finally:
        await events.aclose()  # type: ignore[attr-defined]
    assert await s.get("machines/m1") is None
    with pytest.raises(NotFound):
        await s.refresh_lease(lease)


async def test_refresh_keeps_lease_alive(backend: Backend) -> None:
    s = backend.store
    lease = await s.grant_lease(2)
    await s.put("k", b"x", lease=lease)
    for _ in range(3):
        await backend.advance(1.0)
        assert await s.refresh_lease(lease) > 0
    assert await s.get("k") is not None
    await s.revoke_lease(lease)


async def test_write_with_unknown_lease_is_not_found(backend: Backend) -> None:
    s = backend.store
    lease = await s.grant_lease(30)
    await s.revoke_lease(lease)
    with pytest.raises(NotFound):
        await s.put("k", b"x", lease=lease)
    with pytest.raises(NotFound):
        await s.create("k", b"x", lease=lease)
    assert await s.get("k") is None


async def test_put_without_lease_detaches_key(backend: Backend) -> None:
    s = backend.store
    lease = await s.grant_lease(30)
    await s.put("k", b"x", lease=lease)
    await s.put("k", b"y")
    await s.revoke_lease(lease)
    kv = await s.get("k")
    assert kv is not None and kv.value == b"y" and kv.lease == 0


# -- watch ---------------------------------------------------------------------------------


async def test_watch_replays_from_revision_in_order_then_follows(backend: Backend) -> None:
    s = backend.store
    r1 = await s.create("units/a", b"1")
    r2 = await s.update("units/a", b"2", expected_revision=r1)
    await s.put("other/x", b"ignored")
    r3 = await s.create("units/b", b"3")
    previous = await s.delete("units/a")
    assert previous.mod_revision == r2
    events = s.watch("units/", start_revision=r1)
    try:
        got = [await next_event(events) for _ in range(4)]
        assert [(e.type, e.kv.key, e.kv.value) for e in got] == [
            ("PUT", "units/a", b"1"),
            ("PUT", "units/a", b"2"),
            ("PUT", "units/b", b"3"),
            ("DELETE", "units/a", b"2"),
        ]
        revs = [e.kv.mod_revision for e in got]
        assert revs[:3] == [r1, r2, r3] and revs[3] > r3
        assert got[1].kv.create_revision == r1
        live = await s.put("units/c", b"4")
        event = await next_event(events)
        assert (event.type, event.kv.key, event.kv.mod_revision) == ("PUT", "units/c", live)
        await s.put("other/y", b"ignored")
        await no_event(events)
    finally:
        await events.aclose()  # type: ignore[attr-defined]


async def test_watch_from_middle_revision_skips_older(backend: Backend) -> None:
    s = backend.store
    await s.put("k/a", b"1")
    r2 = await s.put("k/b", b"2")
    events = s.watch("k/", start_revision=r2)
    try:
        event = await next_event(events)
        assert (event.kv.key, event.kv.mod_revision) == ("k/b", r2)
    finally:
        await events.aclose()  # type: ignore[attr-defined]


async def test_watch_from_zero_sees_only_new_changes(backend: Backend) -> None:
    s = backend.store
    await s.put("k/old", b"1")
    events = s.watch("k/", start_revision=0)
    try:
        # The watch starts when first iterated; give it that chance before writing.
        pending = asyncio.ensure_future(anext(events))
        await asyncio.sleep(0.2)
        rev = await s.put("k/new", b"2")
        event = await asyncio.wait_for(pending, 5)
        assert (event.kv.key, event.kv.mod_revision) == ("k/new", rev)
    finally:
        await events.aclose()  # type: ignore[attr-defined]


async def test_watch_from_compacted_revision_raises_gone(backend: Backend) -> None:
    s = backend.store
    old = await s.put("k/a", b"1")
    await s.put("k/a", b"2")
    current = await s.put("k/a", b"3")
    await s.compact(current)
    await s.compact(current)  # compacting again is harmless
    events = s.watch("k/", start_revision=old)
    with pytest.raises(Gone):
        await next_event(events)
    # From the compaction revision itself the history is still there.
    events = s.watch("k/", start_revision=current)
    try:
        event = await next_event(events)
        assert (event.kv.value, event.kv.mod_revision) == (b"3", current)
    finally:
        await events.aclose()  # type: ignore[attr-defined]
    kv = await s.get("k/a")
    assert kv is not None and kv.value == b"3"


async def test_two_watches_see_the_same_events(backend: Backend) -> None:
    s = backend.store
    start = await s.revision() + 1
    first, second = s.watch("k/", start_revision=start), s.watch("k/", start_revision=start)
    try:
        revs = [await s.put(f"k/{i}", b"x") for i in range(3)]
        for events in (first, second):
            assert [(await next_event(events)).kv.mod_revision for _ in range(3)] == revs
    finally:
        await first.aclose()  # type: ignore[attr-defined]
        await second.aclose()  # type: ignore[attr-defined]


# -- LeaseKeeper -------------------------------------------------------------------------------


@pytest.fixture(params=["memory", "etcd"])
async def realtime_store(request: pytest.FixtureRequest, unique_prefix: str) -> AsyncIterator[Store]:
    """A store whose leases run on the real clock (the keeper sleeps for real)."""
    store: Store
    if request.param == "memory":
        store = MemoryStore(reap_interval=0.05)
    else:
        server: EtcdServer = request.getfixturevalue("etcd")
        store = await EtcdStore.open([server.url], prefix=unique_prefix)
    try:
        yield store
    finally:
        await store.close()


async def test_lease_keeper_keeps_lease_and_revokes_on_exit(realtime_store: Store) -> None:
    s = realtime_store
    async with LeaseKeeper(s, ttl=1) as keeper:
        await s.put("leader", b"me", lease=keeper.lease_id)
        await asyncio.sleep(2.5)
        assert not keeper.lost.is_set()
        kv = await s.get("leader")
        assert kv is not None and kv.lease == keeper.lease_id
    assert await s.get("leader") is None


async def test_lease_keeper_reports_loss(realtime_store: Store) -> None:
    s = realtime_store
    calls: list[float] = []
    async with LeaseKeeper(s, ttl=3, on_lost=lambda: calls.append(time.monotonic())) as keeper:
        await s.revoke_lease(keeper.lease_id)
        await asyncio.wait_for(keeper.lost.wait(), 5)
    assert len(calls) == 1


# -- factory -------------------------------------------------------------------------------------


async def test_open_store_picks_the_implementation(etcd: EtcdServer, unique_prefix: str) -> None:
    memory = open_store("memory://")
    assert isinstance(memory, MemoryStore)
    await memory.close()
    store = open_store(f"{etcd.url}, http://127.0.0.1:1", unique_prefix)
    assert isinstance(store, EtcdStore)
    assert store.endpoints == [("127.0.0.1", int(etcd.url.rsplit(":", 1)[1])), ("127.0.0.1", 1)]
    assert store.prefix == unique_prefix
    try:
        await store.put("k", b"x")
        direct = await EtcdStore.open([etcd.url], prefix="")
        try:
            kv = await direct.get(unique_prefix.lstrip("/") + "/k")
            assert kv is not None and kv.value == b"x"  # keys really live under the prefix
        finally:
            await direct.close()
    finally:
        await store.close()


async def test_the_leader_lease_is_kept_while_bulk_refreshes_are_stuck(realtime_store: Store) -> None:
    """Machine presence refreshes (``bulk``) go on a stream of their own: while thousands of them
    queue (here: a stream whose writer is held), the store's own lease (leadership, a LeaseKeeper)
    is still refreshed. At 1,000 hollow machines the leader lost its lease 41 times in a minute
    while its refreshes waited behind the heartbeats' on one stream."""
    s = realtime_store
    machine_lease = await s.grant_lease(30)
    if isinstance(s, EtcdStore):
        await s.refresh_lease(machine_lease, bulk=True)  # opens the bulk stream
        held = [stream._write_lock for streams in s._bulk_keepalives._streams.values()  # noqa: SLF001
                for stream in streams]
        assert held
        for lock in held:
            await lock.acquire()  # every bulk refresh now waits
    try:
        stuck = [asyncio.ensure_future(s.refresh_lease(machine_lease, bulk=True)) for _ in range(200)]
        async with LeaseKeeper(s, ttl=1) as keeper:
            await asyncio.sleep(2.5)
            assert not keeper.lost.is_set()
        if isinstance(s, EtcdStore):
            assert not any(task.done() for task in stuck)  # still queued: the keeper went around them
    finally:
        if isinstance(s, EtcdStore):
            for lock in held:
                lock.release()
    await asyncio.gather(*stuck, return_exceptions=True)
