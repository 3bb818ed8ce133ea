"""The readiness state machine and the Prober's bookkeeping (probes faked, clock injected)."""

from __future__ import annotations

import pytest

from agent.health import Prober, ProbeResult, ProbeSpec, ProbeState, ProbeTarget
from agent.runtime.base import ExecResult
from agent.runtime.fake import FakeRuntime

OK, BAD = ProbeResult(True, "ok"), ProbeResult(False, "bad")


def run(results: list[ProbeResult], threshold: int = 3) -> list[bool]:
    state, seen = ProbeState(), []
    for r in results:
        state = state.record(r, failure_threshold=threshold)
        seen.append(state.ready)
    return seen


@pytest.mark.parametrize(
    ("results", "expected"),
    [
        ([BAD, BAD, OK], [False, False, True]),
        ([OK, BAD, BAD], [True, True, True]),
        ([OK, BAD, BAD, BAD], [True, True, True, False]),
        ([OK, BAD, BAD, OK, BAD, BAD], [True, True, True, True, True, True]),
        ([OK, BAD, BAD, BAD, OK], [True, True, True, False, True]),
    ],
)
def test_ready_after_first_success_unready_after_threshold(results: list[ProbeResult], expected: list[bool]) -> None:
    assert run(results) == expected


def test_counters_and_ever_ready() -> None:
    s = ProbeState().record(OK, failure_threshold=1).record(BAD, failure_threshold=1)
    assert (s.ready, s.ever_ready, s.failures, s.successes, s.last_message) == (False, True, 1, 0, "bad")


def test_probe_spec_from_health() -> None:
    assert ProbeSpec.from_health({"http": {"path": "/z", "port": 8080}, "periodSeconds": 5}) == ProbeSpec(
        "http", port=8080, path="/z", period=5.0
    )
    assert ProbeSpec.from_health({"tcp": {"port": 53}, "failureThreshold": 1}).failure_threshold == 1
    assert ProbeSpec.from_health({"exec": {"command": ["true"]}}).command == ("true",)
    with pytest.raises(ValueError):
        ProbeSpec.from_health({"periodSeconds": 1})


async def test_prober_exec_probe_with_period_and_reset() -> None:
    now = [100.0]
    runtime = FakeRuntime(images=["img"])
    from agent.runtime.base import ContainerSpec

    c = await runtime.create_and_start(ContainerSpec(name="x", image="img"))
    runtime.exec_results[("check",)] = ExecResult(1, b"nope")
    prober = Prober(runtime, clock=lambda: now[0])
    spec = ProbeSpec("exec", command=("check",), period=2.0, failure_threshold=2)
    prober.update({"x-0": ProbeTarget("x-0", c.id, c.started_at, spec, "", 0)})
    assert prober.ready("x-0") is False and prober.ready("other") is None
    assert await prober.tick() == []
    runtime.exec_results[("check",)] = ExecResult(0, b"")
    assert await prober.tick() == []  # not due yet: period 2 s
    now[0] += 2
    assert await prober.tick() == ["x-0"] and prober.ready("x-0") is True
    # Same container: state kept. Restarted container: starts over unready.
    prober.update({"x-0": ProbeTarget("x-0", c.id, c.started_at, spec, "", 0)})
    assert prober.ready("x-0") is True
    prober.update({"x-0": ProbeTarget("x-0", c.id, 999.0, spec, "", 0)})
    assert prober.ready("x-0") is False
    prober.update({})
    assert prober.ready("x-0") is None


async def test_a_probe_in_flight_counts_when_the_same_target_is_updated_meanwhile() -> None:
    """Syncs re-send the targets often (every Docker event used to wake one): an equal target must
    not make the prober drop the result of the probe already running for it."""
    import asyncio

    from agent.runtime.base import ContainerSpec

    runtime = FakeRuntime(images=["img"])
    c = await runtime.create_and_start(ContainerSpec(name="x", image="img"))
    release = asyncio.Event()

    class SlowProber(Prober):
        async def probe(self, target: ProbeTarget) -> ProbeResult:
            await release.wait()
            return ProbeResult(True, "ok")

    prober = SlowProber(runtime)
    spec = ProbeSpec("exec", command=("check",), period=2.0)
    prober.update({"x-0": ProbeTarget("x-0", c.id, c.started_at, spec, "", 0)})
    tick = asyncio.create_task(prober.tick())
    await asyncio.sleep(0)
    prober.update({"x-0": ProbeTarget("x-0", c.id, c.started_at, spec, "", 0)})  # a sync, nothing changed
    release.set()
    assert await tick == ["x-0"] and prober.ready("x-0") is True
