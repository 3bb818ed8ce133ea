"""How the scheduler ranks the machines that pass every filter.

Scores combine lexicographically, not as a weighted sum, so a ranking is explainable in one
sentence and the machine-only part can be kept as a sorted index:

1. ``preferred_spread`` (only for ``spread: preferred``): fewer of this unit's instances first.
2. ``fewest_instances`` (fleet): fewer instances of any unit first.
3. ``most_free`` (resources): more free cpu first, then more free memory.
4. the machine name, smaller first, so results are deterministic.

Scores 2-4 depend on the machine alone; ``ClusterState`` keeps every schedulable machine in a
``SortedKeys`` ordered by ``machine_order_key`` and re-keys a machine whenever a binding on it
changes, so the scheduler can walk machines best-first and stop at the first feasible one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from controlplane.model import SPREAD_PREFERRED

if TYPE_CHECKING:
    from controlplane.scheduler.state import ClusterState
    from controlplane.scheduler.view import MachineView, UnitView

# (instances on the machine, -free cpu, -free memory, machine name): smaller is better
MachineKey = tuple[int, float, float, str]
# (this unit's instances on the machine, *MachineKey)
ScoreKey = tuple[int, int, float, float, str]


def fewest_instances(count: int) -> int:
    """fleet's only score: the machine running the fewest instances wins."""
    return count


def most_free(machine: MachineView, *, used_cpu: float, used_memory: float) -> tuple[float, float]:
    """Free cpu, then free memory, in absolute units (math.inf when the machine reports no
    capacity): the machine with more room left wins. Absolute rather than a share, so that of two
    empty machines the bigger one wins, and so the value depends on the machine alone."""
    return (machine.cpu - used_cpu, machine.memory_mb - used_memory)


def preferred_spread(state: ClusterState, unit: UnitView, machine: str) -> int:
    """For ``spread: preferred``: machines running fewer of this unit's instances first."""
    return state.unit_count_on(unit.name, machine)


def machine_order_key(machine: MachineView, *, count: int, used_cpu: float, used_memory: float) -> MachineKey:
    """The machine-only part of the ranking; the index the scheduler walks is sorted by it."""
    free_cpu, free_memory = most_free(machine, used_cpu=used_cpu, used_memory=used_memory)
    return (fewest_instances(count), -free_cpu, -free_memory, machine.name)


def score_key(state: ClusterState, unit: UnitView, machine: str) -> ScoreKey:
    """The full ranking of ``machine`` for ``unit``: smaller is better."""
    spread = preferred_spread(state, unit, machine) if unit.spread == SPREAD_PREFERRED else 0
    return (spread, *state.key_of(machine))
