"""Placement: pick a machine for each pending instance, or say exactly why none fits.

``schedule(machines, units, instances)`` is the pure entry point (dicts in, placements out);
``Scheduler`` is the same engine kept alive between calls, so the controller and the
benchmark can feed it changes and place instances one at a time without rebuilding state.

How one placement is found (see README.md):

1. Candidates: the pinned machine; else the machines running the ``machineOf`` unit; else the
   schedulable machines carrying the unit's most selective ``machineMetadata`` key, walked
   best-score-first from the per-label sorted index; else every schedulable machine, walked
   best-score-first from the sorted index ``ClusterState.order``.
2. The first candidate in score order that passes ``FILTER_CHAIN`` wins. Walking the index stops
   at the first feasible machine, so the usual cost is a bisect plus a few filter calls.
3. Nothing fits: every machine is run through the whole chain once and counted under the first
   filter that refused it, which gives ``0/4 machines: 2 conflict with web, 1 NotReady``. The
   answer is cached per unit until the state changes, so 10,000 pending copies of a unit that
   fits nowhere cost one scan, not 10,000.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from controlplane.model import SPREAD_PREFERRED
from controlplane.scheduler import filters as f
from controlplane.scheduler.scores import ScoreKey, score_key
from controlplane.scheduler.state import ClusterState
from controlplane.scheduler.view import InstanceView, MachineView, UnitView

# The filter chain, built here and nowhere else. Cheap checks first, because a machine is
# refused by the first filter that fails and most candidates fail early:
# - Ready and cordoned read one attribute of the machine. They also come first so that a user
#   reads "1 NotReady", the most basic fact about a machine, rather than a rule it also breaks.
# - the pin compares one string and refuses every machine but one.
# - machineMetadata compares a few labels; labels change rarely, so this is a static rule.
# - spread and machineOf are one dict lookup each in the per-machine unit counts.
# - resources and host ports read the per-machine totals (O(1), O(ports of the unit)); they
#   change with every binding, so they come after the static rules.
# - conflicts look at every unit on the machine (O(units there)): the dearest check, last.
FILTER_CHAIN: tuple[f.Filter, ...] = (
    f.MachineReady(),
    f.MachineSchedulable(),
    f.PinnedMachine(),
    f.MachineMetadata(),
    f.SpreadRequired(),
    f.MachineOf(),
    f.Resources(),
    f.HostPorts(),
    f.Conflicts(),
)


@dataclass(frozen=True, slots=True)
class Placement:
    instance: str
    machine: str | None  # None: nothing fits; ``message`` says why
    message: str
    reasons: dict[str, int] = field(default_factory=dict)  # pending-message text -> machines
    codes: dict[str, int] = field(default_factory=dict)  # filter reason code -> machines


def pending_message(total: int, reasons: Mapping[str, int]) -> str:
    """``0/4 machines: 2 conflict with web, 1 lacks role=edge, 1 NotReady``: counts descending,
    then text ignoring case (as in CONTRACT.md's example)."""
    if total == 0:
        return "0/0 machines: no machines registered"
    parts = sorted(reasons.items(), key=lambda item: (-item[1], item[0].lower(), item[0]))
    return f"0/{total} machines: " + ", ".join(f"{n} {text}" for text, n in parts)


class Scheduler:
    """A ``ClusterState`` plus placement. ``place`` binds in the state by default, so the next
    placement sees it; if writing the binding fails, call ``unbind``."""

    def __init__(
        self, state: ClusterState | None = None, *, chain: Sequence[f.Filter] = FILTER_CHAIN
    ) -> None:
        self.state = state if state is not None else ClusterState()
        self._chain = tuple(chain)
        self._chains: dict[str, tuple[f.Filter, ...]] = {}
        self._chains_version = -1
        self._failures: dict[str, tuple[int, Placement]] = {}

    @classmethod
    def from_views(
        cls,
        machines: Iterable[MachineView],
        units: Iterable[UnitView],
        instances: Iterable[InstanceView],
    ) -> Scheduler:
        """A scheduler over views the caller already parsed (the leader's pass parses once)."""
        return cls(ClusterState.from_views(machines, units, instances))

    @classmethod
    def from_dicts(
        cls,
        machines: Iterable[Mapping[str, Any]],
        units: Iterable[Mapping[str, Any]],
        instances: Iterable[Mapping[str, Any]],
    ) -> Scheduler:
        """A scheduler over wire dicts (``schedule``, tests, benchmarks)."""
        return cls(ClusterState.from_dicts(machines, units, instances))

    # ---- feeding changes ------------------------------------------------------------------

    def add_machine(self, machine: Mapping[str, Any] | MachineView) -> None:
        """Add or replace a machine (labels, cordon, Ready and capacity may all change)."""
        view = machine if isinstance(machine, MachineView) else MachineView.from_dict(machine)
        self.state.upsert_machine(view)

    def remove_machine(self, name: str) -> None:
        self.state.remove_machine(name)

    def add_unit(self, unit: Mapping[str, Any] | UnitView) -> None:
        self.state.upsert_unit(unit if isinstance(unit, UnitView) else UnitView.from_dict(unit))

    def remove_unit(self, name: str) -> None:
        self.state.remove_unit(name)

    def add_instance(self, instance: Mapping[str, Any] | InstanceView) -> None:
        view = instance if isinstance(instance, InstanceView) else InstanceView.from_dict(instance)
        self.state.upsert_instance(view)

    def remove_instance(self, name: str) -> None:
        self.state.remove_instance(name)

    def bind(self, instance: str, machine: str) -> None:
        self.state.bind(instance, machine)

    def unbind(self, instance: str) -> None:
        self.state.unbind(instance)

    def pending(self) -> list[str]:
        """Instances with no machine, in placement order: by unit name, then index, then name."""
        waiting = [i for i in self.state.instances.values() if not i.machine]
        waiting.sort(key=lambda i: (i.unit, i.index, i.name))
        return [i.name for i in waiting]

    # ---- placing --------------------------------------------------------------------------

    def place(self, instance: str | Mapping[str, Any], *, bind: bool = True) -> Placement:
        """Choose a machine for a pending instance (a name already known, or its dict) and, with
        ``bind``, record the binding in the state."""
        if not isinstance(instance, str):
            self.add_instance(instance)
            instance = InstanceView.from_dict(instance).name
        state = self.state
        inst = state.instances[instance]
        if inst.machine:
            return Placement(instance, inst.machine, f"already bound to {inst.machine}")
        unit = state.units.get(inst.unit)
        if unit is None:
            return Placement(instance, None, f"unit {inst.unit} not found")
        cached = self._failures.get(unit.name)
        if cached is not None and cached[0] == state.version:
            failure = cached[1]
            return Placement(instance, None, failure.message, dict(failure.reasons), dict(failure.codes))
        chain = self.chain_for(unit)
        machine = self._first_feasible(unit, chain)
        if machine is None:
            failure = self.explain(instance, unit, chain=chain)
            if failure.machine is None:
                self._failures[unit.name] = (state.version, failure)
                return failure
            machine = failure.machine  # the fast path missed a machine: never expected, but safe
        if bind:
            state.bind(instance, machine)
        return Placement(instance, machine, f"bound to {machine}")

    def place_many(self, names: Sequence[str]) -> list[Placement]:
        """``[self.place(n) for n in names]``, the same placements, binding each; but a run of
        instances of one unit is placed in one go (``_place_run``): its candidates are walked once
        for the whole run rather than once per instance, and each machine it lands on is re-keyed
        once. ``tests/unit/test_scheduler_batch.py`` checks the two agree on random clusters."""
        out: list[Placement] = []
        instances = self.state.instances
        start = 0
        while start < len(names):
            unit = instances[names[start]].unit
            end = start + 1
            while end < len(names) and instances[names[end]].unit == unit:
                end += 1
            self._place_run(unit, names[start:end], out)
            start = end
        return out

    def _place_run(self, unit_name: str, names: Sequence[str], out: list[Placement]) -> None:
        """Place instances of one unit in order, as ``place`` would one by one. Why the result is
        the same: a binding changes only the machine it lands on (its counts, its key, whether it
        still fits this unit; the conflict partners of the unit do not change, a unit never
        conflicting with itself). So the candidate walk, started once, stays right for every
        machine not yet landed on, and the machines landed on are kept apart in a heap by their
        current score, if they still fit. Each placement takes the better of the walk's next
        feasible machine and the heap's top: the best feasible machine, as ``place`` finds it."""
        state = self.state
        unit = state.units.get(unit_name)
        if unit is None:
            out.extend(self.place(name) for name in names)
            return
        chain = self.chain_for(unit)
        # with spread required a machine landed on never fits this unit again: no heap to keep
        refits = not any(isinstance(flt, f.SpreadRequired) for flt in chain)
        with state.rekeys_deferred():  # the walk iterates the orders: they must not move under it
            walk = self._candidates(unit)
            landed: set[str] = set()
            heap: list[ScoreKey] = []  # machines landed on that still fit, by current score
            ahead: ScoreKey | None = None  # the walk's next feasible machine not landed on
            walked_out = False
            for name in names:
                inst = state.instances[name]
                cached = self._failures.get(unit.name)
                if inst.machine or (cached is not None and cached[0] == state.version):
                    out.append(self.place(name))  # already bound, or the cached failure
                    continue
                if ahead is None and not walked_out:
                    ahead = self._next_fitting(unit, chain, walk, landed)
                    walked_out = ahead is None
                if heap and (ahead is None or heap[0] < ahead):
                    machine = heapq.heappop(heap)[-1]
                elif ahead is not None:
                    machine, ahead = ahead[-1], None
                else:
                    out.append(self.place(name))  # nothing fits: the full scan says why (cached)
                    continue
                state.bind(name, machine)
                landed.add(machine)
                if refits and _refusal(unit, state.machines[machine], state, chain) is None:
                    heapq.heappush(heap, score_key(state, unit, machine))
                out.append(Placement(name, machine, f"bound to {machine}"))

    def _next_fitting(
        self, unit: UnitView, chain: Sequence[f.Filter], walk: Iterator[str], landed: set[str]
    ) -> ScoreKey | None:
        """The score of the next machine of ``walk`` that passes ``chain``, skipping those landed on."""
        state = self.state
        machines = state.machines
        for name in walk:
            if name in landed:
                continue
            machine = machines[name]
            for flt in chain:
                if flt.check(unit, machine, state) is not None:
                    break
            else:
                return score_key(state, unit, name)
        return None

    def chain_for(self, unit: UnitView) -> tuple[f.Filter, ...]:
        """The filters that apply to ``unit``, in chain order."""
        if self._chains_version != self.state.units_version:
            self._chains.clear()
            self._chains_version = self.state.units_version
        chain = self._chains.get(unit.name)
        if chain is None or self.state.units.get(unit.name) is not unit:
            chain = tuple(flt for flt in self._chain if flt.applies(unit, self.state))
            self._chains[unit.name] = chain
        return chain

    def explain(self, instance: str, unit: UnitView, *, chain: Sequence[f.Filter] | None = None) -> Placement:
        """Run every machine through the whole chain: the best feasible machine, or the count of
        machines per first refusal. O(machines); the fast path calls it only when nothing fits."""
        state = self.state
        chain = self.chain_for(unit) if chain is None else chain
        reasons: Counter[str] = Counter()
        codes: Counter[str] = Counter()
        best: tuple[Any, ...] | None = None
        for machine in state.machines.values():
            refusal = _refusal(unit, machine, state, chain)
            if refusal is None:
                key = score_key(state, unit, machine.name)
                if best is None or key < best:
                    best = key
            else:
                reasons[refusal[1]] += 1
                codes[refusal[0]] += 1
        if best is not None:
            return Placement(instance, best[-1], f"bound to {best[-1]}")
        return Placement(
            instance, None, pending_message(len(state.machines), reasons), dict(reasons), dict(codes)
        )

    def _first_feasible(self, unit: UnitView, chain: Sequence[f.Filter]) -> str | None:
        state = self.state
        machines = state.machines
        for name in self._candidates(unit):
            machine = machines[name]
            for flt in chain:
                if flt.check(unit, machine, state) is not None:
                    break
            else:
                return name
        return None

    def _candidates(self, unit: UnitView) -> Iterator[str]:
        """Machines worth trying, best score first; a superset of the feasible ones."""
        state = self.state
        if unit.machine:
            if state.schedulable(unit.machine):
                yield unit.machine
            return
        if unit.machine_of:
            yield from self._by_score(unit, state.machines_of.get(unit.machine_of, ()))
            return

        def ordered() -> Iterator[str]:
            if unit.machine_metadata:
                return state.ordered_with_labels(unit.machine_metadata)
            return state.ordered_machines()

        if unit.spread != SPREAD_PREFERRED:
            yield from ordered()
            return
        # preferred spread ranks by (this unit's count on the machine, index order): walk the
        # index once per level of that count, lowest first, skipping levels no machine is at.
        on: Mapping[str, int] = state.machines_of.get(unit.name) or {}
        if state.schedulable_hosts_of(unit.name) < len(state.order):  # some machine runs none
            for name in ordered():
                if name not in on:
                    yield name
        for level in sorted(state.unit_levels.get(unit.name, ())):
            for name in ordered():
                if on.get(name) == level:
                    yield name

    def _by_score(self, unit: UnitView, names: Iterable[str]) -> Iterator[str]:
        """``names`` that are schedulable, lazily in score order: heapify O(n), pop O(log n)."""
        state = self.state
        heap = [score_key(state, unit, n) for n in names if state.schedulable(n)]
        heapq.heapify(heap)
        while heap:
            yield heapq.heappop(heap)[-1]


def _refusal(
    unit: UnitView, machine: MachineView, state: ClusterState, chain: Sequence[f.Filter]
) -> tuple[str, str] | None:
    for flt in chain:
        text = flt.check(unit, machine, state)
        if text is not None:
            return flt.reason, text
    return None


def schedule(
    machines: Iterable[Mapping[str, Any]],
    units: Iterable[Mapping[str, Any]],
    instances: Iterable[Mapping[str, Any]],
) -> list[Placement]:
    """A placement for every pending instance (``spec.machine`` empty), in order of unit name
    then index; each placement sees the ones before it. The inputs are not modified."""
    scheduler = Scheduler.from_dicts(machines, units, instances)
    return scheduler.place_many(scheduler.pending())
