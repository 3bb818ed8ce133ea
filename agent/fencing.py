"""The agent's way back from a fence: a fresh list of its instances, a random while after the API answers.

A fenced machine (agent/agent.py: no API for ``fence_after`` seconds) has stopped its copies; what
was bound to it may have moved meanwhile, and its watch may be a dead connection. So it unfences
only once a list+watch round started after the API answered it again has listed its instances.
That round starts ``unfence_delay`` after the answer: an API server too slow to answer in time
fences many machines at once, they reach it again together, and listing at once (then restarting
every copy: status writes, Events) was the next storm (bench_scale's schedule burst).
"""

from __future__ import annotations

import asyncio

UNFENCE_JITTER_TTLS = 0.5  # a fenced machine re-lists within this share of the TTL after the API answered


def unfence_delay(ttl: float, *, rand: float) -> float:
    """PURE: seconds to wait before the unfencing re-list; ``rand`` is uniform in [0, 1)."""
    return min(max(rand, 0.0), 1.0) * UNFENCE_JITTER_TTLS * ttl


class ListRounds:
    """The list+watch rounds of the agent's instance mirror: the last one started, the last whose
    list arrived, and a wait for the list of a round started after the wait began."""

    def __init__(self) -> None:
        self.started = 0
        self.listed = 0
        self._arrived = asyncio.Event()

    def start(self) -> int:
        self.started += 1
        return self.started

    def arrived(self, round_: int) -> None:
        self.listed = max(self.listed, round_)
        self._arrived.set()

    async def fresh_list(self, relist: asyncio.Event) -> None:
        """Ask for a new round (``relist``, which the watch loop obeys) and return once its list arrived."""
        wanted = self.started + 1
        relist.set()
        while self.listed < wanted:
            self._arrived.clear()
            await self._arrived.wait()
