"""The controller manager: leader election, then the reconcile loop that applies plan_cluster.

Level-based (sample-controller): cache events and presence changes only wake the loop; each pass
re-reads the whole snapshot from the watch caches, plans (pure, cluster.py) and applies the
writes concurrently with compare-and-swap (writers.py). A periodic resync covers anything
missed, and a pass that failed, or whose writes failed for a reason other than a refusal, is
retried with backoff. Writes settle into this server's caches before the next pass, so a pass
never plans from state older than its own previous writes.

A refused write (NotFound, AlreadyExists, Conflict: the object changed under the plan) is
expected and the next pass plans from the new state; it is logged at info and counted
(``cp_controller_refused_writes``) like any other failed write, and never stops the rest of
the pass. This module knows nothing of the API: the process shell (api/leadership.py) hands it
the registry, the store, its metrics, the lease TTL and its identity.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Sequence
from typing import Any, cast

from controlplane import timeline
from controlplane.controllers.cluster import ClusterPlan, EventNote, Write, WriteOp, plan_cluster
from controlplane.controllers.failures import PERMANENT, WriteFailure, failure_of, with_failure
from controlplane.controllers.leader import campaign_forever
from controlplane.controllers.metrics import ControllerMetrics
from controlplane.controllers.writers import Change, apply_batch, batches
from controlplane.errors import AlreadyExists, Conflict, CPError, NotFound, PartialFailure
from controlplane.events import last_seen, record_event
from controlplane.model import PRESENCE_RESOURCE, event_object, now_rfc3339
from controlplane.registry import Registry
from controlplane.store.base import Store
from controlplane.tasks import guarded
from controlplane.watchcache import CacheEvent, WatchCache

log = logging.getLogger(__name__)
WRITE_CONCURRENCY = 128
RESYNC_SECONDS = 5.0
DEBOUNCE_SECONDS = 0.05  # between the end of one pass and the start of the next (see skips_debounce)
# ... and at least this many times what the last pass took to plan (at most PLAN_SPACING_MAX): a
# pass re-plans the whole cluster on the event loop (~25-50 ms at 1,000 machines), so at one pass
# per DEBOUNCE_SECONDS a burst of status writes had the controllers take half of the API server
PLAN_SPACING_FACTOR = 4.0
PLAN_SPACING_MAX = 1.0
EVENT_MAX_AGE_SECONDS = 3600.0
DEFAULT_LEADER_TTL = 5
# the object changed under the plan: the next pass plans from the new state
REFUSALS = (NotFound, AlreadyExists, Conflict)
# applied one phase after the other, so nothing is placed on a machine being marked NotReady
# and an instance is unbound before anything else touches it; each phase's writes run at once
PHASES: tuple[frozenset[WriteOp], ...] = (
    frozenset({WriteOp.MARK_NOT_READY}),
    frozenset({WriteOp.UNBIND}),
    frozenset(WriteOp) - {WriteOp.MARK_NOT_READY, WriteOp.UNBIND},
)


class Controllers:
    """The leader's reconcile loop over one Registry."""

    def __init__(self, registry: Registry, store: Store, metrics: ControllerMetrics, *, identity: str,
                 ttl: int = DEFAULT_LEADER_TTL) -> None:
        self.registry = registry
        self.store = store
        self.metrics = metrics
        self.identity = identity
        self.ttl = ttl
        self.wake = asyncio.Event()
        self.new_work = False  # a unit was created or respecified since the last pass began
        # which machines are present: the keys presence/<machine> that heartbeats keep on leases;
        # a DELETE (lease expired) wakes the pass at once, so failover takes the TTL, not a poll
        self.presence = WatchCache(store, PRESENCE_RESOURCE)
        self.passes = 0
        self.plan_seconds = 0.0  # what the last pass took to plan: spaces the next (debounce_delay)
        self.failed_writes = 0  # of the last pass, refusals not included
        self._event_tasks: set[asyncio.Task[None]] = set()
        self._reported: dict[str, str] = {}  # unit -> the write failure last reported on it

    async def campaign(self) -> None:
        """Campaign for leadership forever; lead (run the reconcile loop) while elected."""
        await campaign_forever(self.store, identity=self.identity, ttl=self.ttl, lead=self.lead,
                               on_change=self._on_leadership)

    def _on_leadership(self, leading: bool) -> None:
        self.metrics.is_leader.set(1 if leading else 0)
        self.metrics.leader_changes.inc()

    def _on_cache_event(self, event: CacheEvent) -> None:
        if timeline.ENABLED and not self.wake.is_set():  # every cache event passes here: test the flag first
            timeline.mark("controllers.woken", event.type, (event.object.get("metadata") or {}).get("name", ""))
        self.new_work = self.new_work or is_new_work(event)
        self.wake.set()

    async def lead(self, lost: asyncio.Event) -> None:
        self.presence = WatchCache(self.store, PRESENCE_RESOURCE)
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
        skipped = False  # the pass about to run skipped the debounce
        while True:
            self.wake.clear()
            self.new_work = False
            try:
                settled = not (await self.reconcile_once()).writes
                failed = self.failed_writes > 0
                if failed:
                    log.warning("%d writes of the last pass failed; retrying in %.2f s", self.failed_writes, backoff)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reconcile pass failed; retrying in %.2f s", backoff)
                failed = True
            if failed:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.05
            ended = time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=RESYNC_SECONDS)
            delay = debounce_delay(time.monotonic() - ended, planned=self.plan_seconds)
            skipped = delay > 0 and skips_debounce(settled=settled, new_work=self.new_work, skipped_last=skipped)
            if delay > 0 and not skipped:
                await asyncio.sleep(delay)

    async def reconcile_once(self) -> ClusterPlan:
        reg = self.registry
        started = time.perf_counter()
        plan = plan_cluster(
            reg.objects("machines"), reg.objects("units"), reg.objects("instances"),
            reg.objects("endpoints"), set(self.presence.objects),
        )
        self.passes += 1
        self._record(plan)
        self.plan_seconds = time.perf_counter() - started
        if timeline.ENABLED:
            timeline.mark("controllers.pass.planned", f"writes={len(plan.writes)}",
                          f"creates={len(plan.of(WriteOp.CREATE_INSTANCE))}")
        self.failed_writes = await self.apply(plan)
        timeline.mark("controllers.pass.applied")
        self.metrics.schedule_seconds.observe(time.perf_counter() - started)
        self._gc_events()
        return plan

    def _record(self, plan: ClusterPlan) -> None:
        bound = len(plan.of(WriteOp.BIND))
        bound += sum(1 for w in plan.of(WriteOp.CREATE_INSTANCE) if w.instance and w.instance["spec"]["machine"])
        bound += sum(1 for w in plan.of(WriteOp.REPLACE_INSTANCE) if w.instance and w.instance["spec"]["machine"])
        if bound:
            self.metrics.schedule_attempts.labels("scheduled").inc(bound)
        if plan.pending_reasons:
            self.metrics.schedule_attempts.labels("unschedulable").inc(len(plan.of(WriteOp.INSTANCE_STATUS)) or 1)
        self.metrics.pending.clear()
        for code, count in plan.pending_reasons.items():
            self.metrics.pending.labels(code).set(count)
        unbinds = len(plan.of(WriteOp.UNBIND))
        if unbinds:
            self.metrics.reschedules.inc(unbinds)
        not_ready = {w.target for w in plan.of(WriteOp.MARK_NOT_READY)}
        states = {"Ready": 0, "NotReady": 0}
        for machine in self.registry.objects("machines"):
            state = (machine.get("status") or {}).get("state", "NotReady")
            if machine["metadata"]["name"] in not_ready:
                state = "NotReady"
            states[state] = states.get(state, 0) + 1
        for state, count in states.items():
            self.metrics.machines.labels(state).set(count)

    async def apply(self, plan: ClusterPlan) -> int:
        """Apply the plan's writes phase by phase, then record its events in the background.
        Every failed write is logged and counted, and one that cannot succeed is reported on its
        unit (failures.py); returns how many failed for a reason a retry may fix."""
        sem = asyncio.Semaphore(WRITE_CONCURRENCY)
        failures: list[WriteFailure] = []

        async def bounded(batch: list[Write]) -> int:
            async with sem:
                return await self._apply_batch(batch, failures)

        failed = 0
        for phase in PHASES:
            calls = batches([w for w in plan.writes if w.op in phase])
            failed += sum(await asyncio.gather(*(bounded(batch) for batch in calls)))
        for note in plan.events:
            self.emit(note)
        self._report_failures(failures)
        return failed

    async def _apply_batch(self, batch: list[Write], failures: list[WriteFailure]) -> int:
        """One registry call; its error is logged and counted, never raised. Returns how many
        writes failed other than by a refusal or for good (those go to ``failures``)."""
        try:
            await apply_batch(self.registry, batch)
        except asyncio.CancelledError:
            raise
        except PartialFailure as err:
            by_name = {w.target: w for w in batch}
            for name, error in err.failures.items():
                self._log_failure([by_name[name]], error, refused=False)
                self.metrics.refused_writes.labels(batch[0].op.value, error.reason).inc()
                failures.append(failure_of(by_name[name], error, self.registry.caches["instances"].objects))
            return 0
        except Exception as err:
            refused = isinstance(err, REFUSALS)
            self._log_failure(batch, err, refused=refused)
            label = err.reason if isinstance(err, CPError) else type(err).__name__
            self.metrics.refused_writes.labels(batch[0].op.value, label).inc(len(batch))
            if isinstance(err, PERMANENT):
                failures.extend(failure_of(w, err, self.registry.caches["instances"].objects) for w in batch)
                return 0
            return 0 if refused else len(batch)
        return 0

    def _report_failures(self, failures: list[WriteFailure]) -> None:
        """A ReplicaFailure condition and one Warning Event per new failure on the unit it is for
        (once per distinct failure, even where the unit cannot take the condition); units that
        failed before and not in this pass get their condition cleared."""
        failing = {f.unit: f for f in failures if f.unit}
        for name in set(self._reported) - set(failing):
            del self._reported[name]
        for name, failure in failing.items():
            if self._reported.get(name) != failure.detail:
                self._reported[name] = failure.detail
                self.emit(EventNote("Unit", name, "Warning", failure.reason, failure.detail))
        for unit in self.registry.objects("units"):
            name = unit["metadata"]["name"]
            wanted = failing.get(name)
            if with_failure(unit.get("status") or {}, wanted, now="") is not None:
                self._background(self.registry.mutate("units", name, _set_failure(wanted)),
                                 f"condition of unit {name}")

    @staticmethod
    def _log_failure(batch: Sequence[Write], err: Exception, *, refused: bool) -> None:
        first = batch[0]
        what = first.target if len(batch) == 1 else f"{first.target} and {len(batch) - 1} more"
        if refused:
            log.info("write %s %s (%s) refused: %s", first.op.value, what, first.reason, err)
        else:
            log.warning("write %s %s (%s) failed: %r", first.op.value, what, first.reason, err,
                        exc_info=not isinstance(err, CPError))

    def _background(self, call: Awaitable[Any], what: str) -> None:
        """Best-effort writes (Events, conditions) that must not hold up the pass, as in Kubernetes;
        one that fails is logged, never raised."""

        async def run() -> None:
            try:
                await call
            except Exception as err:
                log.info("best-effort write %s failed: %s", what, err)

        task = asyncio.create_task(run())
        self._event_tasks.add(task)
        task.add_done_callback(self._event_tasks.discard)

    def emit(self, note: EventNote) -> None:
        """Record an Event in the background (a repeat is counted on the Event it repeats)."""
        obj = event_object(note.kind, note.name, type_=note.type, reason=note.reason, message=note.message)
        self._background(record_event(self.registry, cast(dict[str, Any], obj)),
                         f"event {note.reason} on {note.kind} {note.name}")

    def _gc_events(self) -> None:
        if self.passes % 50:
            return
        cutoff = now_rfc3339(lambda: time.time() - EVENT_MAX_AGE_SECONDS)
        for event in self.registry.objects("events")[:500]:
            if last_seen(event) < cutoff:
                self._background(self.registry.delete("events", event["metadata"]["name"]), "expired event")


