"""The agent's loops: heartbeat and fencing, the instance watch, the sync loop, status reports.

Everything that decides lives elsewhere (agent/reconcile.py plans, agent/executor.py acts);
this module only moves data between the API and the executor:

- a heartbeat starts every TTL/4 (``next_beat_in``); with several API servers a round tries each one
  at once after the other, each for a share of TTL/3, so one dead server never lets the lease
  lapse; a machine that has not reached the API for ``fence_after`` seconds stops its own
  instances (self-fencing), so a cut-off machine never keeps serving copies the cluster has
  already replaced; it unfences after a fresh list of its instances (agent/fencing.py);
- list+watch of the instances bound to this machine (field selector ``spec.machine=NAME``);
- a sync on every watch event, Docker event, health change, requeue deadline and every
  ``RESYNC_SECONDS``; statuses are written through ``/status`` only when they change;
- the Events about its instances (Pulled, Created, Started, Ready, Killing) go through a bounded
  queue and a sender task of their own (agent/events.py), never holding up a sync;
- the plug-ins given to the constructor (agent/plugin.py; today the proxy manager) are called at
  fixed points: shaping the desired instances, a reported container change, each status, and
  their own task next to these loops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from agent.events import EventSender
from agent.executor import Executor
from agent.fencing import ListRounds, unfence_delay
from agent.health import Prober
from agent.metrics import AgentMetrics
from agent.plugin import AgentPlugin
from agent.reconcile import DesiredInstance
from agent.runtime.base import HostKeyRefused, Runtime, RuntimeFailure
from agent.secretenv import ApiSecrets, Scrubber
from controlplane import __version__
from controlplane.client import Client
from controlplane.errors import Conflict, CPError, NotFound
from controlplane.mirror import mirror
from controlplane.model import DEFAULT_PROXY_IMAGE, Instance, InstanceStatus
from controlplane.timeline import mark

log = logging.getLogger("cp-agent")
RESYNC_SECONDS = 5.0
FENCE_CHECK_SECONDS = 0.1
RETRY_AFTER_SLOW_FAILURE = 0.2


def next_beat_in(ttl: float, elapsed: float, *, ok: bool) -> float:
    """Seconds until the next heartbeat, from the end of one that took ``elapsed`` seconds.

    Beats start every TTL/4 whatever they took (a slow answer does not stretch the period, so the
    TTL holds about four tries). After a failure that took longer than that -- typically its whole
    timeout -- the next try comes at once (after a short pause), not a whole period later, since
    the fence comes at 0.8 x TTL; after a slow success it waits at least half a period, so an
    overloaded server is not asked more often the slower it gets. There is no cap at one second:
    the heartbeat load is machines / (TTL/4), so an operator of a big cluster buys it down with the
    TTL, at the cost of later failure detection (the trade Kubernetes makes with its 40 s node lease)."""
    period = max(ttl / 4, 0.1)
    return max(period - elapsed, period / 2 if ok else RETRY_AFTER_SLOW_FAILURE)


@dataclass
class AgentConfig:
    machine: str
    address: str
    cluster: str = "cp"
    labels: dict[str, str] = field(default_factory=dict)
    cpu: float = 0.0
    memory_mb: int = 0
    fence_after: float | None = None  # default: 80% of the server's machine TTL
    agent_port: int = 0
    proxy_image: str = DEFAULT_PROXY_IMAGE
    state_dir: str = "/var/lib/cp-agent"


class Agent:
    """One machine's agent. ``plugins`` ride along (agent/plugin.py): they shape the desired
    instances, hear of new containers, add status fields and run their own task."""

    def __init__(self, client: Client, runtime: Runtime, config: AgentConfig, *,
                 plugins: Sequence[AgentPlugin] = (), clock: Callable[[], float] = time.monotonic,
                 scrubber: Scrubber | None = None, metrics: AgentMetrics | None = None,
                 image_source: Callable[[str], Awaitable[bool]] | None = None) -> None:
        self.client = client
        self.runtime = runtime
        self.config = config
        self.plugins = tuple(plugins)
        self.clock = clock
        self.metrics = metrics if metrics is not None else AgentMetrics()
        self.prober = Prober(runtime, on_result=lambda kind, ok, seconds: self.metrics.observe_probe(
            kind, ok=ok, seconds=seconds))
        self.scrubber = scrubber or Scrubber()  # the Secret values read here; main.py filters logs with it
        self.events = EventSender(client)
        self.executor = Executor(runtime, cluster=config.cluster, machine=config.machine, address=config.address,
                                 prober=self.prober, secret_source=ApiSecrets(client, self.scrubber),
                                 scrubber=self.scrubber, image_source=image_source,
                                 on_event=lambda instance, reason, message: self.events.record(
                                     instance, reason, self.scrubber.scrub(message)))
        self.instances: dict[str, dict[str, Any]] = {}  # the mirror's: validated Instance objects
        self.reported: dict[str, InstanceStatus] = {}  # what the API holds, as far as we know
        self.containers: dict[str, str] = {}  # instance -> the container id last told to the plugins
        self.wake = asyncio.Event()
        self.relist = asyncio.Event()
        self.listed = asyncio.Event()  # set once the instances bound here have been listed
        self.ttl = 5.0
        self.last_contact = clock()
        self.fenced = False
        self.fencing = asyncio.Event()  # set while fenced: abandons a status report in flight
        self.registered = asyncio.Event()
        self.log_signing_keys: list[object] = []  # from heartbeat replies: what the log endpoint trusts
        self.synced_once = asyncio.Event()
        self.answered_fenced = asyncio.Event()  # a heartbeat was answered while fenced
        self.rounds = ListRounds()  # of the instance mirror (watch_loop): an unfence waits for a fresh one
        self.ready_changed: set[str] = set()  # instances whose readiness flipped since the last sync
        self.synced_specs: dict[str, Any] = {}  # instance -> its spec as the last sync planned it

    # ---- heartbeat and fencing ----
    @property
    def fence_after(self) -> float:
        return self.config.fence_after if self.config.fence_after is not None else 0.8 * self.ttl

    def heartbeat_body(self) -> dict[str, Any]:
        return {"address": self.config.address, "agentVersion": __version__, "agentPort": self.config.agent_port,
                "capacity": {"cpu": self.config.cpu, "memoryMB": self.config.memory_mb},
                "labels": self.config.labels}

    def heartbeat_timeout(self) -> float:
        """How long one server may take to answer a heartbeat: a round over every server fits in
        TTL/3 (floor 0.5 s), so after a failed server the next one is asked well within the TTL."""
        servers = len(getattr(self.client, "servers", ())) or 1
        return max(self.ttl / 3 / servers, 0.5)

    async def heartbeat_loop(self) -> None:
        while True:
            started, ok = self.clock(), False
            try:
                reply = await self.client.heartbeat(self.config.machine, self.heartbeat_body(),
                                                    timeout=self.heartbeat_timeout())
                self.metrics.observe_heartbeat(ok=True)
                self.ttl = float(reply.get("leaseTTL") or self.ttl)
                if isinstance(reply.get("logSigningKeys"), list):
                    self.log_signing_keys = reply["logSigningKeys"]
                self.last_contact = self.clock()
                ok = True
                self.registered.set()
                if self.fenced:
                    self.answered_fenced.set()  # unfence_loop re-lists, then unfences
            except (CPError, TimeoutError) as err:
                self.metrics.observe_heartbeat(ok=False)
                log.warning("heartbeat failed (%.1fs without the API): %s", self.clock() - self.last_contact, err)
                self.fence_if_silent()
            await asyncio.sleep(next_beat_in(self.ttl, self.clock() - started, ok=ok))

    async def unfence_loop(self) -> None:
        """Once a heartbeat is answered while fenced: after ``unfence_delay``, a fresh list+watch
        (agent/fencing.py; the mirror retries a list that fails), then unfence if the API still
        answers. Heartbeats go on meanwhile: no re-list holds them up."""
        while True:
            await self.answered_fenced.wait()
            await asyncio.sleep(unfence_delay(self.ttl, rand=random.random()))
            await self.rounds.fresh_list(self.relist)
            self.answered_fenced.clear()
            if self.fenced and self.clock() - self.last_contact < self.fence_after:
                log.warning("reached the API again: unfencing")
                self.fenced = False
                self.fencing.clear()
                self.metrics.set_fenced(False)
                self.wake.set()

    def fence_if_silent(self) -> None:
        silent = self.clock() - self.last_contact
        if not self.fenced and silent >= self.fence_after:
            log.error("no API for %.1fs (fence after %.1fs): stopping this machine's instances",
                      silent, self.fence_after)
            self.fenced = True
            self.fencing.set()
            self.metrics.set_fenced(True)
            self.wake.set()

    async def fence_loop(self) -> None:
        """Fencing on its own timer: a heartbeat that hangs for its whole timeout must not put it
        off past ``fence_after`` (and so past the TTL, when the machine's copies are replaced)."""
        while True:
            self.fence_if_silent()
            await asyncio.sleep(FENCE_CHECK_SECONDS)

    # ---- instances bound here ----
    async def watch_loop(self) -> None:
        """List+watch, started afresh whenever `relist` is set (after unfencing)."""
        while True:
            self.relist.clear()
            watch = asyncio.create_task(self._list_and_watch(self.rounds.start()))
            relist = asyncio.create_task(self.relist.wait())
            try:
                await asyncio.wait({watch, relist}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (watch, relist):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            if watch.done() and not watch.cancelled():
                watch.result()

    async def _list_and_watch(self, round_: int) -> None:
        await mirror(
            self.client, "instances", self.instances,
            field_selector=f"spec.machine={self.config.machine}",
            keep=lambda obj: (obj.get("spec") or {}).get("machine") == self.config.machine,
            on_listed=lambda: self._listed(round_), on_change=self._instances_changed,
        )

    def _listed(self, round_: int) -> None:
        self.rounds.arrived(round_)
        self.listed.set()

    def _instances_changed(self) -> None:
        mark("agent.watch.change", len(self.instances))
        self.wake.set()

    def desired(self) -> list[DesiredInstance]:
        if self.fenced:
            return []
        result: list[DesiredInstance] = []
        for inst in self.instances.values():
            template = (inst.get("spec") or {}).get("template") or {}
            try:
                result.append(DesiredInstance.from_instance(inst, {"spec": template},
                                                            default_image=self.config.proxy_image))
            except (ValueError, KeyError, TypeError) as err:
                log.warning("instance %s cannot run here: %s", inst["metadata"].get("name"), err)
        instances = cast(Mapping[str, Instance], self.instances)
        for plugin in self.plugins:
            result = plugin.shape(result, instances)
        return result

    async def sync_loop(self) -> None:
        # Never plan against an empty instance table that merely has not been listed yet: that
        # would remove every container a restarted agent should adopt.
        await self.listed.wait()
        while True:
            self.wake.clear()
            requeue: float | None = None
            try:
                await self.report_readiness()
                started = time.perf_counter()
                mark("agent.sync.start")
                self.synced_specs = {name: inst.get("spec") for name, inst in self.instances.items()}
                result = await self.executor.sync(self.desired())
                self.metrics.observe_containers(c.state for c in self.executor.last_listed)
                requeue = result.requeue_after
                await self.report_unless_fenced(result.statuses)
                mark("agent.sync.done", f"actions={len(result.actions)}")
                self.metrics.sync_seconds.observe(time.perf_counter() - started)
                self.synced_once.set()
            except HostKeyRefused:
                raise  # a host key that changed under us is an attack until shown otherwise: stop
            except RuntimeFailure as err:
                log.warning("container runtime unavailable: %s", err)
                requeue = 1.0
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("sync failed")
                requeue = 1.0
            timeout = RESYNC_SECONDS if requeue is None else max(min(requeue, RESYNC_SECONDS), 0.05)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=timeout)

    async def report_readiness(self) -> None:
        """Before a sync, the status of each instance whose probe flipped since the last one, as that
        sync saw its container: an instance turning ready is reported without waiting for the
        containers to be listed and inspected again (the sync that follows does that, and writes
        again only what differs). Not for an instance whose spec changed since: the sync decides."""
        names = [n for n in self.ready_changed
                 if n in self.synced_specs and (self.instances.get(n) or {}).get("spec") == self.synced_specs[n]]
        self.ready_changed.clear()
        statuses = self.executor.readiness_statuses(names)
        if statuses:
            mark("agent.readiness.report", *statuses)
            await self.report_unless_fenced(statuses)

    def _readiness_flipped(self, names: Sequence[str]) -> None:
        self.ready_changed.update(names)
        self.wake.set()

    async def report_unless_fenced(self, statuses: Mapping[str, Mapping[str, Any]]) -> None:
        """``report``, abandoned when the machine fences meanwhile: a status write to an API that
        stopped answering hangs for the client's timeout (per server), and the sync that stops
        the copies must not wait for it. A status not written is written by a later sync."""
        report = asyncio.ensure_future(self.report(statuses))
        fencing = asyncio.ensure_future(self.fencing.wait())
        try:
            await asyncio.wait({report, fencing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            fencing.cancel()
            report.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await report

    async def report(self, statuses: Mapping[str, Mapping[str, Any]]) -> None:
        if self.fenced:
            return
        writes = []
        for name, status in statuses.items():
            inst = self.instances.get(name)
            if inst is None:
                continue
            wire = self.wire_status(status, epoch=int(inst["spec"].get("epoch") or 0))
            for plugin in self.plugins:
                wire.update(plugin.status_fields(name, wire))
            self._tell_container(name, wire.get("containerID") or "")
            if self.reported.get(name) == wire and self._api_holds(inst, wire):
                continue
            writes.append(self._put_status(name, wire))
        for name in [n for n in self.containers if n not in self.instances]:
            del self.containers[name]
        if writes:
            await asyncio.gather(*writes)

    @staticmethod
    def _api_holds(inst: Mapping[str, Any], wire: Mapping[str, Any]) -> bool:
        """The API's copy (as watched) agrees with ``wire``. Written once is not enough: a stale
        write can land later (a request stuck in a partition is delivered after the heal), and
        what the API holds is what the proxies and the controllers act on."""
        held = inst.get("status") or {}
        differs = sorted(key for key, value in wire.items() if held.get(key) != value)
        if differs:
            log.debug("status of %s: the API holds other %s: writing it again", inst["metadata"]["name"], differs)
        return not differs

    def wire_status(self, status: Mapping[str, Any], *, epoch: int) -> InstanceStatus:
        """The executor's status as written: no nulls but ``exitCode``, with the binding it is about."""
        wire = {k: ("" if v is None and k != "exitCode" else v) for k, v in status.items()}
        wire["machine"] = self.config.machine
        wire["epoch"] = epoch
        wire.setdefault("reasons", {})
        return cast(InstanceStatus, wire)

    def _tell_container(self, name: str, container_id: str) -> None:
        """The plugins hear of each change of an instance's container once, as it is reported."""
        if self.containers.get(name, "") == container_id:
            return
        self.containers[name] = container_id
        for plugin in self.plugins:
            plugin.container_changed(name, container_id)

    async def _put_status(self, name: str, status: InstanceStatus) -> None:
        try:
            mark("agent.status.put", name, status.get("phase", ""), status.get("ready", ""))
            await self.client.put_status("instances", name, {"metadata": {"name": name}, "status": status})
            mark("agent.status.written", name)
            self.reported[name] = status
            if name in self.instances:  # what the API holds now, until its watch says otherwise
                self.instances[name] = {**self.instances[name], "status": dict(status)}
        except (NotFound, Conflict):
            pass
        except CPError as err:
            log.warning("status of %s not written: %s", name, err)

    async def docker_events_loop(self) -> None:
        while True:
            try:
                async for event in self.runtime.events(cluster=self.config.cluster):
                    if not event.action.startswith("exec_"):  # probes' execs change nothing to sync
                        self.wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as err:
                log.warning("docker events stream ended: %s", err)
            await asyncio.sleep(1.0)
            self.wake.set()  # what happened while the stream was down went unheard: look again

    async def prober_loop(self) -> None:
        await self.prober.run(on_change=self._readiness_flipped)

    async def run(self) -> None:
        loops: list[Callable[[], Awaitable[None]]] = [
            self.heartbeat_loop, self.fence_loop, self.unfence_loop, self.watch_loop, self.sync_loop,
            self.docker_events_loop, self.prober_loop, self.events.run,
            *(plugin.run for plugin in self.plugins),
        ]
        tasks: list[asyncio.Future[None]] = [asyncio.ensure_future(loop()) for loop in loops]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
