"""Leader election (controllers/leader.py) on the in-memory store."""

from __future__ import annotations

import asyncio
import contextlib

from controlplane.controllers.leader import LEADER_KEY, campaign_forever
from controlplane.errors import StoreUnavailable
from controlplane.store.memory import MemoryStore


class CreateCommitsThenFails(MemoryStore):
    """The first create of the leader key is committed, but the caller hears StoreUnavailable
    (a timeout after etcd applied the write)."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = False

    async def create(self, key: str, value: bytes, *, lease: int = 0) -> int:
        revision = await super().create(key, value, lease=lease)
        if key == LEADER_KEY and not self.failed:
            self.failed = True
            raise StoreUnavailable("etcd timed out")
        return revision


async def test_a_leader_key_created_by_a_failed_campaign_does_not_block_election_forever():
    store = CreateCommitsThenFails()
    leading = asyncio.Event()

    async def lead(lost: asyncio.Event) -> None:
        leading.set()
        await lost.wait()

    task = asyncio.create_task(campaign_forever(store, identity="a", ttl=1, lead=lead))
    try:
        # the failed attempt's lease must not be kept alive: the key goes, and the next try wins
        await asyncio.wait_for(leading.wait(), timeout=5)
        assert store.failed
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
