"""A fenced agent unfences (agent/agent.py ``unfence_loop``, agent/fencing.py) only once a list of
its instances from a list+watch round started after the API answered it has arrived, a random
share of the TTL after that answer; heartbeats go on while that list is pending."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest

import agent.agent as agent_module
from agent.agent import Agent, AgentConfig
from agent.fencing import UNFENCE_JITTER_TTLS, ListRounds, unfence_delay
from agent.runtime.fake import FakeRuntime
from controlplane.client import Client


def test_unfence_delay_is_a_random_share_of_half_the_ttl() -> None:
    assert unfence_delay(5.0, rand=0.0) == 0.0
    assert unfence_delay(5.0, rand=0.5) == pytest.approx(0.5 * UNFENCE_JITTER_TTLS * 5.0)
    assert unfence_delay(5.0, rand=0.999) < UNFENCE_JITTER_TTLS * 5.0
    assert unfence_delay(5.0, rand=7.0) == pytest.approx(UNFENCE_JITTER_TTLS * 5.0)  # bounded


async def test_a_fresh_list_is_one_of_a_round_started_after_the_ask() -> None:
    rounds, relist = ListRounds(), asyncio.Event()
    first = rounds.start()
    waiting = asyncio.create_task(rounds.fresh_list(relist))
    await asyncio.sleep(0)
    assert relist.is_set()
    rounds.arrived(first)  # the list of the round that was running before: not enough
    await asyncio.sleep(0)
    assert not waiting.done()
    rounds.arrived(rounds.start())
    await asyncio.wait_for(waiting, timeout=1)


class FakeApi:
    """Heartbeats always answered; each list of the agent's instances waits for ``release``."""

    def __init__(self) -> None:
        self.beats = 0
        self.lists = 0
        self.release = asyncio.Event()
        self.items: list[dict[str, Any]] = []

    async def heartbeat(self, machine: str, body: dict[str, Any], *, timeout: float | None = None) -> dict[str, Any]:
        self.beats += 1
        return {"leaseTTL": 0.4}

    async def list_all(self, resource: str, **kw: Any) -> tuple[list[dict[str, Any]], str]:
        self.lists += 1
        await self.release.wait()
        return list(self.items), "7"

    def watch(self, resource: str, **kw: Any) -> AsyncIterator[dict[str, Any]]:
        async def silent() -> AsyncIterator[dict[str, Any]]:
            await asyncio.Event().wait()
            yield {}
        return silent()


async def _until(check: Any) -> None:
    async with asyncio.timeout(5):
        while not check():  # noqa: ASYNC110 -- polling what the loops under test change
            await asyncio.sleep(0.005)


async def test_a_fenced_agent_unfences_after_a_fresh_list_and_beats_meanwhile(monkeypatch: pytest.MonkeyPatch) -> None:
    delays: list[float] = []

    def no_wait(ttl: float, *, rand: float) -> float:
        delays.append(unfence_delay(ttl, rand=rand))
        return 0.0

    monkeypatch.setattr(agent_module, "unfence_delay", no_wait)
    api = FakeApi()
    agent = Agent(cast(Client, api), FakeRuntime(images=[]), AgentConfig(machine="m1", address="127.0.1.1"))
    agent.ttl = 0.4
    agent.instances = {"old-0": {"metadata": {"name": "old-0"}, "spec": {"machine": "m1"}}}
    agent.fenced = True
    agent.fencing.set()
    tasks = [asyncio.create_task(loop()) for loop in (agent.heartbeat_loop, agent.unfence_loop, agent.watch_loop)]
    try:
        await _until(lambda: api.lists >= 2)  # the watch loop's first round, then the unfence's own
        beats = api.beats
        await _until(lambda: api.beats >= beats + 3)  # the pending list holds no heartbeat up
        assert agent.fenced and agent.fencing.is_set()
        api.items = [{"metadata": {"name": "new-0"}, "spec": {"machine": "m1"}}]
        api.release.set()
        await _until(lambda: not agent.fenced)
        assert set(agent.instances) == {"new-0"} and not agent.fencing.is_set()
        assert delays and all(0.0 <= d < UNFENCE_JITTER_TTLS * 0.4 for d in delays)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
