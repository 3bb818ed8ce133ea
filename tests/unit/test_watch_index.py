"""Watchers indexed by the spec.machine their selector requires (watchcache.py, INDEXED_FIELD) see
exactly what an unindexed watcher with the same selector sees, and no other watcher's selector is
evaluated for an event; the required value comes from the selector text (selectors.py). A LIST
with that selector reads the machine's group of instances only, and answers what a scan would."""

from __future__ import annotations

import json
from typing import Any

from controlplane.registry import Registry
from controlplane.selectors import parse_field_selector, required_field_value
from controlplane.store.memory import MemoryStore
from controlplane.watchcache import INDEXED_FIELD, WatchCache


def instance(machine: str) -> bytes:
    return json.dumps({"metadata": {"name": "web-0"}, "spec": {"unit": "web", "machine": machine}}).encode()


def test_required_value_of_a_selector() -> None:
    assert required_field_value("spec.machine=m1", INDEXED_FIELD) == "m1"
    assert required_field_value("status.phase=Running, spec.machine==m2", INDEXED_FIELD) == "m2"
    assert required_field_value("spec.machine!=m1", INDEXED_FIELD) is None
    assert required_field_value("status.phase=Running", INDEXED_FIELD) is None
    assert required_field_value(None, INDEXED_FIELD) is None
    assert required_field_value("spec.machine=", INDEXED_FIELD) == ""


async def test_indexed_watchers_see_what_unindexed_ones_see_and_nothing_else_is_matched() -> None:
    store = MemoryStore(reap_interval=None)
    cache = WatchCache(store, "instances")
    await cache.start()
    asked: list[str] = []

    def counted(machine: str) -> Any:
        matches = parse_field_selector(f"spec.machine={machine}")

        def check(obj: dict[str, Any]) -> bool:
            asked.append(machine)
            return matches(obj)
        return check

    try:
        plain, _ = cache.subscribe(None, parse_field_selector("spec.machine=m1"))
        m1, _ = cache.subscribe(None, counted("m1"), indexed="m1")
        others = [cache.subscribe(None, counted(f"x{i}"), indexed=f"x{i}")[0] for i in range(50)]
        await store.create("instances/web-0", instance(""))
        await store.put("instances/web-0", instance("m1"))
        await store.put("instances/web-0", instance("m2"))
        await store.delete("instances/web-0")
        await cache.wait_for(await store.revision())
        seen = []
        for sub in (plain, m1):
            events = []
            while not sub.queue.empty():
                event = sub.queue.get_nowait()
                events.append((event.type, event.object["spec"]["machine"]))
            seen.append(events)
        assert seen[0] == seen[1] == [("ADDED", "m1"), ("DELETED", "m2")]
        assert set(asked) == {"m1"}  # the 50 other agents' selectors were never evaluated
        assert all(sub.queue.empty() for sub in others)
        m1.close()
        assert "m1" not in cache._by_value and m1 not in cache.subscribers
    finally:
        await cache.stop()
        await store.close()


def bound(name: str, machine: str, phase: str = "Running") -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"unit": "web", "machine": machine}, "status": {"phase": phase}}


async def test_a_list_by_machine_reads_that_machine_s_group_and_answers_what_a_scan_would(registry: Registry) -> None:
    for name, machine in [("a-0", "m1"), ("a-1", "m2"), ("b-0", "m1"), ("c-0", "")]:
        await registry.create("instances", bound(name, machine, "Pending" if name == "b-0" else "Running"))
    await registry.update_status("instances", "a-1", {"phase": "Running"})
    await registry.mutate("instances", "a-1", lambda obj: {**obj, "spec": {**obj["spec"], "machine": "m1"}})
    await registry.delete("instances", "a-0")
    cache = registry.caches["instances"]
    assert cache.list_names("spec.machine=m1") == ["a-1", "b-0"]  # a-0 deleted, a-1 moved here
    assert cache.list_names("spec.machine=m2") == []
    assert cache.list_names("spec.machine=") == ["c-0"]
    assert cache.list_names("spec.machine!=m1") == cache.list_names(None) == ["a-1", "b-0", "c-0"]
    everything, _, _ = registry.list("instances")
    for selector in ("spec.machine=m1", "spec.machine=m1,status.phase=Running", "spec.machine=", "spec.machine=m9",
                     "spec.machine!=m1", "status.phase=Running"):
        scanned = [obj["metadata"]["name"] for obj in everything if parse_field_selector(selector)(obj)]
        listed, _, _ = registry.list("instances", field_selector=selector)
        assert [obj["metadata"]["name"] for obj in listed] == scanned, selector
    first, _, token = registry.list("instances", field_selector="spec.machine=m1", limit=1)
    rest, _, _ = registry.list("instances", field_selector="spec.machine=m1", continue_token=token)
    assert [o["metadata"]["name"] for o in first + rest] == ["a-1", "b-0"]
