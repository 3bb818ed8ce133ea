"""The unit controller's decisions, as a pure function: what to create, delete or replace.

Kept apart from the controller loop (which reads etcd and applies the actions) so every rule is
a table test with exact action lists, reasons included -- fleet's ``engine/reconciler.go`` split.
It reads the scheduler's views (parsed once per pass by ``cluster.plan_cluster``), not wire dicts.

Rules:
- Replicated units: ``replicas`` instances named ``<unit>-<index>``; missing ones are created at
  the lowest free indexes (from ``FIRST_INDEX``); scaling down deletes the highest indexes.
- Global units: one instance on every eligible machine (Ready, schedulable, matching
  ``machineMetadata``: the scheduler's own filters), created with ``spec.machine`` already set
  (the pin); deleted when its machine leaves or stops being eligible, or when a second instance
  sits on the same machine. ``conflicts`` and resources do not narrow a global unit's machines.
- Rollout: an instance whose ``spec.generation`` is below the unit's ``metadata.generation`` is
  replaced, keeping at most one instance down (not Running+ready) at a time:
  an old instance that is itself down is replaced at once (that takes nothing more down, and
  a rollout that fixes a crash-looping version must not wait for it to get ready); an old
  instance that is up is replaced only when every other instance is up -- counting the ones
  this plan creates or replaces as down -- and then only one per plan, lowest index first.
  A missing generation reads as 0 on both sides.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

from controlplane.model import instance_name
from controlplane.scheduler.filters import MachineMetadata, MachineReady, MachineSchedulable
from controlplane.scheduler.state import ClusterState
from controlplane.scheduler.view import InstanceView, MachineView, UnitView

FIRST_INDEX = 0

ActionKind = Literal["create", "delete", "replace"]

_ELIGIBILITY = (MachineReady(), MachineSchedulable(), MachineMetadata())


@dataclass(frozen=True, slots=True)
class Action:
    """One step for the controller: ``kind`` the instance ``instance`` (index ``index``), because ``reason``."""

    kind: ActionKind
    instance: str
    index: int
    reason: str
    machine: str = ""  # global units: the machine a created instance is pinned to


def is_up(instance: InstanceView) -> bool:
    """Serving: Running and ready."""
    return instance.phase == "Running" and instance.ready


def plan_unit(unit: UnitView, instances: Iterable[InstanceView], machines: Iterable[MachineView]) -> list[Action]:
    """The actions that converge ``unit``'s instances (others in ``instances`` are ignored):
    deletes, then creates, then replaces, each by index."""
    mine = sorted((i for i in instances if i.unit == unit.name), key=lambda i: (i.index, i.name))
    if unit.is_global:
        deletes, creates = _plan_global(unit, mine, list(machines))
    else:
        deletes, creates = _plan_replicas(unit, mine)
    deleted = {a.instance for a in deletes}
    kept = [i for i in mine if i.name not in deleted]
    return deletes + creates + _plan_rollout(unit, kept, starting=len(creates))


def unit_status(unit: UnitView, instances: Iterable[InstanceView]) -> dict[str, int]:
    """``status.replicas`` (instances that exist), ``readyReplicas`` (Running and ready) and
    ``observedGeneration`` for ``unit``."""
    mine = [i for i in instances if i.unit == unit.name]
    return {
        "replicas": len(mine),
        "readyReplicas": sum(1 for i in mine if is_up(i)),
        "observedGeneration": unit.generation,
    }


def _free_indexes(used: set[int]) -> Iterator[int]:
    index = FIRST_INDEX
    while True:
        if index not in used:
            yield index
        index += 1


def _plan_replicas(unit: UnitView, mine: list[InstanceView]) -> tuple[list[Action], list[Action]]:
    want, have = max(unit.replicas, 0), len(mine)
    deletes: list[Action] = []
    creates: list[Action] = []
    if have > want:
        reason = f"scale down to {want} replicas ({have} exist)"
        doomed = sorted(mine[want:], key=lambda i: (i.index, i.name))  # mine is sorted by index
        deletes = [Action("delete", i.name, i.index, reason) for i in doomed]
    elif have < want:
        reason = f"scale up to {want} replicas ({have} exist)"
        free = _free_indexes({i.index for i in mine})
        for _ in range(want - have):
            index = next(free)
            creates.append(Action("create", instance_name(unit.name, index), index, reason))
    return deletes, creates


def _plan_global(
    unit: UnitView, mine: list[InstanceView], machines: list[MachineView]
) -> tuple[list[Action], list[Action]]:
    state = ClusterState()  # the eligibility filters read only the machine
    known = {m.name for m in machines}
    refused: dict[str, str] = {}
    eligible: list[str] = []
    for machine in sorted(machines, key=lambda m: m.name):
        text = next(
            (t for flt in _ELIGIBILITY if (t := flt.check(unit, machine, state)) is not None),
            None,
        )
        if text is None:
            eligible.append(machine.name)
        else:
            refused[machine.name] = text
    deletes: list[Action] = []
    covered: set[str] = set()
    for inst in mine:
        m = inst.machine
        if not m:
            reason = "global: instance is not pinned to a machine"
        elif m not in known:
            reason = f"global: machine {m} is gone"
        elif m in refused:
            reason = f"global: machine {m} is no longer eligible: {refused[m]}"
        elif m in covered:
            reason = f"global: another instance already runs on machine {m}"
        else:
            covered.add(m)
            continue
        deletes.append(Action("delete", inst.name, inst.index, reason))
    creates: list[Action] = []
    free = _free_indexes({i.index for i in mine})  # never reuse a name that is being deleted
    for m in eligible:
        if m not in covered:
            index = next(free)
            creates.append(
                Action(
                    "create",
                    instance_name(unit.name, index),
                    index,
                    f"global: machine {m} has no instance",
                    m,
                )
            )
    return deletes, creates


def _plan_rollout(unit: UnitView, kept: list[InstanceView], *, starting: int) -> list[Action]:
    old = [i for i in kept if i.generation < unit.generation]
    if not old:
        return []
    replaces: list[Action] = []
    for inst in old:
        if not is_up(inst):
            replaces.append(
                Action(
                    "replace",
                    inst.name,
                    inst.index,
                    f"generation {inst.generation} -> {unit.generation} (instance not ready)",
                )
            )
    down = starting + sum(1 for i in kept if not is_up(i))
    if down == 0:
        first_up = next(i for i in old if is_up(i))  # every old one is up when nothing is down
        replaces.append(
            Action(
                "replace",
                first_up.name,
                first_up.index,
                f"generation {first_up.generation} -> {unit.generation}",
            )
        )
    return sorted(replaces, key=lambda a: a.index)
