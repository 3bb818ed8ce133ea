"""The failover plumbing of the etcd store without an etcd: endpoint parsing, which errors mean
"try the next endpoint", EndpointPool.call moving on (and giving up in bounded time), and a
watch whose creation swallowed its task's cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import time
import types
from typing import Any

import aetcd
import pytest

from controlplane.errors import InsufficientStorage, StoreUnavailable
from controlplane.store.etcd_access import EtcdAccess
from controlplane.store.etcd_client import SecureClient
from controlplane.store.etcd_failover import EndpointPool, is_retryable, parse_endpoint


@pytest.mark.parametrize(("text", "expected"), [
    ("http://10.0.0.1:2379", ("10.0.0.1", 2379)),
    (" 10.0.0.2:32379 ", ("10.0.0.2", 32379)),
    ("etcd-a", ("etcd-a", 2379)),
    ("https://10.0.0.3:2379", ("10.0.0.3", 2379)),
])
def test_parse_endpoint(text: str, expected: tuple[str, int]) -> None:
    assert parse_endpoint(text) == expected


@pytest.mark.parametrize("text", ["grpc://a:2379", "http://:2379", "http://a:port"])
def test_parse_endpoint_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_endpoint(text)


def test_connection_trouble_is_retryable_and_answers_are_not() -> None:
    assert is_retryable(TimeoutError())
    assert is_retryable(aetcd.ConnectionFailedError())
    assert is_retryable(aetcd.ClientError("<AioRpcError: StatusCode.UNAVAILABLE ...>"))
    assert not is_retryable(aetcd.ClientError("etcdserver: requested lease not found"))
    assert not is_retryable(ValueError("no"))


@pytest.mark.parametrize("details", [
    "etcdserver: no leader", "etcdserver: request timed out", "context deadline exceeded",
    "etcdserver: leader changed",
])
def test_a_member_without_a_leader_is_retryable(details: str) -> None:
    # etcd answers so (UNAVAILABLE, or UNKNOWN for its own deadline) on a member cut off from its peers
    assert is_retryable(aetcd.ClientError(details))


def test_a_pool_needs_an_endpoint() -> None:
    with pytest.raises(ValueError, match="at least one"):
        EndpointPool([], timeout=1)


async def test_call_moves_to_the_next_endpoint_and_says_it_retries() -> None:
    pool = EndpointPool(["127.0.0.1:1", "127.0.0.1:2"], timeout=5)
    dead = pool.client(0)
    seen: list[tuple[Any, bool]] = []

    async def op(client: aetcd.Client, retrying: bool) -> str:
        seen.append((client, retrying))
        if client is dead:
            raise aetcd.ConnectionFailedError()
        return "ok"

    try:
        assert await pool.call(op) == "ok"
        assert seen == [(dead, False), (pool.client(1), True)]
        assert pool.current == 1
    finally:
        await pool.close()


async def test_call_gives_up_after_the_timeout_when_every_endpoint_fails() -> None:
    pool = EndpointPool(["127.0.0.1:1", "127.0.0.1:2"], timeout=0.3)
    attempts = 0

    async def op(client: aetcd.Client, retrying: bool) -> None:
        nonlocal attempts
        attempts += 1
        raise aetcd.ConnectionFailedError()

    started = time.monotonic()
    try:
        with pytest.raises(StoreUnavailable, match="etcd at http://127.0.0.1:1: .*; etcd at http://127.0.0.1:2: "):
            await pool.call(op)
    finally:
        await pool.close()
    assert 0.3 <= time.monotonic() - started < 3 and attempts > 2
    with pytest.raises(StoreUnavailable, match="closed"):
        await pool.call(op)


async def test_an_answer_is_not_retried() -> None:
    pool = EndpointPool(["127.0.0.1:1", "127.0.0.1:2"], timeout=5)

    async def op(client: aetcd.Client, retrying: bool) -> None:
        raise KeyError("no such thing")

    try:
        with pytest.raises(KeyError):
            await pool.call(op)
        assert pool.current == 0
    finally:
        await pool.close()


async def test_a_full_etcd_is_insufficient_storage_at_once() -> None:
    pool = EndpointPool(["127.0.0.1:1", "127.0.0.1:2"], timeout=5)
    attempts = 0

    async def op(client: aetcd.Client, retrying: bool) -> None:
        nonlocal attempts
        attempts += 1
        raise aetcd.ClientError("etcdserver: mvcc: database space exceeded")

    try:
        with pytest.raises(InsufficientStorage, match="space quota is exhausted.*alarm disarm") as caught:
            await pool.call(op)
        assert caught.value.code == 507 and attempts == 1 and pool.current == 0  # every member is as full
    finally:
        await pool.close()


class SwallowingWatcher:
    """aetcd's Watcher as asyncio.wait_for (Python 3.11) leaves it when the created answer and the
    task's cancellation come together: add_callback returns normally."""

    def __init__(self) -> None:
        self.cancelled: list[int] = []

    async def add_callback(self, key: bytes, callback: Any, **options: Any) -> Any:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(10)
        return types.SimpleNamespace(watch_id=7)

    async def cancel(self, watch_id: int) -> None:
        self.cancelled.append(watch_id)


async def test_a_cancellation_swallowed_while_a_watch_is_created_still_cancels() -> None:
    client = SecureClient("127.0.0.1", 1, access=EtcdAccess(), tls=False, timeout=1, options={})
    watcher = SwallowingWatcher()
    client._connected.set()
    client._watcher = watcher
    task = asyncio.create_task(client.watch(b"/k"))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert watcher.cancelled == [7]  # the watch etcd created is not left behind
