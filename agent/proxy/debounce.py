"""Coalesce bursts of changes into few actions (re-render + reload of a proxy config).

Why this module exists: when a machine dies, dozens of Endpoints objects change in a
second. Reloading nginx for each one (what naive watchers do) costs a master re-parse,
new workers, and draining old ones per change; docker-gen waits 100-500 ms, Traefik
throttles to 2 s. Here a change calls :meth:`Debouncer.poke`; the action runs once the
changes have been quiet for ``quiet`` seconds, but never later than ``max_wait`` after
the first pending change, so a steady trickle still converges. Pokes that arrive while
the action runs schedule exactly one more run. The action is level-triggered: it should
read the latest state (render everything), not a per-change payload.

``clock`` and ``sleep`` are injectable so tests can drive virtual time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class Debouncer:
    def __init__(
        self,
        action: Callable[[], Awaitable[object]],
        *,
        quiet: float = 0.15,
        max_wait: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        if quiet < 0 or max_wait < quiet:
            raise ValueError("need 0 <= quiet <= max_wait")
        self.action = action
        self.quiet = quiet
        self.max_wait = max_wait
        self._clock = clock
        self._sleep = sleep
        self._first: float | None = None  # first pending poke not yet acted on
        self._last: float = 0.0
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.pokes = 0
        self.runs = 0

    @property
    def pending(self) -> bool:
        return self._first is not None

    def poke(self) -> None:
        """Record a change; the action will run after the burst settles. Needs a running loop."""
        if self._closed:
            return
        now = self._clock()
        self.pokes += 1
        self._last = now
        if self._first is None:
            self._first = now
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def flush(self) -> None:
        """Wait until every poke so far has been acted on (bounded by the pokes themselves)."""
        for _ in range(1000):
            task = self._task
            if task is None or task.done():
                if not self.pending or self._closed:
                    return
                self._task = asyncio.get_running_loop().create_task(self._loop())
                continue
            await asyncio.shield(task)

    async def close(self) -> None:
        """Stop: pending pokes are dropped; a running action is cancelled."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    def _deadline(self) -> float:
        assert self._first is not None
        return min(self._last + self.quiet, self._first + self.max_wait)

    async def _loop(self) -> None:
        # Each outer pass consumes every poke seen before the action starts; pokes during
        # the action make one more pass. The inner wait ends by max_wait at the latest.
        for _ in range(1_000_000):
            if self._first is None or self._closed:
                return
            for _ in range(10_000):
                remaining = self._deadline() - self._clock()
                if remaining <= 0:
                    break
                await self._sleep(remaining)
            self._first = None
            self.runs += 1
            try:
                await self.action()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("debounced action failed")
