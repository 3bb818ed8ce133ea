"""The agent's heartbeat cadence (agent/agent.py ``next_beat_in``): a beat starts every TTL/4, a
slow failure is retried at once, a slow success never makes the agent ask more often."""

from __future__ import annotations

import pytest

from agent.agent import RETRY_AFTER_SLOW_FAILURE, next_beat_in


@pytest.mark.parametrize(("ttl", "elapsed", "ok", "expected"), [
    (5, 0.01, True, 1.24),      # fast answer: the rest of the 1.25 s period
    (5, 0.01, False, 1.24),     # fast refusal (connection refused): the period too, no hammering
    (5, 1.0, True, 0.625),      # slow answer: at least half a period
    (5, 1.67, True, 0.625),
    (5, 1.67, False, RETRY_AFTER_SLOW_FAILURE),  # timed out: try again at once, the fence is near
    (2, 0.1, True, 0.4),        # short test TTLs: 0.5 s period
    (30, 0.01, True, 7.49),     # no one-second cap: a long TTL buys the load down
    (0.2, 0.0, True, 0.1),      # the period's floor
])
def test_next_beat_in(ttl: float, elapsed: float, ok: bool, expected: float) -> None:
    assert next_beat_in(ttl, elapsed, ok=ok) == pytest.approx(expected)


def test_two_more_tries_fit_before_the_fence_after_slow_failures() -> None:
    """Success at 0, then beats that each time out after TTL/3 (the agent's heartbeat timeout):
    before the fence at 0.8 x TTL there are still two more tries, the last starting in time."""
    ttl, timeout, fence = 5.0, 5.0 / 3, 0.8 * 5.0
    now, starts = 0.0, []
    now += next_beat_in(ttl, 0.01, ok=True)
    while now < fence:
        starts.append(now)
        now += timeout
        now += next_beat_in(ttl, timeout, ok=False)
    assert len(starts) >= 2
    assert starts[1] < fence - 0.5