def debounce_delay(since_last_pass: float, *, planned: float = 0.0) -> float:
    """Pure: how long a woken loop waits before its pass, ``since_last_pass`` seconds after the last
    one ended, which took ``planned`` seconds to plan. A burst of changes (or one arriving during a
    pass) still makes one pass per ``DEBOUNCE_SECONDS``, or per ``PLAN_SPACING_FACTOR`` x
    ``planned`` when that is longer (capped at ``PLAN_SPACING_MAX``), so planning holds at most a
    fifth of the event loop however big the cluster; a change after a quiet spell (a new unit) is
    planned at once."""
    spacing = max(DEBOUNCE_SECONDS, min(PLAN_SPACING_FACTOR * planned, PLAN_SPACING_MAX))
    return max(0.0, spacing - since_last_pass)


def skips_debounce(*, settled: bool, new_work: bool, skipped_last: bool) -> bool:
    """Pure: whether a pass runs at once though the last one ended less than DEBOUNCE_SECONDS ago:
    when a unit was created or respecified (``new_work``, what a user waits for) after a pass that
    wrote nothing (``settled``: the cluster had converged, and that pass was the check that
    follows every pass with writes). Never two such passes in a row, so a stream of changes still
    makes at most two passes per DEBOUNCE_SECONDS."""
    return settled and new_work and not skipped_last


def is_new_work(event: CacheEvent) -> bool:
    """Pure: a unit created, or given a new spec (its generation changed), by this cache event."""
    if event.type == "DELETED" or event.object.get("kind") != "Unit":
        return False
    if event.type == "ADDED" or event.previous is None:
        return True
    generation = (event.object.get("metadata") or {}).get("generation")
    return generation != (event.previous.get("metadata") or {}).get("generation")


def _set_failure(failure: WriteFailure | None) -> Change:
    """Set (or clear) the unit's ReplicaFailure condition on the unit as it is when written."""

    def change(obj: dict[str, Any]) -> dict[str, Any] | None:
        status = with_failure(obj.get("status") or {}, failure, now=now_rfc3339())
        if status is None:
            return None
        obj["status"] = status
        return obj
    return change
