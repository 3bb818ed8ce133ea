"""One small named filter per placement rule, each able to say why it refused a machine.

Every filter has a ``reason`` constant (a stable code for metrics and events) and returns the
human text that goes into the pending message (``0/4 machines: 1 lacks role=edge, ...``), or
``None`` when the machine passes. ``applies`` lets the chain skip a filter for units that do
not use its rule, so a unit without ``conflicts`` pays nothing for them. The order the filters
run in is decided in one place, ``core.FILTER_CHAIN``.
"""

from __future__ import annotations

from typing import ClassVar

from controlplane.model import SPREAD_REQUIRED
from controlplane.scheduler.state import ClusterState
from controlplane.scheduler.view import MachineView, UnitView

# reason codes
NOT_READY = "MachineNotReady"
CORDONED = "MachineCordoned"
NOT_PINNED = "NotPinnedMachine"
METADATA_MISMATCH = "MachineMetadataMismatch"
SPREAD_CONFLICT = "SpreadRequired"
MACHINE_OF_MISSING = "MachineOfMissing"
INSUFFICIENT_RESOURCES = "InsufficientResources"
HOST_PORT_IN_USE = "HostPortInUse"
UNIT_CONFLICT = "Conflict"

# human texts, as they appear in the pending message
NOT_READY_TEXT = "NotReady"
CORDONED_TEXT = "cordoned"
NOT_PINNED_TEXT = "not {machine} (pinned)"
METADATA_TEXT = "lacks {key}={values}"  # values joined with "|": any one of them would do
SPREAD_TEXT = "already runs {unit}"
MACHINE_OF_TEXT = "no instance of {unit}"
CPU_TEXT = "insufficient cpu"
MEMORY_TEXT = "insufficient memory"
HOST_PORT_TEXT = "port {port}/{protocol} in use"
CONFLICT_TEXT = "conflict with {unit}"

_EPSILON = 1e-9  # float sums of requests such as 0.1 + 0.2


class Filter:
    """A placement rule: ``check`` returns the rejection text, or None when ``machine`` fits."""

    reason: ClassVar[str] = ""

    def applies(self, unit: UnitView, state: ClusterState) -> bool:
        return True

    def check(self, unit: UnitView, machine: MachineView, state: ClusterState) -> str | None:
        raise NotImplementedError


class MachineReady(Filter):
    """The agent heartbeats: a NotReady machine runs nothing new."""

    reason = NOT_READY

    def check(self, unit: UnitView, machine: MachineView, state: ClusterState) -> str | None:
        return None if machine.ready else NOT_READY_TEXT


class MachineSchedulable(Filter):
    """``spec.unschedulable`` (``cpctl cordon``) keeps new instances off a machine."""

    reason = CORDONED

    def check(self, unit: UnitView, machine: MachineView, state: ClusterState) -> str | None:
        return None if machine.schedulable else CORDONED_TEXT


class PinnedMachine(Filter):
    """``placement.machine`` (fleet's MachineID): that machine or none."""

    reason = NOT_PINNED

    def applies(self, unit: UnitView, state: ClusterState) -> bool:
        return bool(unit.machine)

    def check(self, unit: UnitView, machine: MachineView, state: ClusterState) -> str | None:
        return None if machine.name == unit.machine else NOT_PINNED_TEXT.format(machine=unit.machine)


class MachineMetadata(Filter):
    """``placement.machineMetadata`` (fleet's MachineMetadata): keys ANDed, values ORed, exact
    match. The text names the first key (in key order) the machine fails."""

    reason = METADATA_MISMATCH

    def applies(self, unit: UnitView, state: ClusterState) -> bool:
        return bool(unit.machine_metadata)

    def check(self, unit: UnitView, machine: MachineView, state: ClusterState) -> str | None:
        labels = machine.labels
        for key, values in unit.machine_metadata:
            if labels.get(key) not in values:
                return METADATA_TEXT.format(key=key, values="|".join(values))
        return None


class SpreadRequired(Filter):
    """``placement.spread: required`` (the default): never two of a unit's instances on one machine."""

    reason = SPREAD_CONFLICT

    def applies(self, unit: UnitView, state: ClusterState) -> bool:
        return unit.spread == SPREAD_REQUIRED

    def check(self, unit: UnitView, machine: MachineView, state: ClusterState) -> str | None:
        return SPREAD_TEXT.format(unit=unit.name) if state.unit_count_on(unit.name, machine.name) else None


class MachineOf(Filter):
    """``placement.machineOf`` (fleet's MachineOf): only where an instance of that unit is bound."""

    reason = MACHINE_OF_MISSING

    def applies(self, unit: UnitView, state: ClusterState) -> bool:
        return bool(unit.machine_of)

    def check(self, unit: UnitView, machine: MachineView, state: ClusterState) -> str | None:
        if state.unit_count_on(unit.machine_of, machine.name):
            return None
        return MACHINE_OF_TEXT.format(unit=unit.machine_of)


class Resources(Filter):
    """``resources``: the machine's capacity minus what its bound instances request."""

    reason = INSUFFICIENT_RESOURCES

    def applies(self, unit: UnitView, state: ClusterState) -> bool:
        return unit.cpu > 0 or unit.memory_mb > 0

    def check(self, unit: UnitView, machine: MachineView, state: ClusterState) -> str | None:
        name = machine.name
        if unit.cpu and state.used_cpu.get(name, 0.0) + unit.cpu > machine.cpu + _EPSILON:
            return CPU_TEXT
        if (
            unit.memory_mb
            and state.used_memory.get(name, 0.0) + unit.memory_mb > machine.memory_mb + _EPSILON
        ):
            return MEMORY_TEXT
        return None


class HostPorts(Filter):
    """Non-zero ``ports[].hostPort``: one user per (port, protocol) per machine. hostPort 0 is
    picked by the agent and never collides."""

    reason = HOST_PORT_IN_USE

    def applies(self, unit: UnitView, state: ClusterState) -> bool:
        return bool(unit.host_ports)

    def check(self, unit: UnitView, machine: MachineView, state: ClusterState) -> str | None:
        used = state.ports_on.get(machine.name)
        if used:
            for port, protocol in unit.host_ports:
                if used.get((port, protocol)):
                    return HOST_PORT_TEXT.format(port=port, protocol=protocol)
        return None


class Conflicts(Filter):
    """``placement.conflicts`` (fleet's Conflicts): globs of other units' names, checked both
    ways -- the newcomer's globs against the units on the machine, and theirs against it. The
    text names the smallest conflicting unit on the machine."""

    reason = UNIT_CONFLICT

    def applies(self, unit: UnitView, state: ClusterState) -> bool:
        return bool(unit.conflicts) or bool(state.conflict_partners(unit.name))

    def check(self, unit: UnitView, machine: MachineView, state: ClusterState) -> str | None:
        on = state.units_on.get(machine.name)
        if not on:
            return None
        partners = state.conflict_partners(unit.name)
        if len(partners) < len(on):
            hits = [p for p in partners if p in on]
        else:
            hits = [u for u in on if u in partners]
        return CONFLICT_TEXT.format(unit=min(hits)) if hits else None
