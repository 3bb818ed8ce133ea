"""The reconcile loop's debounce: a change after a quiet spell is planned at once, a burst of
changes still makes at most one pass per DEBOUNCE_SECONDS (controllers/manager.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry

from controlplane.controllers import manager
from controlplane.controllers.manager import DEBOUNCE_SECONDS, Controllers, debounce_delay
from controlplane.controllers.metrics import ControllerMetrics
from controlplane.registry import Registry
from controlplane.store.memory import MemoryStore


def test_debounce_delay_waits_only_for_what_is_left_of_the_spacing() -> None:
    assert debounce_delay(0.0) == pytest.approx(DEBOUNCE_SECONDS)
    assert debounce_delay(DEBOUNCE_SECONDS / 2) == pytest.approx(DEBOUNCE_SECONDS / 2)
    assert debounce_delay(DEBOUNCE_SECONDS) == 0.0
    assert debounce_delay(30.0) == 0.0


@pytest.fixture
async def registry() -> AsyncIterator[Registry]:
    reg = Registry(MemoryStore())
    await reg.start()
    try:
        yield reg
    finally:
        await reg.stop()


async def _until(check: object, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():  # type: ignore[operator]  # noqa: ASYNC110 -- polling a counter
            await asyncio.sleep(0.001)


async def test_loop_plans_at_once_after_a_quiet_spell_and_spaces_a_burst(
        registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    delays: list[float] = []

    def recorded(since_last_pass: float) -> float:
        delays.append(debounce_delay(since_last_pass))
        return delays[-1]

    monkeypatch.setattr(manager, "debounce_delay", recorded)
    controllers = Controllers(registry, registry.store, ControllerMetrics(CollectorRegistry()), identity="test")
    loop = asyncio.create_task(controllers._loop())
    try:
        await _until(lambda: controllers.passes == 1)
        await asyncio.sleep(DEBOUNCE_SECONDS * 2)  # quiet
        controllers.wake.set()
        await _until(lambda: controllers.passes == 2)
        assert delays == [0.0]  # planned without the debounce's wait
        while controllers.passes < 4:  # a burst: woken again right after each pass
            controllers.wake.set()
            await asyncio.sleep(0.001)
        assert len(delays) >= 3 and all(d > 0 for d in delays[1:3])
    finally:
        loop.cancel()
        with pytest.raises(asyncio.CancelledError):
            await loop
