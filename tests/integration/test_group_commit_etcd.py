"""Group commit of single creates against a real etcd: many concurrent creates (duplicates, a
taken name and an oversized object among them) share transactions, each caller gets its own
answer, etcd holds exactly the winners, and each answer is visible to a read right after it.
Also the retry-after-failover rule of ``EtcdStore.create_many``: a retry that finds its own
earlier write counts as done."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aetcd
import pytest
from etcd_fixture import EtcdServer

from controlplane.errors import AlreadyExists, Invalid
from controlplane.registry import Registry
from controlplane.store.etcd import EtcdStore
from controlplane.watchcache import decode

Op = Callable[[aetcd.Client, bool], Awaitable[Any]]


@pytest.fixture
async def store(etcd: EtcdServer, unique_prefix: str) -> AsyncIterator[EtcdStore]:
    s = await EtcdStore.open([etcd.url], prefix=unique_prefix)
    try:
        yield s
    finally:
        await s.close()


def unit(name: str, *, image: str = "web:1") -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"image": image, "replicas": 1}}


async def test_concurrent_creates_through_etcd_each_get_their_own_answer(store: EtcdStore) -> None:
    registry = Registry(store)
    await registry.start()
    try:
        await registry.create("units", unit("taken"))
        objs = [unit(f"u{i:03d}") for i in range(150)]
        objs[20:20] = [unit("taken"), unit("twice", image="first:1"), unit("huge", image="x" * 300_000),
                       unit("twice", image="second:1")]
        objs[90:90] = [unit("u005")]  # a duplicate of an earlier one, arriving later

        async def create_then_read(obj: dict[str, Any]) -> dict[str, Any]:
            created = await registry.create("units", obj)
            assert registry.get("units", obj["metadata"]["name"]) == created  # read-your-writes
            return created

        answers = await asyncio.gather(*(create_then_read(obj) for obj in objs), return_exceptions=True)
        won: dict[str, dict[str, Any]] = {}
        refused: dict[str, list[BaseException]] = {}
        for obj, answer in zip(objs, answers, strict=True):
            name = obj["metadata"]["name"]
            if isinstance(answer, dict):
                assert name not in won
                won[name] = answer
            else:
                assert isinstance(answer, BaseException)
                refused.setdefault(name, []).append(answer)
        assert set(refused) == {"taken", "twice", "huge", "u005"}
        for name in ("taken", "twice", "u005"):
            (err,) = refused[name]
            assert isinstance(err, AlreadyExists) and err.message == f'units "{name}" already exists'
        (too_big,) = refused["huge"]
        assert isinstance(too_big, Invalid) and "over the limit" in too_big.message
        assert set(won) == {f"u{i:03d}" for i in range(150)} | {"twice"}
        assert won["twice"]["spec"]["image"] == "first:1"

        stored, _ = await store.range("units/")
        held = {kv.key.removeprefix("units/"): decode(kv) for kv in stored}
        assert set(held) == set(won) | {"taken"}
        for name, answer in won.items():
            assert held[name] == answer  # uid, spec and resourceVersion (the key's mod revision)
        revisions = {answer["metadata"]["resourceVersion"] for answer in won.values()}
        assert len(revisions) < len(won) // 2  # they shared transactions
    finally:
        await registry.stop()


def landed_then_retried(store: EtcdStore, between: Callable[[], Awaitable[None]] | None = None) -> None:
    """Make the store's next call run its operation once (it lands), then again as a retry
    after a lost answer, with ``between`` in the middle."""

    async def call(op: Op) -> Any:
        client = store._pool.client(store._pool.current)
        await op(client, False)
        if between is not None:
            await between()
        return await op(client, True)

    store._call = call  # type: ignore[method-assign]


async def test_a_retried_batch_that_finds_its_own_write_counts_as_done(store: EtcdStore) -> None:
    items = [("r/a", b"A-uid1"), ("r/b", b"B-uid2")]
    landed_then_retried(store)
    revision = await store.create_many(items)
    store._call = store._pool.call  # type: ignore[method-assign]
    for key, value in items:
        kv = await store.get(key)
        assert kv is not None and kv.value == value and kv.mod_revision == revision


async def test_a_retried_batch_counts_as_done_even_if_one_key_was_deleted_since(store: EtcdStore) -> None:
    items = [("d/a", b"A-uid1"), ("d/b", b"B-uid2")]

    async def delete_one() -> None:
        await store._pool.call(lambda client, retrying: client.delete(store._full("d/a")))

    landed_then_retried(store, delete_one)
    revision = await store.create_many(items)
    store._call = store._pool.call  # type: ignore[method-assign]
    kv = await store.get("d/b")
    assert kv is not None and kv.mod_revision == revision


async def test_a_retried_batch_whose_keys_hold_other_values_is_refused(store: EtcdStore) -> None:
    await store.create("o/b", b"someone else's")
    landed_then_retried(store)
    with pytest.raises(AlreadyExists):
        await store.create_many([("o/a", b"A-uid1"), ("o/b", b"B-uid2")])
    store._call = store._pool.call  # type: ignore[method-assign]
    assert await store.get("o/a") is None
