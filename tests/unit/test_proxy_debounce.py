"""agent.proxy.debounce under virtual time: bursts coalesce, trickles still converge."""

from __future__ import annotations

import asyncio

import pytest

from agent.proxy.debounce import Debouncer


class VirtualTime:
    """A clock the test advances; ``sleep`` waits until the test has advanced far enough."""

    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        target = self.now + seconds
        for _ in range(1_000_000):
            if self.now >= target:
                return
            await asyncio.sleep(0)
        raise AssertionError("virtual time stopped advancing")

    async def advance(self, seconds: float, step: float = 0.001) -> None:
        for _ in range(round(seconds / step)):
            self.now += step
            for _ in range(3):
                await asyncio.sleep(0)


async def run_pattern(gaps: list[float], *, quiet: float = 0.15, max_wait: float = 1.0) -> list[float]:
    vt = VirtualTime()
    ran: list[float] = []

    async def action() -> None:
        ran.append(vt.now)

    d = Debouncer(action, quiet=quiet, max_wait=max_wait, clock=vt.clock, sleep=vt.sleep)
    for gap in gaps:
        await vt.advance(gap)
        d.poke()
    await vt.advance(max_wait + quiet + 0.1)
    await d.flush()
    await d.close()
    assert d.pokes == len(gaps)
    return ran


async def test_burst_of_50_is_one_run() -> None:
    ran = await run_pattern([0.0] + [0.002] * 49)  # 50 changes within 0.1 s
    assert len(ran) == 1
    assert ran[0] == pytest.approx(0.098 + 0.15, abs=0.005)  # after the quiet period


async def test_steady_trickle_is_capped_by_max_wait() -> None:
    ran = await run_pattern([0.05] * 50)  # a change every 50 ms for 2.5 s: never quiet
    assert 2 <= len(ran) <= 4
    assert ran[0] == pytest.approx(0.05 + 1.0, abs=0.005)  # max_wait after the first change


async def test_separate_bursts_run_separately() -> None:
    ran = await run_pattern([0.0, 0.01, 0.5, 0.01])
    assert len(ran) == 2


async def test_pokes_during_action_cause_exactly_one_more_run() -> None:
    runs = 0
    gate = asyncio.Event()

    async def action() -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            await gate.wait()

    d = Debouncer(action, quiet=0.0, max_wait=0.0)
    d.poke()
    for _ in range(10):
        await asyncio.sleep(0)
    assert runs == 1
    for _ in range(20):
        d.poke()
    gate.set()
    await d.flush()
    assert runs == 2
    await d.close()


async def test_action_error_does_not_stop_the_debouncer() -> None:
    calls = 0

    async def action() -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("boom")

    d = Debouncer(action, quiet=0.0, max_wait=0.0)
    d.poke()
    await d.flush()
    d.poke()
    await d.flush()
    assert calls == 2
    await d.close()


def test_rejects_bad_parameters() -> None:
    async def action() -> None:
        return None

    with pytest.raises(ValueError):
        Debouncer(action, quiet=2.0, max_wait=1.0)
