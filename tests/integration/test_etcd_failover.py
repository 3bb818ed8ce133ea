"""EtcdStore against a real 3-member etcd cluster losing the member it talks to.

The API server must survive an etcd member dying under it: writes keep going on another
endpoint, no acknowledged write is lost, and watches resume exactly where they were,
neither dropping nor repeating events. With every member gone, operations fail with
StoreUnavailable in bounded time instead of hanging.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
from etcd_fixture import EtcdCluster

from controlplane.errors import StoreUnavailable
from controlplane.store.base import WatchEvent
from controlplane.store.etcd import EtcdStore

pytestmark = pytest.mark.slow


async def _writer(store: EtcdStore, name: str, count: int, acked: dict[str, int], pause: float) -> None:
    for i in range(count):
        key = f"w/{name}-{i:04d}"
        acked[key] = await store.create(key, key.encode())
        await asyncio.sleep(pause)


async def _wait_for(condition: Callable[[], bool], within: float) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.01)


async def test_writes_survive_kill_of_connected_member(etcd_cluster: EtcdCluster, unique_prefix: str) -> None:
    store = await EtcdStore.open(etcd_cluster.urls, prefix=unique_prefix, timeout=10)
    acked: dict[str, int] = {}
    try:
        writers = [
            asyncio.create_task(_writer(store, f"w{n}", 150, acked, pause=0.005)) for n in range(4)
        ]
        await _wait_for(lambda: len(acked) >= 100, within=20)
        victim = etcd_cluster.index_of(store.current_endpoint)
        etcd_cluster.kill(victim)
        killed_at = len(acked)
        await asyncio.wait_for(asyncio.gather(*writers), 60)
        assert etcd_cluster.index_of(store.current_endpoint) != victim
        assert len(acked) == 600 and killed_at < 600
    finally:
        await store.close()

    # Read back through a store that starts on a surviving member.
    survivors = [url for i, url in enumerate(etcd_cluster.urls) if i != victim]
    reader = await EtcdStore.open(survivors, prefix=unique_prefix)
    try:
        items, _ = await reader.range("w/")
        found = {kv.key: kv for kv in items}
        assert set(found) == set(acked)
        for key, rev in acked.items():
            assert found[key].value == key.encode()
            assert found[key].mod_revision == rev
    finally:
        await reader.close()

    # The killed member comes back and catches up.
    etcd_cluster.restart(victim)
    again = await EtcdStore.open([etcd_cluster.urls[victim]], prefix=unique_prefix)
    try:
        items, _ = await again.range("w/")
        assert len(items) == 600
    finally:
        await again.close()


async def test_watch_resumes_across_failover(etcd_cluster: EtcdCluster, unique_prefix: str) -> None:
    watcher_store = await EtcdStore.open(etcd_cluster.urls, prefix=unique_prefix, timeout=10)
    victim = etcd_cluster.index_of(watcher_store.current_endpoint)
    # The writer starts on another member, so only the watcher has to fail over.
    others = [url for i, url in enumerate(etcd_cluster.urls) if i != victim]
    writer_store = await EtcdStore.open(others + [etcd_cluster.urls[victim]], prefix=unique_prefix, timeout=10)
    start = await writer_store.revision() + 1
    seen: list[WatchEvent] = []
    acked: dict[str, int] = {}

    async def consume() -> None:
        async for event in watcher_store.watch("w/", start_revision=start):
            seen.append(event)
            if len(seen) >= 300:
                return

    consumer = asyncio.create_task(consume())
    try:
        writer = asyncio.create_task(_writer(writer_store, "x", 300, acked, pause=0.005))
        await _wait_for(lambda: len(seen) >= 80, within=20)
        etcd_cluster.kill(victim)
        await asyncio.wait_for(writer, 60)
        await asyncio.wait_for(consumer, 30)
    finally:
        consumer.cancel()
        await asyncio.gather(consumer, return_exceptions=True)
        await watcher_store.close()
        await writer_store.close()

    assert etcd_cluster.index_of(watcher_store.current_endpoint) != victim
    revisions = [e.kv.mod_revision for e in seen]
    assert revisions == sorted(revisions) and len(set(revisions)) == len(revisions)
    assert {e.kv.key: e.kv.mod_revision for e in seen} == acked
    assert all(e.type == "PUT" for e in seen)


async def test_all_members_down_is_store_unavailable(etcd_cluster: EtcdCluster, unique_prefix: str) -> None:
    store = await EtcdStore.open(etcd_cluster.urls, prefix=unique_prefix, timeout=1)
    try:
        await store.put("k", b"x")
        for i in range(etcd_cluster.n):
            etcd_cluster.kill(i)
        began = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await store.get("k")
        assert time.monotonic() - began < 10
        # Back up: the same store object works again.
        for i in range(etcd_cluster.n):
            etcd_cluster.restart(i, wait=False)
        etcd_cluster.wait_healthy()
        kv = await store.get("k")
        assert kv is not None and kv.value == b"x"
    finally:
        await store.close()
