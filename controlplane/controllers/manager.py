"""The controller manager: leader election, then the reconcile loop that applies plan_cluster.

Level-based (sample-controller): cache events and presence changes only wake the loop; each pass
re-reads the whole snapshot from the watch caches, plans (pure, cluster.py) and applies the
writes concurrently with compare-and-swap. A periodic resync covers anything missed, and a
failed pass is retried with backoff. Writes settle into this server's caches before the next
pass, so a pass never plans from state older than its own previous writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web

from controlplane.api.machines import PRESENCE_PREFIX
from controlplane.api.metrics import ApiMetrics
from controlplane.api.state import CONFIG, METRICS, REGISTRY, SERVICES, STORE
from controlplane.controllers.cluster import ClusterPlan, EventNote, plan_cluster
from controlplane.controllers.leader import campaign_forever, candidate_id
from controlplane.errors import AlreadyExists, Conflict, NotFound
from controlplane.registry import Registry, event_object, now_rfc3339
from controlplane.store.base import Store
from controlplane.watchcache import CacheEvent, WatchCache

log = logging.getLogger(__name__)
WRITE_CONCURRENCY = 128
PRESENCE = PRESENCE_PREFIX.rstrip("/")  # the watch cache's resource: keys presence/<machine>
RESYNC_SECONDS = 5.0
DEBOUNCE_SECONDS = 0.05
EVENT_MAX_AGE_SECONDS = 3600.0


def guarded(coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
    """Start a long-lived task that logs when it dies (kopf's aiotasks)."""

    async def run() -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("task %s died", name)
            raise

    return asyncio.create_task(run(), name=name)


class Controllers:
    """The leader's reconcile loop over one Registry."""

    def __init__(self, registry: Registry, store: Store, metrics: ApiMetrics, *, identity: str) -> None:
        self.registry = registry
        self.store = store
        self.metrics = metrics
        self.identity = identity
        self.wake = asyncio.Event()
        # which machines are present: the keys presence/<machine> that heartbeats keep on leases;
        # a DELETE (lease expired) wakes the pass at once, so failover takes the TTL, not a poll
        self.presence = WatchCache(store, PRESENCE)
        self.passes = 0
        self._event_tasks: set[asyncio.Task[None]] = set()

    def _on_cache_event(self, _event: CacheEvent) -> None:
        self.wake.set()

    async def lead(self, lost: asyncio.Event) -> None:
        self.presence = WatchCache(self.store, PRESENCE)
        await self.presence.start()  # listed before the first pass: nobody is NotReady by mistake
        self.presence.listeners.append(self._on_cache_event)
        listeners = [(cache, self._on_cache_event) for name, cache in self.registry.caches.items()
                     if name in ("machines", "units", "instances")]
        for cache, listener in listeners:
            cache.listeners.append(listener)
        loop = guarded(self._loop(), "reconcile")
        lost_wait = asyncio.ensure_future(lost.wait())
        try:
            await asyncio.wait({loop, lost_wait}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (loop, lost_wait):
                task.cancel()
            for task in (loop, lost_wait):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            for cache, listener in listeners:
                with contextlib.suppress(ValueError):
                    cache.listeners.remove(listener)
            await self.presence.stop()

    async def _loop(self) -> None:
        backoff = 0.05
        while True:
            self.wake.clear()
            try:
                await self.reconcile_once()
                backoff = 0.05
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reconcile pass failed; retrying in %.2f s", backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=RESYNC_SECONDS)
            await asyncio.sleep(DEBOUNCE_SECONDS)

    async def reconcile_once(self) -> ClusterPlan:
        reg = self.registry
        started = time.perf_counter()
        plan = plan_cluster(
            reg.objects("machines"), reg.objects("units"), reg.objects("instances"),
            reg.objects("endpoints"), set(self.presence.objects),
        )
        self.passes += 1
        self._record(plan)
        await self.apply(plan)
        self.metrics.schedule_seconds.observe(time.perf_counter() - started)
        self._gc_events()
        return plan

    def _record(self, plan: ClusterPlan) -> None:
        bound = len(plan.binds) + sum(1 for c in plan.creates if c["spec"]["machine"])
        bound += sum(1 for r in plan.replaces if r["spec"]["machine"])
        if bound:
            self.metrics.schedule_attempts.labels("scheduled").inc(bound)
        if plan.pending_reasons:
            self.metrics.schedule_attempts.labels("unschedulable").inc(len(plan.instance_status) or 1)
        self.metrics.pending.clear()
        for code, count in plan.pending_reasons.items():
            self.metrics.pending.labels(code).set(count)
        if plan.unbinds:
            self.metrics.reschedules.inc(len(plan.unbinds))
        states = {"Ready": 0, "NotReady": 0}
        for machine in self.registry.objects("machines"):
            state = (machine.get("status") or {}).get("state", "NotReady")
            if machine["metadata"]["name"] in plan.machines_not_ready:
                state = "NotReady"
            states[state] = states.get(state, 0) + 1
        for state, count in states.items():
            self.metrics.machines.labels(state).set(count)

    async def apply(self, plan: ClusterPlan) -> None:
        sem = asyncio.Semaphore(WRITE_CONCURRENCY)
        reg = self.registry

        async def bounded(call: Awaitable[Any]) -> None:
            async with sem:
                with contextlib.suppress(NotFound, AlreadyExists, Conflict):
                    await call

        def set_state(state: str) -> Callable[[dict[str, Any]], dict[str, Any] | None]:
            def change(obj: dict[str, Any]) -> dict[str, Any] | None:
                if (obj.get("status") or {}).get("state") == state:
                    return None
                obj.setdefault("status", {})["state"] = state
                return obj
            return change

        def unbind(machine: str) -> Callable[[dict[str, Any]], dict[str, Any] | None]:
            def change(obj: dict[str, Any]) -> dict[str, Any] | None:
                if obj["spec"].get("machine") != machine:
                    return None
                obj["spec"]["machine"] = ""
                obj["status"] = {**(obj.get("status") or {}), "phase": "Pending", "ready": False,
                                 "reason": "Rescheduled", "message": f"machine {machine} went away"}
                return obj
            return change

        def bind(machine: str, epoch: int) -> Callable[[dict[str, Any]], dict[str, Any] | None]:
            def change(obj: dict[str, Any]) -> dict[str, Any] | None:
                if obj["spec"].get("machine"):
                    return None  # bound meanwhile (another pass or leader): keep that binding
                obj["spec"]["machine"], obj["spec"]["epoch"] = machine, max(epoch, int(obj["spec"].get("epoch") or 0) + 1)
                obj["status"] = {**(obj.get("status") or {}), "phase": "Pending", "reason": "Scheduled",
                                 "message": f"bound to {machine}", "reasons": {}}
                return obj
            return change

        def replace_with(fresh: dict[str, Any]) -> Callable[[dict[str, Any]], dict[str, Any] | None]:
            def change(obj: dict[str, Any]) -> dict[str, Any] | None:
                obj["spec"] = fresh["spec"]
                obj["status"] = fresh["status"]
                return obj
            return change

        def set_status(status: dict[str, Any]) -> Callable[[dict[str, Any]], dict[str, Any] | None]:
            def change(obj: dict[str, Any]) -> dict[str, Any] | None:
                obj["status"] = status
                return obj
            return change

        # machines first, then unbinds, so nothing is placed on a machine being marked NotReady
        await asyncio.gather(*(bounded(reg.mutate("machines", m, set_state("NotReady")))
                               for m in plan.machines_not_ready))
        await asyncio.gather(*(bounded(reg.mutate("instances", u.instance, unbind(u.machine))) for u in plan.unbinds))
        await asyncio.gather(
            *(bounded(reg.delete("instances", name)) for name, _ in plan.deletes),
            bounded(reg.create_many("instances", plan.creates)),
            *(bounded(reg.mutate("instances", r["metadata"]["name"], replace_with(r))) for r in plan.replaces),
            *(bounded(reg.mutate("instances", b.instance, bind(b.machine, b.epoch))) for b in plan.binds),
            *(bounded(reg.mutate("instances", n, set_status(s))) for n, s in plan.instance_status.items()),
            *(bounded(reg.mutate("units", n, set_status(s))) for n, s in plan.unit_status.items()),
            *(bounded(self._write_endpoints(n, eps)) for n, eps in plan.endpoints.items()),
            *(bounded(reg.delete("endpoints", n)) for n in plan.endpoints_deleted),
        )
        for note in plan.events:
            self.emit(note)
        if plan.binds and len(plan.binds) <= 50:
            for b in plan.binds:
                self.emit(EventNote("Instance", b.instance, "Normal", "Scheduled", f"bound to machine {b.machine}"))

    async def _write_endpoints(self, unit: str, eps: list[dict[str, Any]]) -> None:
        reg = self.registry
        if reg.find("endpoints", unit) is None:
            try:
                await reg.create("endpoints", {"metadata": {"name": unit, "labels": {}, "annotations": {}},
                                               "endpoints": eps})
                return
            except AlreadyExists:
                pass

        def change(obj: dict[str, Any]) -> dict[str, Any] | None:
            if obj.get("endpoints") == eps:
                return None
            obj["endpoints"] = eps
            return obj

        await reg.mutate("endpoints", unit, change)

    def _background(self, call: Awaitable[Any]) -> None:
        """Best-effort writes (Events) that must not hold up the pass, as in Kubernetes."""

        async def run() -> None:
            with contextlib.suppress(Exception):
                await call

        task = asyncio.create_task(run())
        self._event_tasks.add(task)
        task.add_done_callback(self._event_tasks.discard)

    def emit(self, note: EventNote) -> None:
        """Record an Event in the background."""
        obj = event_object(note.kind, note.name, type_=note.type, reason=note.reason, message=note.message)
        self._background(self.registry.create("events", obj))

    def _gc_events(self) -> None:
        if self.passes % 50:
            return
        cutoff = now_rfc3339(lambda: time.time() - EVENT_MAX_AGE_SECONDS)
        for event in self.registry.objects("events")[:500]:
            if (event.get("timestamp") or "") < cutoff:
                self._background(self.registry.delete("events", event["metadata"]["name"]))


async def controller_context(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: campaign for leadership in the background for as long as the app runs."""
    config = app[CONFIG]
    metrics = app[METRICS]
    identity = candidate_id(str(config.get("listen", "")))
    controllers = Controllers(app[REGISTRY], app[STORE], metrics, identity=identity)
    app[SERVICES]["controllers"] = controllers
    ttl = int(config.get("leader_ttl") or config.get("machine_ttl") or 5)

    def on_change(leading: bool) -> None:
        metrics.is_leader.set(1 if leading else 0)
        metrics.leader_changes.inc()

    task = guarded(campaign_forever(app[STORE], identity=identity, ttl=ttl, lead=controllers.lead,
                                    on_change=on_change), "leader-election")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
