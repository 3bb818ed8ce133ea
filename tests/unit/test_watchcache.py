"""The watch cache seen through selectors: objects entering a selector arrive as ADDED, objects
leaving it as DELETED (an agent watching spec.machine=m1 must learn that an instance moved away)."""

from __future__ import annotations

import json

from controlplane.selectors import parse_field_selector
from controlplane.store.memory import MemoryStore
from controlplane.watchcache import WatchCache


def instance(machine: str) -> bytes:
    return json.dumps({"metadata": {"name": "web-0"}, "spec": {"unit": "web", "machine": machine}}).encode()


async def drain(queue) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    events = []
    while not queue.empty():
        event = queue.get_nowait()
        events.append((event.type, event.object["spec"]["machine"]))
    return events


async def test_selector_watch_sees_objects_enter_and_leave() -> None:
    store = MemoryStore(reap_interval=None)
    cache = WatchCache(store, "instances")
    await cache.start()
    try:
        start = cache.revision
        sub, _ = cache.subscribe(None, parse_field_selector("spec.machine=m1"))
        await store.create("instances/web-0", instance(""))
        await store.put("instances/web-0", instance("m1"))  # bound here: ADDED for this watcher
        await store.put("instances/web-0", instance("m1"))  # still here: MODIFIED
        await store.put("instances/web-0", instance("m2"))  # moved away: DELETED for this watcher
        await store.put("instances/web-0", instance("m3"))  # elsewhere: nothing
        await cache.wait_for(await store.revision())
        expected = [("ADDED", "m1"), ("MODIFIED", "m1"), ("DELETED", "m2")]
        assert await drain(sub.queue) == expected
        replay_sub, replay = cache.subscribe(start, parse_field_selector("spec.machine=m1"))
        assert [(e.type, e.object["spec"]["machine"]) for e in replay] == expected
        replay_sub.close()
        sub.close()
    finally:
        await cache.stop()
        await store.close()


async def test_groups_follow_puts_moves_deletes_and_relists() -> None:
    """A cache with ``group_by`` (Events by the object they are about) keeps each object in the
    group of its current value: added, moved to another group, deleted, and rebuilt on a re-list."""
    store = MemoryStore(reap_interval=None)
    cache = WatchCache(store, "instances", group_by=lambda obj: obj["spec"]["machine"])
    await cache.start()

    def names(key: str) -> list[str]:
        return sorted(obj["metadata"]["name"] for obj in cache.group(key))

    try:
        await store.create("instances/web-0", instance("m1"))
        await store.create("instances/web-1", json.dumps(
            {"metadata": {"name": "web-1"}, "spec": {"unit": "web", "machine": "m1"}}).encode())
        await cache.wait_for(await store.revision())
        assert names("m1") == ["web-0", "web-1"]
        await store.put("instances/web-0", instance("m2"))
        await cache.wait_for(await store.revision())
        assert (names("m1"), names("m2")) == (["web-1"], ["web-0"])
        await store.delete("instances/web-1")
        await cache.wait_for(await store.revision())
        assert (names("m1"), names("m2"), names("m3")) == ([], ["web-0"], [])
        await cache._relist()  # noqa: SLF001 -- what a compaction does
        assert (names("m1"), names("m2")) == ([], ["web-0"])
        assert WatchCache(store, "instances").group("m2") == []  # no groups kept: every object (none yet)
    finally:
        await cache.stop()
        await store.close()
