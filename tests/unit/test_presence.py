"""Cheap presence (api/presence.py) and the heartbeat parse memo (api/machines.py): a heartbeat of
a known machine is one keepalive, a lost lease is replaced by one carrying the presence key, and
an unchanged body is not validated again but still answers as a fresh parse would."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from controlplane.api import machines
from controlplane.api.auth import User
from controlplane.api.presence import PresenceLeases, keep_presence
from controlplane.errors import Invalid
from controlplane.model import presence_key
from controlplane.store.memory import MemoryStore


class Counting(MemoryStore):
    """A memory store that counts the presence work's calls."""

    def __init__(self) -> None:
        super().__init__(reap_interval=None)
        self.calls: list[str] = []

    async def get(self, key: str) -> Any:
        self.calls.append("get")
        return await super().get(key)

    async def refresh_lease(self, lease_id: int, *, bulk: bool = False) -> int:
        self.calls.append("refresh" if bulk else "refresh (not bulk)")  # presence is the bulk kind
        return await super().refresh_lease(lease_id)

    async def grant_lease(self, ttl: int) -> int:
        self.calls.append("grant")
        return await super().grant_lease(ttl)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_known_lease_until_verify_is_due_and_forget_only_that_lease() -> None:
    clock = Clock()
    leases = PresenceLeases(verify_after=30, clock=clock)
    assert leases.lease_to_refresh("m1") == 0
    leases.remember("m1", 7)
    assert leases.lease_to_refresh("m1") == 7
    clock.now += 29.9
    assert leases.lease_to_refresh("m1") == 7
    clock.now += 0.1
    assert leases.lease_to_refresh("m1") == 0  # the full path is due
    leases.remember("m1", 8)
    leases.forget("m1", 7)  # an older lease: the newer one stays
    assert leases.lease_to_refresh("m1") == 8
    leases.forget("m1", 8)
    assert leases.lease_to_refresh("m1") == 0
    assert len(leases) == 0


def test_second_heartbeat_is_one_keepalive() -> None:
    async def scenario() -> None:
        store = Counting()
        leases = PresenceLeases()
        first = await keep_presence(store, leases, "m1", 5)
        assert store.calls == ["get", "grant"]
        kv = await store.get(presence_key("m1"))
        assert kv is not None and kv.lease == first
        store.calls.clear()
        assert await keep_presence(store, leases, "m1", 5) == first
        assert store.calls == ["refresh"]

    asyncio.run(scenario())


def test_lost_lease_is_replaced_and_the_key_attached() -> None:
    async def scenario() -> None:
        store = Counting()
        leases = PresenceLeases()
        first = await keep_presence(store, leases, "m1", 5)
        await store.revoke_lease(first)  # as when it expired: the key goes with it
        assert await store.get(presence_key("m1")) is None
        second = await keep_presence(store, leases, "m1", 5)
        assert second != first
        kv = await store.get(presence_key("m1"))
        assert kv is not None and kv.lease == second
        assert leases.lease_to_refresh("m1") == second

    asyncio.run(scenario())


def test_another_servers_lease_is_adopted() -> None:
    async def scenario() -> None:
        store = Counting()
        ours, theirs = PresenceLeases(), PresenceLeases()
        first = await keep_presence(store, ours, "m1", 5)
        await store.revoke_lease(first)
        replaced = await keep_presence(store, theirs, "m1", 5)  # the machine beat to the other server
        assert await keep_presence(store, ours, "m1", 5) == replaced
        assert ours.lease_to_refresh("m1") == replaced

    asyncio.run(scenario())


def test_a_key_gone_behind_a_live_lease_comes_back_at_the_check() -> None:
    async def scenario() -> None:
        store = Counting()
        clock = Clock()
        leases = PresenceLeases(verify_after=30, clock=clock)
        lease = await keep_presence(store, leases, "m1", 5)
        await store.delete(presence_key("m1"))
        assert await keep_presence(store, leases, "m1", 5) == lease  # not seen yet: no read
        clock.now += 30
        renewed = await keep_presence(store, leases, "m1", 5)
        kv = await store.get(presence_key("m1"))
        assert kv is not None and kv.lease == renewed

    asyncio.run(scenario())


NODE = User(name="node-m1", role="node", machine="m1")
BODY = {"address": "10.0.0.1", "capacity": {"cpu": 2, "memoryMB": 512}, "agentVersion": "t", "labels": {"a": "b"}}


def test_equal_body_text_is_parsed_once_and_answers_a_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    parses: list[str] = []
    real = machines._parse_heartbeat

    def counted(user: User, name: str, body: Any) -> dict[str, Any]:
        parses.append(name)
        return real(user, name, body)

    monkeypatch.setattr(machines, "_parse_heartbeat", counted)
    memo = machines.ParsedBeats()
    first = memo.parse(NODE, "m1", json.dumps(BODY))
    first["status"]["lastHeartbeatTime"] = "changed by the caller"
    second = memo.parse(NODE, "m1", json.dumps(BODY))
    assert parses == ["m1"]
    assert second == real(NODE, "m1", dict(BODY))
    memo.parse(NODE, "m1", json.dumps({**BODY, "address": "10.0.0.2"}))
    assert parses == ["m1", "m1"]
    other = User(name="admin", role="admin")
    memo.parse(other, "m1", json.dumps({**BODY, "address": "10.0.0.2"}))  # another user: checked for that user
    assert len(parses) == 3


def test_invalid_body_is_refused_every_time() -> None:
    memo = machines.ParsedBeats()
    bad = {**BODY, "labels": {"controlplane.io/role": "x"}}
    for _ in range(2):
        with pytest.raises(Invalid, match="controlplane.io/"):
            memo.parse(NODE, "m1", json.dumps(bad))
