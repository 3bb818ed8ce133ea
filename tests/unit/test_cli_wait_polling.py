"""How often cpctl's wait polls (controlplane/cli/wait.py ``poll_interval``): often while a container
is most likely to turn ready, but the fast pace adds at most 80 reads/s whatever the number of
units; then the usual pace."""

from __future__ import annotations

import pytest

from controlplane.cli.wait import FAST_POLL_FOR, FAST_POLL_SECONDS, POLL_SECONDS, poll_interval


@pytest.mark.parametrize(("elapsed", "units", "pause"), [
    (0.0, 1, FAST_POLL_SECONDS),
    (FAST_POLL_FOR - 0.01, 2, 2 * FAST_POLL_SECONDS),
    (0.5, 10, POLL_SECONDS),  # ten units: two reads each, so the slow pace from the start
    (FAST_POLL_FOR, 1, POLL_SECONDS),
    (60.0, 1, POLL_SECONDS),
])
def test_poll_interval(elapsed: float, units: int, pause: float) -> None:
    assert poll_interval(elapsed, units) == pytest.approx(pause)


def test_the_fast_pace_stays_bounded() -> None:
    for units in range(1, 20):
        fast, usual = 2 * units / poll_interval(0.0, units), 2 * units / poll_interval(FAST_POLL_FOR, units)
        assert usual <= fast <= max(usual, 2 / FAST_POLL_SECONDS) + 1e-9
