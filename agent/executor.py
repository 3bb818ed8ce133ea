"""The executor: applies the reconciler's actions to a `Runtime` and reports instance statuses.

Thin on purpose: `plan` decides, this module acts and then describes what it sees in the contract's
`Instance.status` format, and tells ``on_event`` (agent/events.py, never waiting) the kubelet's
Events: Pulled, Created, Started, Ready (once per container becoming ready), Killing (stopping a
container). It owns the backoff table the planner reads, pulls missing images (a pull
that fails becomes phase Failed / ImagePullFailed, never an exception), sets CP_UNIT, CP_INSTANCE
and CP_MACHINE on every container, reads the values of a unit's secretEnv right before it creates
the container (agent/secretenv.py; a missing Secret or key is phase Failed /
CreateContainerConfigError, retried with backoff), and hands the prober its targets.

The agent's main loop calls `Executor.sync(desired)` on every wake-up (watch event, container event,
timer, `requeue_after`) and writes the statuses it returns.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from agent.health import Prober, ProbeSpec, ProbeTarget
from agent.reconcile import (
    CRASH_LOOP,
    UNLABELLED,
    Action,
    BackoffState,
    DesiredInstance,
    container_labels,
    plan,
)
from agent.runtime.base import (
    Container,
    ContainerSpec,
    ImageNotFound,
    ImagePullError,
    Runtime,
    RuntimeFailure,
    RuntimeUnavailable,
)
from agent.secretenv import Scrubber, SecretConfigError, SecretSource
from controlplane.timeline import mark

log = logging.getLogger(__name__)

Status = dict[str, Any]
CONFIG_ERROR = "CreateContainerConfigError"  # Kubernetes' reason for a missing Secret or key
CONFIG_RETRY_INITIAL = 1.0
CONFIG_RETRY_MAX = 30.0


@dataclass(frozen=True)
class ConfigWait:
    """An instance whose secretEnv could not be satisfied: when to look again, and what was said."""

    message: str
    next_try: float
    delay: float


@dataclass
class SyncResult:
    statuses: dict[str, Status]  # instance name -> Instance.status
    actions: list[Action]
    requeue_after: float | None = None  # seconds until a delayed restart is due
    errors: list[str] = field(default_factory=list)


def rfc3339(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def container_name(cluster: str, desired: DesiredInstance) -> str:
    """Unique and readable: two agents on one engine, or an old copy being replaced, never clash."""
    raw = f"cp-{cluster}-{desired.machine}-{desired.name}-{secrets.token_hex(3)}"
    return re.sub(r"[^a-zA-Z0-9_.-]", "-", raw)


class Executor:
    """Acts for one machine of one cluster. `address` is where its containers' ports are published."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        cluster: str,
        machine: str,
        address: str,
        prober: Prober | None = None,
        clock: Callable[[], float] = time.time,
        stop_timeout: float = 10.0,
        secret_source: SecretSource | None = None,
        scrubber: Scrubber | None = None,
        image_source: Callable[[str], Awaitable[bool]] | None = None,
        on_event: Callable[[str, str, str], None] | None = None,
    ) -> None:
        self.runtime = runtime
        self.on_event = on_event  # (instance, reason, message): must not block
        self.image_source = image_source  # a missing image the cluster serves (agent/distimages.py)
        self.cluster = cluster
        self.machine = machine
        self.address = address
        self.prober = prober
        self.clock = clock
        self.stop_timeout = stop_timeout
        self.backoff: dict[str, BackoffState] = {}
        self.secret_source = secret_source
        self.scrubber = scrubber or Scrubber()
        self.config_waits: dict[str, ConfigWait] = {}
        self.last_listed: list[Container] = []  # this machine's containers at the last sync (metrics)
        self.ready_told: dict[str, str] = {}  # instance -> the container whose Ready was told
        self.last_running: dict[str, tuple[DesiredInstance, Container]] = {}  # as the last sync saw them

    async def sync(self, desired: Sequence[DesiredInstance]) -> SyncResult:
        """List this machine's containers, plan, apply. Raises RuntimeUnavailable when the engine
        cannot be reached (the caller retries; statuses are not worth writing then)."""
        actual = await self.runtime.list_containers(cluster=self.cluster, machine=self.machine)
        self.last_listed = list(actual)
        actions = plan(desired, actual, now=self.clock(), backoff=self.backoff)
        result = await self.apply(actions)
        wanted = {d.name for d in desired}
        for table in (self.backoff, self.config_waits, self.ready_told):
            for name in [n for n in table if n not in wanted]:
                del table[name]
        return result

    async def apply(self, actions: Sequence[Action]) -> SyncResult:
        result = SyncResult(statuses={}, actions=list(actions))
        primaries = [a for a in actions if a.kind not in ("stop", "remove")]
        # each container's stop-then-remove in order, the containers at once: a fencing machine
        # stops all its copies in the time of the slowest, not of their sum
        retiring: dict[str | None, list[Action]] = {}
        for action in actions:
            if action.kind in ("stop", "remove"):
                retiring.setdefault(action.container_id, []).append(action)
        retired = await asyncio.gather(*(self._retire_each(g, result) for g in retiring.values()),
                                       return_exceptions=True)
        for failure in retired:
            if isinstance(failure, BaseException):
                raise failure  # RuntimeUnavailable: the engine is gone; the others have finished
        running: dict[str, tuple[DesiredInstance, Container]] = {}
        outcomes = await asyncio.gather(*(self._primary(a, result) for a in primaries))
        for action, (status, container) in zip(primaries, outcomes, strict=True):
            result.statuses[action.instance] = status
            if container is not None and container.state == "running" and action.desired is not None:
                running[action.instance] = (action.desired, container)
            due = action.delay if action.kind == "restart" and action.delay > 0 else None
            wait = self.config_waits.get(action.instance) if action.kind == "create" else None
            if wait is not None:
                due = max(wait.next_try - self.clock(), 0.05)
            if due is not None:
                result.requeue_after = due if result.requeue_after is None else min(result.requeue_after, due)
        if self.prober is not None:
            self.prober.update(self._probe_targets(running))
            for name, (desired, container) in running.items():
                result.statuses[name] = self._running_status(desired, container)
        self.last_running = running
        for name, status in result.statuses.items():
            self._tell_ready(name, status)
        return result

    def readiness_statuses(self, names: Sequence[str]) -> dict[str, Status]:
        """The statuses of probed ``names`` whose container the last sync saw running, with their
        probes' new verdicts, without listing the containers again (the next sync checks it all)."""
        statuses: dict[str, Status] = {}
        for name in names:
            seen = self.last_running.get(name)
            target = self.prober.targets.get(name) if self.prober is not None else None
            if seen is None or target is None or target.container_id != seen[1].id:
                continue
            statuses[name] = self._running_status(*seen)
            self._tell_ready(name, statuses[name])
        return statuses

    def _event(self, instance: str, reason: str, message: str) -> None:
        if self.on_event is not None:
            self.on_event(instance, reason, message)

    def _tell_ready(self, name: str, status: Status) -> None:
        """A Ready Event the first time each container of ``name`` is reported ready (again after not)."""
        container = str(status.get("containerID") or "")
        if not (status.get("ready") and container):
            self.ready_told.pop(name, None)
        elif self.ready_told.get(name) != container:
            self.ready_told[name] = container
            self._event(name, "Ready", f"Container {container[:12]} is ready")

    # --- actions ---------------------------------------------------------------------------
    async def _retire_each(self, actions: Sequence[Action], result: SyncResult) -> None:
        for action in actions:
            await self._retire(action, result)

    async def _retire(self, action: Action, result: SyncResult) -> None:
        assert action.container_id is not None
        log.info("%s %s (%s): %s", action.kind, action.instance, action.container_id[:12], action.reason)
        try:
            if action.kind == "stop":
                if action.reason != UNLABELLED:
                    self._event(action.instance, "Killing",
                                f"Stopping container {action.container_id[:12]}: {action.reason}")
                await self.runtime.stop(action.container_id, grace=self.stop_timeout)
            else:
                await self.runtime.remove(action.container_id)
        except RuntimeUnavailable:
            raise
        except RuntimeFailure as err:
            result.errors.append(f"{action.kind} {action.instance}: {err}")
            log.warning("%s %s failed: %s", action.kind, action.instance, err)

    async def _primary(self, action: Action, result: SyncResult) -> tuple[Status, Container | None]:
        d = action.desired
        assert d is not None
        try:
            if action.kind == "create":
                return await self._create(d, action)
            if action.kind == "start":
                assert action.container_id is not None
                log.info("start %s: %s", d.name, action.reason)
                container = await self.runtime.start(action.container_id)
                self._event(d.name, "Started", f"Started container {container.id[:12]}")
                return self._running_status(d, container), container
            if action.kind == "restart":
                return await self._restart(d, action)
            assert action.container_id is not None
            container = await self.runtime.inspect(action.container_id)
            if container.state == "running":
                return self._running_status(d, container), container
            return self._exited_status(d, container, action), container
        except RuntimeUnavailable:
            raise
        except RuntimeFailure as err:
            reason = {"create": "CreateFailed", "start": "StartFailed", "restart": "StartFailed"}.get(
                action.kind, "RuntimeError"
            )
            message = self.scrubber.scrub(str(err))  # an engine error may echo the create body
            result.errors.append(f"{action.kind} {d.name}: {message}")
            log.warning("%s %s failed: %s", action.kind, d.name, message)
            return self._status(d, None, phase="Failed", reason=reason, message=message), None

    async def _create(self, d: DesiredInstance, action: Action) -> tuple[Status, Container | None]:
        if not d.image:
            return self._status(d, None, phase="Failed", reason="InvalidSpec", message="no image given"), None
        try:
            secret_env = await self._secret_env(d)
        except SecretConfigError as err:
            return self._status(d, None, phase="Failed", reason=CONFIG_ERROR, message=str(err)), None
        try:
            await self._ensure_image(d)
            log.info("create %s: %s", d.name, action.reason)
            mark("agent.container.create", d.name)
            container = await self.runtime.create_and_start(self.container_spec(d, secret_env=secret_env))
            mark("agent.container.started", d.name)
        except (ImagePullError, ImageNotFound) as err:
            message = str(err) if isinstance(err, ImagePullError) else f"image {d.image!r} is missing: {err}"
            return self._status(d, None, phase="Failed", reason="ImagePullFailed", message=message), None
        self._event(d.name, "Created", f"Created container {container.id[:12]}")
        self._event(d.name, "Started", f"Started container {container.id[:12]}")
        self.backoff[d.name] = BackoffState(crashes=0, restarts=self.backoff.get(d.name, BackoffState()).restarts)
        return self._running_status(d, container), container

    async def _ensure_image(self, d: DesiredInstance) -> None:
        """The image is here: present, served by the cluster, or pulled (Pulled says which)."""
        if await self.runtime.image_present(d.image):
            self._event(d.name, "Pulled", f'Container image "{d.image}" already present on machine')
        elif self.image_source is not None and await self.image_source(d.image):
            self._event(d.name, "Pulled", f'Loaded image "{d.image}" from the cluster')
        else:
            log.info("pulling %s for %s", d.image, d.name)
            await self.runtime.pull(d.image)
            self._event(d.name, "Pulled", f'Successfully pulled image "{d.image}"')

    async def _restart(self, d: DesiredInstance, action: Action) -> tuple[Status, Container | None]:
        assert action.container_id is not None
        if action.delay > 0:
            container = await self.runtime.inspect(action.container_id)
            crash_loop = action.reason.startswith(CRASH_LOOP)
            status = self._status(
                d,
                container,
                phase="Failed" if crash_loop else "Starting",
                reason=CRASH_LOOP if crash_loop else "Restarting",
                message=f"{action.reason}; restarting in {action.delay:.1f}s",
            )
            return status, container
        log.info("restart %s: %s", d.name, action.reason)
        container = await self.runtime.start(action.container_id)
        self._event(d.name, "Started", f"Started container {container.id[:12]}")
        old = self.backoff.get(d.name, BackoffState())
        self.backoff[d.name] = BackoffState(crashes=action.crashes, restarts=old.restarts + 1)
        return self._running_status(d, container), container

    async def _secret_env(self, d: DesiredInstance) -> dict[str, str]:
        """The values of ``d.secret_env``; SecretConfigError, logged once per new message and retried
        with backoff (1 s doubling to 30 s) rather than on every sync."""
        if not d.secret_env:
            return {}
        now = self.clock()
        wait = self.config_waits.get(d.name)
        if wait is not None and now < wait.next_try:
            raise SecretConfigError(wait.message)
        if self.secret_source is None:
            message = "this agent has no way to read Secrets"
        else:
            try:
                env = await self.secret_source.environment(d.secret_env)
                self.config_waits.pop(d.name, None)
                return env
            except SecretConfigError as err:
                message = self.scrubber.scrub(str(err))
        if wait is None or wait.message != message:
            log.warning("instance %s cannot start: %s", d.name, message)
        delay = CONFIG_RETRY_INITIAL if wait is None else min(wait.delay * 2, CONFIG_RETRY_MAX)
        self.config_waits[d.name] = ConfigWait(message, now + delay, delay)
        raise SecretConfigError(message)

    def container_spec(self, d: DesiredInstance, *, secret_env: Mapping[str, str] | None = None) -> ContainerSpec:
        """The container for ``d``: its env, then its Secret values, then CP_*; hardened by default."""
        env = dict(d.env)
        env.update(secret_env or {})
        env.update({"CP_UNIT": d.unit, "CP_INSTANCE": d.name, "CP_MACHINE": self.machine})
        return ContainerSpec(
            name=container_name(self.cluster, d),
            image=d.image,
            command=d.command,
            env=env,
            labels=container_labels(d, cluster=self.cluster),
            ports=d.ports,
            host_ip=self.address,
            binds=d.binds,
            network=d.network,
            dns=d.dns,
            dns_search=d.dns_search,
            cpu=d.cpu,
            memory_mb=d.memory_mb,
            init=True,
            user=d.user,
            pids_limit=d.pids_limit,
            no_new_privileges=not d.allow_privilege_escalation,
            cap_add=d.cap_add,
        )

    # --- status ----------------------------------------------------------------------------
    def _status(
        self, d: DesiredInstance, c: Container | None, *, phase: str, reason: str = "", message: str = "",
        ready: bool = False,
    ) -> Status:
        return {
            "phase": phase,
            "ready": ready,
            "reason": reason,
            "message": self.scrubber.scrub(message),  # probe output or engine errors may carry a value
            "containerID": c.id if c else "",
            "address": self.address,
            "hostPorts": [p.to_wire() for p in c.host_ports] if c else [],
            "restarts": self.backoff.get(d.name, BackoffState()).restarts,
            "exitCode": c.exit_code if c else None,
            "startedAt": rfc3339(c.started_at) if c else None,
        }

    def _running_status(self, d: DesiredInstance, c: Container) -> Status:
        if not d.health or self.prober is None:
            return self._status(d, c, phase="Running", ready=True)
        state = self.prober.state(d.name)
        if state is None or not state.ever_ready:
            message = state.last_message if state and state.last_message else "waiting for the first health check"
            return self._status(d, c, phase="Starting", reason="HealthCheckPending", message=message)
        if state.ready:
            return self._status(d, c, phase="Running", ready=True)
        return self._status(d, c, phase="Running", reason="Unhealthy", message=state.last_message)

    def _exited_status(self, d: DesiredInstance, c: Container, action: Action) -> Status:
        if c.exit_code == 0:
            return self._status(d, c, phase="Stopped", reason="Completed", message=action.reason)
        return self._status(d, c, phase="Failed", reason="Error", message=action.reason)

    def _probe_targets(self, running: Mapping[str, tuple[DesiredInstance, Container]]) -> dict[str, ProbeTarget]:
        targets: dict[str, ProbeTarget] = {}
        for name, (d, c) in running.items():
            if not d.health:
                continue
            try:
                spec = ProbeSpec.from_health(d.health)
            except (ValueError, KeyError, TypeError) as err:
                log.warning("instance %s: bad health spec: %s", name, err)
                continue
            host, port = c.ip_address, spec.port
            for mapping in c.host_ports:
                if mapping.container_port == spec.port and mapping.protocol == "tcp":
                    host, port = self.address, mapping.host_port
                    break
            targets[name] = ProbeTarget(name, c.id, c.started_at, spec, host, port)
        return targets
