"""Keep an etcd lease alive in the background and say when it is lost.

aetcd has no keepalive task, and the control plane needs one twice: the leader lease of
the API servers and (through heartbeats) machine presence. ``LeaseKeeper`` works on any
Store, so the memory store's tests exercise the same code.

    async with LeaseKeeper(store, ttl=10) as keeper:     # grants a lease (or pass lease_id=)
        await store.put("leader", b"me", lease=keeper.lease_id)
        await keeper.lost.wait()                          # set when the lease is gone

The keeper refreshes every ``ttl / 6`` seconds. The lease counts as lost when a refresh says
it no longer exists (NotFound), or when no refresh has been confirmed for ``ttl / 2`` seconds
(``step_down_after``), measured from when the last confirmed refresh was *sent*: etcd restarts
the TTL no earlier than that, so the lease cannot expire there -- and no other server can be
granted the key it holds -- before this keeper has given it up, with half a TTL to spare for
stopping whatever the lease guards. A refresh that hangs (etcd unreachable, packets dropped) is
abandoned at that deadline; it never delays the verdict. The keeper then stops refreshing, sets
``lost`` and calls ``on_lost`` once. On exit the task is cancelled and, with ``revoke_on_exit``
(the default), the lease is revoked so its keys go at once -- within ``revoke_timeout`` seconds,
else it is left to expire (an exit never waits on an unreachable etcd).
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
    """Refreshes one lease every ttl/6 until stopped or lost (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        *,
        ttl: int,
        lease_id: int | None = None,
        interval: float | None = None,
        step_down_after: float | None = None,
        on_lost: Callable[[], None] | None = None,
        revoke_on_exit: bool = True,
        revoke_timeout: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.ttl = ttl
        self.lease_id = lease_id or 0
        self.interval = interval if interval is not None else max(ttl / 6, 0.05)
        self.step_down_after = step_down_after if step_down_after is not None else ttl / 2
        self.on_lost = on_lost
        self.revoke_on_exit = revoke_on_exit
        self.revoke_timeout = revoke_timeout
        self.lost = asyncio.Event()
        self.gone = False  # etcd said the lease no longer exists (nothing left to revoke)
        self.last_refresh = 0.0  # when the last confirmed refresh (or the grant) was sent
        self._clock = clock
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> int:
        """Grant the lease if none was given, start refreshing; returns the lease id."""
        asked = self._clock()
        if not self.lease_id:
            self.lease_id = await self.store.grant_lease(self.ttl)
        self.last_refresh = asked
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"lease-keeper-{self.lease_id:x}"
        )
        return self.lease_id

    async def stop(self, *, revoke: bool | None = None) -> None:
        """Stop refreshing; revoke the lease too (default: ``revoke_on_exit``) unless it is gone."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if (self.revoke_on_exit if revoke is None else revoke) and self.lease_id and not self.gone:
            try:
                async with asyncio.timeout(self.revoke_timeout):
                    await self.store.revoke_lease(self.lease_id)
            except (NotFound, StoreUnavailable, TimeoutError) as exc:
                log.info("lease %x not revoked (%s); it expires within %d s", self.lease_id,
                         type(exc).__name__, self.ttl)

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
            deadline = self.last_refresh + self.step_down_after
            await asyncio.sleep(max(0.0, min(self.interval, deadline - self._clock())))
            if self._clock() >= deadline:
                self._mark_lost(f"no refresh confirmed for {self.step_down_after:g} s")
                return
            sent = self._clock()
            try:
                async with asyncio.timeout(deadline - sent):
                    await self.store.refresh_lease(self.lease_id)
            except NotFound:
                self.gone = True
                self._mark_lost("it expired or was revoked")
                return
            except (StoreUnavailable, TimeoutError) as exc:  # retried until the deadline
                log.info("refreshing lease %x failed, will retry: %s", self.lease_id, exc or "no answer")
                continue
            except Exception:  # keep going: one odd error must not drop leadership before the deadline
                log.exception("refreshing lease %x failed", self.lease_id)
                continue
            self.last_refresh = sent
