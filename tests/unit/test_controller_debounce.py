"""The reconcile loop's debounce (controllers/manager.py): a change after a quiet spell is planned
at once; a burst of changes still makes at most one pass per DEBOUNCE_SECONDS, but a unit created
or respecified after a pass that wrote nothing skips the wait, never twice in a row."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from controlplane.controllers import manager
from controlplane.controllers.manager import (
    DEBOUNCE_SECONDS,
    PLAN_SPACING_FACTOR,
    PLAN_SPACING_MAX,
    Controllers,
    debounce_delay,
    is_new_work,
    skips_debounce,
)
from controlplane.controllers.metrics import ControllerMetrics
from controlplane.registry import Registry
from controlplane.watchcache import CacheEvent


def test_debounce_delay_waits_only_for_what_is_left_of_the_spacing() -> None:
    assert debounce_delay(0.0) == pytest.approx(DEBOUNCE_SECONDS)
    assert debounce_delay(DEBOUNCE_SECONDS / 2) == pytest.approx(DEBOUNCE_SECONDS / 2)
    assert debounce_delay(DEBOUNCE_SECONDS) == 0.0
    assert debounce_delay(30.0) == 0.0


def test_a_pass_that_took_long_to_plan_spaces_the_next_by_a_multiple_of_it() -> None:
    cheap = DEBOUNCE_SECONDS / PLAN_SPACING_FACTOR / 2  # a small cluster: the debounce as before
    assert debounce_delay(0.0, planned=cheap) == pytest.approx(DEBOUNCE_SECONDS)
    assert debounce_delay(0.0, planned=0.05) == pytest.approx(PLAN_SPACING_FACTOR * 0.05)
    assert debounce_delay(0.15, planned=0.05) == pytest.approx(PLAN_SPACING_FACTOR * 0.05 - 0.15)
    assert debounce_delay(PLAN_SPACING_FACTOR * 0.05, planned=0.05) == 0.0
    assert debounce_delay(0.0, planned=30.0) == pytest.approx(PLAN_SPACING_MAX)  # capped


@pytest.mark.parametrize(("settled", "new_work", "skipped_last", "skips"), [
    (True, True, False, True),
    (True, True, True, False),  # never twice in a row
    (False, True, False, False),  # the last pass wrote: the check pass that follows waits as before
    (True, False, False, False),  # a status write, a heartbeat's machine change: as before
])
def test_skips_debounce(settled: bool, new_work: bool, skipped_last: bool, skips: bool) -> None:
    assert skips_debounce(settled=settled, new_work=new_work, skipped_last=skipped_last) is skips


def unit_event(type_: str, generation: int, *, before: int | None = None, kind: str = "Unit") -> CacheEvent:
    previous = None if before is None else {"kind": kind, "metadata": {"name": "web", "generation": before}}
    return CacheEvent(7, type_, {"kind": kind, "metadata": {"name": "web", "generation": generation}}, previous)


def test_new_work_is_a_unit_created_or_respecified() -> None:
    assert is_new_work(unit_event("ADDED", 1))
    assert is_new_work(unit_event("MODIFIED", 2, before=1))
    assert not is_new_work(unit_event("MODIFIED", 2, before=2))  # its status only
    assert not is_new_work(unit_event("DELETED", 2, before=2))
    assert not is_new_work(unit_event("ADDED", 1, kind="Instance"))


async def _until(check: object, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():  # type: ignore[operator]  # noqa: ASYNC110 -- polling a counter
            await asyncio.sleep(0.001)


async def test_loop_plans_at_once_after_a_quiet_spell_and_spaces_a_burst(
        registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    delays: list[float] = []

    def recorded(since_last_pass: float, *, planned: float) -> float:
        delays.append(debounce_delay(since_last_pass, planned=planned))
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


async def test_a_new_unit_right_after_a_settled_pass_is_planned_at_once_but_not_twice(
        registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    decisions: list[bool] = []

    def recorded(**kw: bool) -> bool:
        decisions.append(skips_debounce(**kw))
        return decisions[-1]

    monkeypatch.setattr(manager, "skips_debounce", recorded)
    controllers = Controllers(registry, registry.store, ControllerMetrics(CollectorRegistry()), identity="test")
    loop = asyncio.create_task(controllers._loop())
    try:
        await _until(lambda: controllers.passes == 1)  # an empty registry: every pass writes nothing
        controllers._on_cache_event(unit_event("ADDED", 1))
        await _until(lambda: controllers.passes == 2)
        controllers._on_cache_event(unit_event("ADDED", 1))
        await _until(lambda: controllers.passes == 3)
        assert decisions == [True, False]  # the second waited out the debounce
    finally:
        loop.cancel()
        with pytest.raises(asyncio.CancelledError):
            await loop
