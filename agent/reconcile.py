"""The agent's reconciler: what to do so the containers on this machine match its instances.

PURE: `plan(desired, actual, now=, backoff=)` reads the instances bound to this machine and the
containers the runtime reports, and returns actions with reasons. No I/O, no clock, no mutation;
the executor applies the actions and owns the backoff table. Following fleet's agent reconciler,
every decision is a small rule with a reason the tests assert word for word:

- a container labelled with a desired instance whose generation and epoch match is adopted, never
  recreated (so an agent that restarts does not duplicate anything);
- a container of an instance no longer desired here, or of an older generation or epoch, is
  stopped (when running) and removed;
- a desired instance without a container gets one;
- a created-but-never-started container is started;
- an exited container is restarted per restartPolicy (Always; OnFailure: non-zero exit; Never: not),
  with exponential backoff: 1 s doubling up to 60 s, reset when the container had run for 60 s;
  from the second quick exit on the reason says CrashLoopBackOff;
- two containers for one instance: the best one is kept (running first, then the oldest), the
  others removed.

Every desired instance gets exactly one of adopt/create/start/restart, so the executor can report a
status for each; retirements come first so their host ports are free before new containers start.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from agent.runtime.base import (
    LABEL_CLUSTER,
    LABEL_EPOCH,
    LABEL_GENERATION,
    LABEL_INSTANCE,
    LABEL_MACHINE,
    LABEL_UNIT,
    Bind,
    Container,
    PortMapping,
)
from controlplane.model import (
    DEFAULT_PIDS_LIMIT,
    DEFAULT_PROTOCOL,
    DEFAULT_RESTART_POLICY,
    RESTART_POLICIES,
    RestartPolicy,
)
from controlplane.secretref import SecretRef, secret_refs

BACKOFF_INITIAL = 1.0
BACKOFF_MAX = 60.0
BACKOFF_RESET_AFTER = 60.0  # a container that ran this long before exiting starts a fresh backoff
CRASH_LOOP = "CrashLoopBackOff"
UNLABELLED = "container carries no cp.instance label"  # its retirement names the container, no instance

ActionKind = Literal["create", "start", "stop", "remove", "restart", "adopt"]


@dataclass(frozen=True)
class DesiredInstance:
    """One instance bound to this machine, with its unit's container spec."""

    name: str
    unit: str
    index: int
    machine: str
    image: str
    epoch: int = 0
    generation: int = 0
    command: tuple[str, ...] | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    ports: tuple[PortMapping, ...] = ()
    cpu: float | None = None
    memory_mb: int | None = None
    restart_policy: RestartPolicy = DEFAULT_RESTART_POLICY
    health: Mapping[str, Any] | None = None
    binds: tuple[Bind, ...] = ()
    network: str = ""
    dns: tuple[str, ...] = ()  # resolvers and search domains (agent/discovery: the cluster's names)
    dns_search: tuple[str, ...] = ()
    # security (README "Container defaults", "Secrets"); the secret values are fetched at create time
    secret_env: tuple[SecretRef, ...] = ()
    user: str = ""
    pids_limit: int = DEFAULT_PIDS_LIMIT
    allow_privilege_escalation: bool = False
    cap_add: tuple[str, ...] = ()

    @classmethod
    def from_instance(
        cls, instance: Mapping[str, Any], unit: Mapping[str, Any] | None = None, *, default_image: str = ""
    ) -> DesiredInstance:
        """From an Instance object (wire format); unit fields missing from `instance.spec` are read
        from `unit` (a Unit object or just its spec). `default_image` serves proxy units."""
        spec: Mapping[str, Any] = instance.get("spec") or {}
        unit_spec: Mapping[str, Any] = (unit or {}).get("spec", unit) or {}

        def get(key: str, default: Any = None) -> Any:
            value = spec.get(key)
            return unit_spec.get(key, default) if value is None else value

        resources = get("resources") or {}
        command = get("command")
        policy: RestartPolicy = get("restartPolicy") or DEFAULT_RESTART_POLICY
        if policy not in RESTART_POLICIES:
            raise ValueError(f"instance {instance['metadata']['name']}: unknown restartPolicy {policy!r}")
        return cls(
            name=str(instance["metadata"]["name"]),
            unit=str(spec.get("unit", "")),
            index=int(spec.get("index", 0)),
            machine=str(spec.get("machine") or ""),
            image=str(get("image") or default_image),
            epoch=int(spec.get("epoch") or 0),
            generation=int(spec.get("generation") or 0),
            command=tuple(str(c) for c in command) if command else None,
            env={str(k): str(v) for k, v in (get("env") or {}).items()},
            ports=tuple(
                PortMapping(int(p["containerPort"]), int(p.get("hostPort") or 0),
                            str(p.get("protocol") or DEFAULT_PROTOCOL))
                for p in get("ports") or []
            ),
            cpu=float(resources["cpu"]) if resources.get("cpu") else None,
            memory_mb=int(resources["memoryMB"]) if resources.get("memoryMB") else None,
            restart_policy=policy,
            health=get("health") or None,
            secret_env=tuple(secret_refs({"secretEnv": get("secretEnv") or {}})),
            user=str(get("user") or ""),
            pids_limit=int(get("pidsLimit") or DEFAULT_PIDS_LIMIT),
            allow_privilege_escalation=bool(get("allowPrivilegeEscalation")),
            cap_add=tuple(sorted(str(c).upper().removeprefix("CAP_") for c in get("capAdd") or ())),
        )


