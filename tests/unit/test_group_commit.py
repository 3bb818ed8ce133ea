"""Group commit of single creates (controlplane/group_commit.py) through the real Registry on the
memory store: concurrent creates share transactions, yet each caller gets exactly its own answer
(resourceVersion, AlreadyExists, size error, store failure) and sees its own write at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from controlplane.errors import AlreadyExists, Invalid, StoreUnavailable
from controlplane.group_commit import _Waiting, take_round
from controlplane.registry import Registry
from controlplane.store.memory import MemoryStore
from controlplane.watchcache import decode


class InFlightStore(MemoryStore):
    """A memory store whose creates take a moment, as etcd's do, and that counts them."""

    def __init__(self) -> None:
        super().__init__(reap_interval=None)
        self.singles: list[str] = []
        self.groups: list[list[str]] = []
        self.fail_groups: Exception | None = None

    async def create(self, key: str, value: bytes, *, lease: int = 0) -> int:
        await asyncio.sleep(0.001)
        self.singles.append(key)
        return await super().create(key, value, lease=lease)

    async def create_many(self, items: list[tuple[str, bytes]]) -> int:
        await asyncio.sleep(0.001)
        self.groups.append([key for key, _ in items])
        if self.fail_groups is not None:
            raise self.fail_groups
        return await super().create_many(items)


@pytest.fixture
async def registry() -> AsyncIterator[Registry]:
    reg = Registry(InFlightStore())
    await reg.start()
    try:
        yield reg
    finally:
        await reg.stop()


def store_of(registry: Registry) -> InFlightStore:
    assert isinstance(registry.store, InFlightStore)
    return registry.store


def unit(name: str, *, image: str = "web:1") -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"image": image, "replicas": 1}}


async def create_and_read(registry: Registry, obj: dict[str, Any]) -> dict[str, Any]:
    """Create, then read it back at once (read-your-writes from the watch cache)."""
    created = await registry.create("units", obj)
    seen = registry.get("units", obj["metadata"]["name"])
    assert seen == created
    return created


async def test_concurrent_creates_share_transactions_and_each_sees_its_own(registry: Registry) -> None:
    created = await asyncio.gather(*(create_and_read(registry, unit(f"u{i:03d}")) for i in range(60)))
    store = store_of(registry)
    assert len(store.singles) + sum(len(g) for g in store.groups) == 60
    assert store.groups and max(len(g) for g in store.groups) > 1  # grouped
    assert len(store.singles) + len(store.groups) < 30  # far fewer transactions than creates
    for obj in created:
        kv = await store.get(f"units/{obj['metadata']['name']}")
        assert kv is not None and decode(kv) == obj  # the answer is what etcd holds, rv included
    revisions = {obj["metadata"]["resourceVersion"] for obj in created}
    assert len(revisions) == len(store.singles) + len(store.groups)


async def test_a_create_alone_is_a_single_create(registry: Registry) -> None:
    await registry.create("units", unit("alone"))
    assert store_of(registry).singles == ["units/alone"] and store_of(registry).groups == []


async def test_duplicates_existing_and_oversized_get_their_own_answers(registry: Registry) -> None:
    await registry.create("units", unit("taken"))
    huge = unit("huge", image="x" * 300_000)
    objs = [unit(f"ok{i}") for i in range(10)]
    objs[3:3] = [unit("taken"), unit("twice", image="first:1"), huge, unit("twice", image="second:1")]
    answers = await asyncio.gather(*(registry.create("units", obj) for obj in objs), return_exceptions=True)
    by_name: dict[str, list[Any]] = {}
    for obj, answer in zip(objs, answers, strict=True):
        by_name.setdefault(obj["metadata"]["name"], []).append(answer)
    store = store_of(registry)
    assert isinstance(by_name["taken"][0], AlreadyExists)
    assert by_name["taken"][0].message == 'units "taken" already exists'
    assert isinstance(by_name["huge"][0], Invalid) and "over the limit" in by_name["huge"][0].message
    first, second = by_name["twice"]
    assert isinstance(first, dict) and isinstance(second, AlreadyExists)  # the first to arrive wins
    assert second.message == 'units "twice" already exists'
    for i in range(10):
        (answer,) = by_name[f"ok{i}"]
        assert isinstance(answer, dict)
        kv = await store.get(f"units/ok{i}")
        assert kv is not None and decode(kv) == answer
    twice = await store.get("units/twice")
    assert twice is not None and decode(twice)["spec"]["image"] == "first:1"
    assert await store.get("units/huge") is None
    assert all(len(set(g)) == len(g) for g in store.groups)  # never one key twice in a transaction
    # the round refused for "taken" went again without it: only the first and the refused went alone
    assert set(store.singles) <= {"units/taken", "units/twice", "units/ok0"}


async def test_a_failed_group_fails_each_of_its_callers(registry: Registry) -> None:
    store = store_of(registry)
    store.fail_groups = StoreUnavailable("etcd at x: gone")
    answers = await asyncio.gather(*(registry.create("units", unit(f"f{i}")) for i in range(8)),
                                   return_exceptions=True)
    grouped = {key for g in store.groups for key in g}
    assert grouped  # the first went alone, the rest together
    for i, answer in enumerate(answers):
        if f"units/f{i}" in grouped:
            assert isinstance(answer, StoreUnavailable)
        else:
            assert isinstance(answer, dict)
    stored, _ = await store.range("units/")
    assert {kv.key for kv in stored} == {f"units/f{i}" for i in range(8)} - grouped


async def test_a_caller_cancelled_before_its_round_is_not_written(registry: Registry) -> None:
    first = asyncio.create_task(registry.create("units", unit("first")))
    await asyncio.sleep(0)  # in flight now
    dropped = asyncio.create_task(registry.create("units", unit("dropped")))
    kept = asyncio.create_task(registry.create("units", unit("kept")))
    await asyncio.sleep(0)
    dropped.cancel()
    await asyncio.gather(first, kept)
    store = store_of(registry)
    assert await store.get("units/dropped") is None
    assert await store.get("units/kept") is not None


async def test_creates_with_a_lease_take_the_single_path(registry: Registry) -> None:
    store = store_of(registry)
    lease = await store.grant_lease(30)
    await asyncio.gather(*(registry.create("units", unit(f"l{i}"), lease=lease) for i in range(5)))
    assert store.groups == [] and len(store.singles) == 5
    kv = await store.get("units/l3")
    assert kv is not None and kv.lease == lease


def waiting(key: str, size: int, *, done: bool = False) -> _Waiting:
    future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    if done:
        future.cancel()
    return _Waiting(key, b"x" * size, future)


async def test_take_round_respects_ops_bytes_and_one_key_per_round() -> None:
    items = [waiting("a", 10), waiting("b", 10), waiting("a", 10), waiting("c", 10, done=True),
             waiting("d", 10), waiting("e", 10)]
    chosen, later = take_round(items, max_ops=3, max_bytes=1000)
    assert [w.key for w in chosen] == ["a", "b", "d"] and [w.key for w in later] == ["a", "e"]
    chosen, later = take_round(items, max_ops=10, max_bytes=25)
    assert [w.key for w in chosen] == ["a", "b"] and [w.key for w in later] == ["a", "d", "e"]
    big = [waiting("big", 100), waiting("small", 1)]
    chosen, later = take_round(big, max_ops=10, max_bytes=50)  # the first goes even when too large
    assert [w.key for w in chosen] == ["big"] and [w.key for w in later] == ["small"]

