"""Which machines are present: the keys ``presence/<machine>`` that heartbeats keep on leases.

The leader lists them and follows one watch; a DELETE (lease expired) wakes the controllers
at once, which is what makes failover take the machine TTL rather than a polling period.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from controlplane.api.machines import PRESENCE_PREFIX
from controlplane.errors import Gone
from controlplane.store.base import Store

log = logging.getLogger(__name__)


class PresenceTracker:
    def __init__(self, store: Store, *, on_change: Callable[[], None] = lambda: None) -> None:
        self.store = store
        self.present: set[str] = set()
        self.on_change = on_change
        self.synced = asyncio.Event()

    async def run(self) -> None:
        while True:
            try:
                items, revision = await self.store.range(PRESENCE_PREFIX)
                self.present = {kv.key[len(PRESENCE_PREFIX):] for kv in items}
                self.synced.set()
                self.on_change()
                async for event in self.store.watch(PRESENCE_PREFIX, start_revision=revision + 1):
                    name = event.kv.key[len(PRESENCE_PREFIX):]
                    if event.type == "PUT":
                        self.present.add(name)
                    else:
                        self.present.discard(name)
                    self.on_change()
            except asyncio.CancelledError:
                raise
            except Gone:
                continue
            except Exception:
                log.exception("presence watch failed; re-listing")
                await asyncio.sleep(0.5)
