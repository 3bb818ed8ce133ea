"""LeaseKeeper (store/lease.py) against a store that stops answering: it gives the lease up half a
TTL after the last confirmed refresh was sent, whether refreshes hang or fail, and its exit never
waits on a revoke that hangs."""

from __future__ import annotations

import asyncio
import time

from controlplane.errors import StoreUnavailable
from controlplane.store.lease import LeaseKeeper
from controlplane.store.memory import MemoryStore


class Unreachable(MemoryStore):
    """Grants leases; once ``cut`` is set, refreshes and revokes hang (or fail, with ``fail_fast``)."""

    def __init__(self, *, fail_fast: bool = False) -> None:
        super().__init__(reap_interval=None)
        self.cut = False
        self.fail_fast = fail_fast
        self.refreshes = 0

    async def _lost(self) -> None:
        if self.fail_fast:
            raise StoreUnavailable("etcd at http://127.0.0.1:1: connection refused")
        await asyncio.sleep(3600)

    async def refresh_lease(self, lease_id: int) -> int:
        self.refreshes += 1
        if self.cut:
            await self._lost()
        return await super().refresh_lease(lease_id)

    async def revoke_lease(self, lease_id: int) -> None:
        if self.cut:
            await self._lost()
        await super().revoke_lease(lease_id)


async def _time_to_loss(store: Unreachable, ttl: int) -> float:
    keeper = LeaseKeeper(store, ttl=ttl)
    await keeper.start()
    try:
        await asyncio.sleep(ttl / 3)  # a few refreshes go through first
        assert store.refreshes >= 1 and not keeper.lost.is_set()
        store.cut = True
        cut_at = time.monotonic()
        await asyncio.wait_for(keeper.lost.wait(), timeout=ttl)
        return time.monotonic() - cut_at
    finally:
        await keeper.stop(revoke=False)


async def test_a_hanging_refresh_gives_the_lease_up_within_half_a_ttl() -> None:
    took = await _time_to_loss(Unreachable(), ttl=2)
    assert took <= 2 / 2 + 0.1, took


async def test_failing_refreshes_are_retried_until_half_a_ttl() -> None:
    store = Unreachable(fail_fast=True)
    took = await _time_to_loss(store, ttl=2)
    # not at the first failure: the keeper retries (every ttl/6) until the deadline
    assert 2 / 2 - 2 / 6 - 0.05 <= took <= 2 / 2 + 0.1, took
    assert store.refreshes >= 3


async def test_stop_does_not_wait_for_a_revoke_that_hangs() -> None:
    store = Unreachable()
    keeper = LeaseKeeper(store, ttl=5, revoke_timeout=0.2)
    await keeper.start()
    store.cut = True
    started = time.monotonic()
    await keeper.stop(revoke=True)
    assert time.monotonic() - started < 0.5