@dataclass(frozen=True)
class BackoffState:
    """Per instance, kept by the executor between plans."""

    crashes: int = 0  # consecutive quick exits already restarted
    restarts: int = 0  # restarts of this instance since the agent started


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    instance: str
    reason: str
    container_id: str | None = None
    delay: float = 0.0  # restart: seconds still to wait; 0 = now
    crashes: int = 0  # restart: the crash count to record once done
    desired: DesiredInstance | None = field(default=None, compare=False, repr=False)


def container_labels(desired: DesiredInstance, *, cluster: str) -> dict[str, str]:
    """The labels that tie a container to its instance; `plan` matches on exactly these."""
    return {
        LABEL_CLUSTER: cluster,
        LABEL_MACHINE: desired.machine,
        LABEL_INSTANCE: desired.name,
        LABEL_UNIT: desired.unit,
        LABEL_GENERATION: str(desired.generation),
        LABEL_EPOCH: str(desired.epoch),
    }


def backoff_delay(crashes: int) -> float:
    """1 s, 2 s, 4 s ... capped at 60 s."""
    return min(BACKOFF_INITIAL * 2 ** min(crashes, 16), BACKOFF_MAX)


def _matches(c: Container, d: DesiredInstance) -> bool:
    return c.labels.get(LABEL_GENERATION) == str(d.generation) and c.labels.get(LABEL_EPOCH) == str(d.epoch)


_STATE_RANK = {"running": 0, "created": 1, "exited": 2}


def _keep_order(c: Container) -> tuple[int, float, str]:
    return (_STATE_RANK[c.state], c.started_at if c.started_at is not None else float("inf"), c.id)


def _short(container_id: str) -> str:
    return container_id[:12]


def _retire(c: Container, instance: str, reason: str) -> list[Action]:
    actions = []
    if c.state == "running":
        actions.append(Action("stop", instance, reason, container_id=c.id))
    actions.append(Action("remove", instance, reason, container_id=c.id))
    return actions


def _exited(c: Container, d: DesiredInstance, *, now: float, backoff: Mapping[str, BackoffState]) -> Action:
    code = c.exit_code if c.exit_code is not None else 0
    policy = d.restart_policy
    if policy == "Never" or (policy == "OnFailure" and code == 0):
        return Action(
            "adopt",
            d.name,
            f"container exited with code {code}; restartPolicy {policy}: not restarting",
            container_id=c.id,
            desired=d,
        )
    state = backoff.get(d.name, BackoffState())
    ran = (c.finished_at - c.started_at) if c.finished_at is not None and c.started_at is not None else 0.0
    crashes = 0 if ran >= BACKOFF_RESET_AFTER else state.crashes
    delay = backoff_delay(crashes)
    wait = 0.0 if c.finished_at is None else max(0.0, c.finished_at + delay - now)
    if crashes == 0:
        reason = f"container exited with code {code}; restartPolicy {policy}: restarting after {delay:g}s"
    else:
        reason = (
            f"{CRASH_LOOP}: container exited with code {code} ({crashes + 1} times in a row); "
            f"back-off {delay:g}s"
        )
    return Action("restart", d.name, reason, container_id=c.id, delay=wait, crashes=crashes + 1, desired=d)


def plan(
    desired: Sequence[DesiredInstance],
    actual: Sequence[Container],
    *,
    now: float,
    backoff: Mapping[str, BackoffState],
) -> list[Action]:
    """The actions that make `actual` match `desired`: retirements first, then one action per
    desired instance, each group in instance-name order."""
    wanted = {d.name: d for d in desired}
    by_instance: dict[str, list[Container]] = {}
    retirements: list[Action] = []
    for c in sorted(actual, key=lambda c: c.id):
        name = c.labels.get(LABEL_INSTANCE)
        if not name:
            retirements += _retire(c, c.name, UNLABELLED)
            continue
        by_instance.setdefault(name, []).append(c)

    primaries: list[Action] = []
    for name in sorted(set(by_instance) | set(wanted)):
        containers = by_instance.get(name, [])
        d = wanted.get(name)
        if d is None:
            for c in containers:
                retirements += _retire(c, name, f"instance {name} is no longer desired on this machine")
            continue
        current = sorted((c for c in containers if _matches(c, d)), key=_keep_order)
        for c in containers:
            if not _matches(c, d):
                retirements += _retire(
                    c,
                    name,
                    f"container has generation {c.labels.get(LABEL_GENERATION)} epoch "
                    f"{c.labels.get(LABEL_EPOCH)}; want generation {d.generation} epoch {d.epoch}",
                )
        if not current:
            primaries.append(Action("create", name, f"no container for instance {name}", desired=d))
            continue
        keep, *extra = current
        for c in extra:
            retirements += _retire(c, name, f"duplicate container for instance {name}; keeping {_short(keep.id)}")
        if keep.state == "running":
            primaries.append(
                Action(
                    "adopt",
                    name,
                    f"container running with generation {d.generation} epoch {d.epoch}",
                    container_id=keep.id,
                    desired=d,
                )
            )
        elif keep.state == "created":
            primaries.append(
                Action("start", name, "container created but never started", container_id=keep.id, desired=d)
            )
        else:
            primaries.append(_exited(keep, d, now=now, backoff=backoff))
    return retirements + primaries
