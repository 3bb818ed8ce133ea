"""Keep an etcd lease alive in the background and say when it is lost.

aetcd has no keepalive task, and the control plane needs one twice: the leader lease of
the API servers and (through heartbeats) machine presence. ``LeaseKeeper`` works on any
Store, so the memory store's tests exercise the same code.

    async with LeaseKeeper(store, ttl=10) as keeper:     # grants a lease (or pass lease_id=)
        await store.put("leader", b"me", lease=keeper.lease_id)
        await keeper.lost.wait()                          # set when the lease is gone

The keeper refreshes every ``ttl / 3`` seconds. The lease counts as lost when a refresh
says it no longer exists (NotFound), or when no refresh has succeeded for a whole TTL
(the store was unreachable: etcd has expired the lease by now or is about to). It then
stops refreshing, sets ``lost`` and calls ``on_lost`` once. On exit the task is cancelled
and, with ``revoke_on_exit`` (the default), the lease is revoked so its keys go at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from types import TracebackType

from controlplane.errors import NotFound, StoreUnavailable
from controlplane.store.base import Store

log = logging.getLogger(__name__)


class LeaseKeeper:
    """Refreshes one lease every ttl/3 until stopped or lost (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        *,
        ttl: int,
        lease_id: int | None = None,
        interval: float | None = None,
        on_lost: Callable[[], None] | None = None,
        revoke_on_exit: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.ttl = ttl
        self.lease_id = lease_id or 0
        self.interval = interval if interval is not None else max(ttl / 3, 0.05)
        self.on_lost = on_lost
        self.revoke_on_exit = revoke_on_exit
        self.lost = asyncio.Event()
        self.last_refresh = 0.0
        self._clock = clock
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> int:
        """Grant the lease if none was given, start refreshing; returns the lease id."""
        if not self.lease_id:
            self.lease_id = await self.store.grant_lease(self.ttl)
        self.last_refresh = self._clock()
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"lease-keeper-{self.lease_id:x}"
        )
        return self.lease_id

    async def stop(self, *, revoke: bool | None = None) -> None:
        """Stop refreshing; revoke the lease too (default: ``revoke_on_exit``) unless it is lost."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if (self.revoke_on_exit if revoke is None else revoke) and self.lease_id and not self.lost.is_set():
            with contextlib.suppress(NotFound, StoreUnavailable):
                await self.store.revoke_lease(self.lease_id)

    async def __aenter__(self) -> LeaseKeeper:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def _mark_lost(self, why: str) -> None:
        log.warning("lease %x lost: %s", self.lease_id, why)
        self.lost.set()
        if self.on_lost is not None:
            try:
                self.on_lost()
            except Exception:
                log.exception("on_lost callback of lease %x failed", self.lease_id)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.store.refresh_lease(self.lease_id)
            except NotFound:
                self._mark_lost("it expired or was revoked")
                return
            except StoreUnavailable as exc:
                if self._clock() - self.last_refresh >= self.ttl:
                    self._mark_lost(f"no refresh for {self.ttl} s: {exc}")
                    return
                log.info("refreshing lease %x failed, will retry: %s", self.lease_id, exc)
                continue
            except Exception as exc:  # keep going: one odd error must not drop leadership
                log.exception("refreshing lease %x failed", self.lease_id)
                if self._clock() - self.last_refresh >= self.ttl:
                    self._mark_lost(f"no refresh for {self.ttl} s: {exc!r}")
                    return
                continue
            self.last_refresh = self._clock()
