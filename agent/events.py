"""The agent's Events about its own instances (the kubelet's: Pulled, Created, Started, Ready, Killing).

Recording must never slow the sync loop, so ``record`` only puts a note on a bounded queue
(QUEUE_MAX; a note that finds it full is dropped and counted) and one task sends the notes in
order. The API server counts repeats on the Event they repeat (controlplane/events.py) and lets a
node write only the reasons in AGENT_EVENT_REASONS about instances bound to it; it limits each node
to a few Events a second, so a 429 is waited out (RETRY_SECONDS, up to RETRY_ATTEMPTS times)
before that note is dropped. Any other failure drops the note: Events are best effort.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

from controlplane.client import Client
from controlplane.errors import CPError, TooManyRequests
from controlplane.model import AGENT_EVENT_REASONS, event_object

log = logging.getLogger(__name__)
QUEUE_MAX = 256
RETRY_ATTEMPTS = 10
RETRY_SECONDS = 0.5


@dataclass(frozen=True)
class EventNote:
    instance: str
    reason: str
    message: str
    type: str = "Normal"


class EventSender:
    """A bounded queue of Event notes about this machine's instances, and the task that sends them."""

    def __init__(self, client: Client, *, maxsize: int = QUEUE_MAX,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.client = client
        self.queue: asyncio.Queue[EventNote] = asyncio.Queue(maxsize=maxsize)
        self.sleep = sleep
        self.dropped = 0  # notes that found the queue full, or whose write failed
        self.sent = 0

    def record(self, instance: str, reason: str, message: str, *, type_: str = "Normal") -> None:
        """Queue an Event about ``instance``; never waits (a full queue drops it)."""
        if reason not in AGENT_EVENT_REASONS:
            raise ValueError(f"the agent does not write Events with reason {reason!r}")
        try:
            self.queue.put_nowait(EventNote(instance, reason, message, type_))
        except asyncio.QueueFull:
            self.dropped += 1
            log.debug("event queue full: dropped %s on %s", reason, instance)

    async def send(self, note: EventNote) -> bool:
        """One note to the API; True when it was written (or counted on an earlier one)."""
        obj = event_object("Instance", note.instance, type_=note.type, reason=note.reason, message=note.message)
        for _attempt in range(RETRY_ATTEMPTS):
            try:
                await self.client.create("events", cast(dict[str, Any], obj))
                return True
            except TooManyRequests:
                await self.sleep(RETRY_SECONDS)
            except (CPError, OSError, TimeoutError) as err:
                log.debug("event %s on %s not written: %s", note.reason, note.instance, err)
                return False
        return False

    async def run(self) -> None:
        while True:
            note = await self.queue.get()
            try:
                written = await self.send(note)
            except asyncio.CancelledError:
                raise
            except Exception:  # an Event must never take the agent down with it
                log.exception("event %s on %s not written", note.reason, note.instance)
                written = False
            if written:
                self.sent += 1
            else:
                self.dropped += 1
