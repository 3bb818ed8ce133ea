"""The indexes placement reads, kept up to date one binding at a time.

``ClusterState`` holds what every filter and scorer reads -- instances, units, cpu, memory and
host ports per machine, machines per unit, machines per label -- and updates them in O(1) per
binding, plus the score order of the schedulable machines in a ``SortedKeys`` (O(log n) per
binding). Placing 150,000 instances therefore never rebuilds anything.

Bound instances count on their machine whatever their phase (a Failed instance may restart in
place), and the indexes stay keyed by machine name even when a machine is removed, so an
instance bound to a vanished machine is accounted for until its binding changes.
"""

from __future__ import annotations

import contextlib
import heapq
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from fnmatch import translate
from typing import Any

from controlplane.scheduler.ordered import SortedKeys
from controlplane.scheduler.scores import MachineKey, machine_order_key
from controlplane.scheduler.view import HostPort, InstanceView, MachineView, UnitView


def _add(counts: Counter[Any], key: Any, delta: int) -> None:
    """``counts[key] += delta``, dropping the key when that leaves it at or below 0."""
    value = counts.get(key, 0) + delta
    if value <= 0:
        counts.pop(key, None)
    else:
        counts[key] = value


def _matcher(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{translate(p)})" for p in patterns))


class ClusterState:
    """Machines, units and instances with the indexes placement reads, updated incrementally.

    ``version`` changes on every mutation, so callers can cache answers (the scheduler caches
    "nothing fits unit X" until something changes).
    """

    def __init__(self) -> None:
        self.machines: dict[str, MachineView] = {}
        self.units: dict[str, UnitView] = {}
        self.instances: dict[str, InstanceView] = {}
        # per machine name (kept for machines that left while instances are still bound there)
        self.count: Counter[str] = Counter()
        self.units_on: dict[str, Counter[str]] = {}
        self.used_cpu: dict[str, float] = {}
        self.used_memory: dict[str, float] = {}
        self.ports_on: dict[str, Counter[HostPort]] = {}
        # per unit name
        self.machines_of: dict[str, Counter[str]] = {}
        # unit -> {k: number of machines running exactly k of its instances}, k >= 1
        self.unit_levels: dict[str, Counter[int]] = {}
        self.schedulable_hosts: Counter[str] = Counter()  # unit -> Ready, schedulable machines running it
        self.instances_of: dict[str, set[str]] = {}
        # Ready and schedulable machines, by score (see scores.machine_order_key): all of them,
        # and per (label key, value), so a unit asking for role=db walks only role=db machines.
        # The per-label orders are built when first asked for (``label_order``) and kept up to date
        # from then on: a cluster whose units never ask for labels never pays for re-keying them.
        self.order: SortedKeys[MachineKey] = SortedKeys()
        self._label_order: dict[tuple[str, str], SortedKeys[MachineKey]] | None = None
        self._keys: dict[str, MachineKey] = {}
        self._rekey_later: set[str] | None = None  # inside ``rekeys_deferred``: machines to re-key on leaving
        self.version = 0
        self.units_version = 0
        self.machines_version = 0
        self._pattern_units: dict[str, re.Pattern[str]] = {}
        self._partners: dict[str, frozenset[str]] = {}

    @classmethod
    def from_views(
        cls,
        machines: Iterable[MachineView],
        units: Iterable[UnitView],
        instances: Iterable[InstanceView],
    ) -> ClusterState:
        state = cls()
        for m in machines:  # ordered below, once every binding is accounted for
            state.machines[m.name] = m
            state.version += 1
            state.machines_version += 1
        for u in units:
            state.upsert_unit(u)
        for i in instances:
            state.upsert_instance(i)
        state._order_all()
        return state

    def _order_all(self) -> None:
        """Build the score orders from scratch: what ``_reorder`` of every machine would give,
        with one sort per order instead of one insert per machine (the leader builds a state
        from its whole snapshot every pass)."""
        self.schedulable_hosts.clear()
        self._keys = {name: self.key_of(name) for name in self.machines if self.schedulable(name)}
        for name in self._keys:
            for unit in self.units_on.get(name, ()):
                self.schedulable_hosts[unit] += 1
        self.order = SortedKeys.of(self._keys.values())
        self._label_order = None

    @property
    def label_order(self) -> dict[tuple[str, str], SortedKeys[MachineKey]]:
        """(label key, value) -> the Ready, schedulable machines carrying it, by score."""
        if self._label_order is None:
            by_label: dict[tuple[str, str], list[MachineKey]] = {}
            for name, key in self._keys.items():
                for item in self.machines[name].labels.items():
                    by_label.setdefault(item, []).append(key)
            self._label_order = {item: SortedKeys.of(keys) for item, keys in by_label.items()}
        return self._label_order

    @classmethod
    def from_dicts(
        cls,
        machines: Iterable[Mapping[str, Any]],
        units: Iterable[Mapping[str, Any]],
        instances: Iterable[Mapping[str, Any]],
    ) -> ClusterState:
        """``from_views`` over wire dicts, for tests and benchmarks that build dicts."""
        return cls.from_views(
            map(MachineView.from_dict, machines), map(UnitView.from_dict, units), map(InstanceView.from_dict, instances)
        )

    # ---- machines -------------------------------------------------------------------------

    def upsert_machine(self, machine: MachineView) -> None:
        self._unorder(machine.name)
        self.machines[machine.name] = machine
        self._reorder(machine.name)
        self.version += 1
        self.machines_version += 1

    def remove_machine(self, name: str) -> None:
        """Forget a machine. Instances bound to it keep their binding (and their accounting)
        until the caller unbinds or rebinds them."""
        if name not in self.machines:
            return
        self._unorder(name)
        del self.machines[name]
        self.version += 1
        self.machines_version += 1

    def schedulable(self, name: str) -> bool:
        machine = self.machines.get(name)
        return machine is not None and machine.ready and machine.schedulable

    def key_of(self, name: str) -> MachineKey:
        machine = self.machines[name]
        return machine_order_key(
            machine,
            count=self.count[name],
            used_cpu=self.used_cpu.get(name, 0.0),
            used_memory=self.used_memory.get(name, 0.0),
        )

    def _unorder(self, name: str, *, rekey: bool = False) -> None:
        old = self._keys.pop(name, None)
        if old is not None:
            self.order.remove(old)
            if self._label_order is not None:
                for item in self.machines[name].labels.items():
                    self._label_order[item].remove(old)
            if not rekey:
                for unit in self.units_on.get(name, ()):
                    self.schedulable_hosts[unit] -= 1

    def _reorder(self, name: str, *, rekey: bool = False) -> None:
        """(Re-)key machine ``name`` in the score orders (1 + its label count SortedKeys updates).
        ``rekey``: the machine stays in the orders (a binding changed), only its key moves."""
        self._unorder(name, rekey=rekey)
        if self.schedulable(name):
            key = self.key_of(name)
            self._keys[name] = key
            self.order.add(key)
            if self._label_order is not None:
                for item in self.machines[name].labels.items():
                    order = self._label_order.get(item)
                    if order is None:
                        order = self._label_order[item] = SortedKeys()
                    order.add(key)
            if not rekey:
                for unit in self.units_on.get(name, ()):
                    self.schedulable_hosts[unit] += 1

    @contextlib.contextmanager
    def rekeys_deferred(self) -> Iterator[None]:
        """Bindings inside re-key their machines in the score orders once, on leaving, not once
        per binding (a unit's replicas placed in one go). Inside, the orders keep the keys the
        machines had on entering, so they may be iterated while bindings change; ``key_of`` and
        every count are current. Machines must not be added, removed or changed inside."""
        if self._rekey_later is not None:  # already deferring: the outer block re-keys
            yield
            return
        later: set[str] = set()
        self._rekey_later = later
        try:
            yield
        finally:
            self._rekey_later = None
            for name in later:
                if name in self._keys:
                    self._reorder(name, rekey=True)

    def ordered_machines(self) -> Iterator[str]:
        """Ready, schedulable machines, best score first. Do not mutate while iterating."""
        for key in self.order:
            yield key[-1]

    def ordered_with_labels(self, metadata: tuple[tuple[str, tuple[str, ...]], ...]) -> Iterator[str]:
        """Ready, schedulable machines carrying one of the values of the most selective key of
        ``metadata`` (fleet's MachineMetadata), best score first. The other keys are left to the
        filter. Merging the per-value orders costs O(log values) per machine yielded."""
        best: list[SortedKeys[MachineKey]] | None = None
        best_size = 0
        for key, values in metadata:
            orders = [o for v in values if (o := self.label_order.get((key, v)))]
            size = sum(len(o) for o in orders)
            if best is None or size < best_size:
                best, best_size = orders, size
        if best is None:
            yield from self.ordered_machines()
        elif len(best) == 1:
            for machine_key in best[0]:
                yield machine_key[-1]
        else:  # one value per key on a machine, so the merged orders never repeat a machine
            for machine_key in heapq.merge(*best):
                yield machine_key[-1]

    # ---- units ----------------------------------------------------------------------------

    def upsert_unit(self, unit: UnitView) -> None:
        bound = [self.instances[n] for n in self.instances_of.get(unit.name, ()) if self.instances[n].machine]
        for inst in bound:  # take the old demands off, put the new ones on
            self._unaccount(inst)
        self.units[unit.name] = unit
        for inst in bound:
            self._account(inst)
        self._units_changed(unit.name, unit)

    def remove_unit(self, name: str) -> None:
        """Forget a unit. Its bound instances stay on their machines, now with no demands."""
        if name not in self.units:
            return
        bound = [self.instances[n] for n in self.instances_of.get(name, ()) if self.instances[n].machine]
        for inst in bound:
            self._unaccount(inst)
        del self.units[name]
        for inst in bound:
            self._account(inst)
        self._units_changed(name, None)

    def _units_changed(self, name: str, unit: UnitView | None) -> None:
        matcher = _matcher(unit.conflicts) if unit is not None else None
        if matcher is None:
            self._pattern_units.pop(name, None)
        else:
            self._pattern_units[name] = matcher
        self._partners.clear()
        self.version += 1
        self.units_version += 1

    def conflicts(self, a: str, b: str) -> bool:
        """Whether units ``a`` and ``b`` may not share a machine: either one's ``conflicts``
        globs match the other's name (fleet checks both ways). A unit never conflicts with itself
        here; ``spread`` decides that."""
        ma, mb = self._pattern_units.get(a), self._pattern_units.get(b)
        return a != b and bool((ma is not None and ma.fullmatch(b)) or (mb is not None and mb.fullmatch(a)))

    def conflict_partners(self, unit: str) -> frozenset[str]:
        """Every known unit name (units, and units of bound instances) that ``unit`` conflicts
        with. Computed once per unit until units change or a new unit name gets bound: O(units)
        for a unit with globs, O(units with globs) for the others."""
        partners = self._partners.get(unit)
        if partners is None:
            found = {n for n, m in self._pattern_units.items() if n != unit and m.fullmatch(unit)}
            own = self._pattern_units.get(unit)
            if own is not None:
                names = self.units.keys() | self.machines_of.keys()
                found.update(n for n in names if n != unit and own.fullmatch(n))
            partners = self._partners[unit] = frozenset(found)
        return partners

    # ---- instances ------------------------------------------------------------------------

    def upsert_instance(self, inst: InstanceView) -> None:
        old = self.instances.get(inst.name)
        if old is not None:
            if old.machine:
                self._unaccount(old)
            if old.unit != inst.unit:
                self.instances_of[old.unit].discard(old.name)
        self.instances[inst.name] = inst
        self.instances_of.setdefault(inst.unit, set()).add(inst.name)
        if inst.machine:
            self._account(inst)
        self.version += 1

    def remove_instance(self, name: str) -> None:
        old = self.instances.pop(name, None)
        if old is None:
            return
        if old.machine:
            self._unaccount(old)
        self.instances_of[old.unit].discard(name)
        self.version += 1

    def bind(self, name: str, machine: str) -> InstanceView:
        inst = self.instances[name]
        if inst.machine == machine:
            return inst
        if inst.machine:
            self._unaccount(inst)
        new = InstanceView(
            name=inst.name,
            unit=inst.unit,
            index=inst.index,
            machine=machine,
            epoch=inst.epoch,
            phase=inst.phase,
            ready=inst.ready,
            generation=inst.generation,
        )
        self.instances[name] = new
        if machine:
            self._account(new)
        self.version += 1
        return new

    def unbind(self, name: str) -> InstanceView:
        return self.bind(name, "")

    def _account(self, inst: InstanceView, sign: int = 1) -> None:
        """Add (``sign`` 1) or take off (-1) one bound instance in every index. On the hot path of
        every binding: plain ``get``s and no throwaway Counters (``Counter()`` is a Python call)."""
        m, name = inst.machine, inst.unit
        unit = self.units.get(name)
        self.count[m] = self.count.get(m, 0) + sign
        on = self.units_on.get(m)
        if on is None:
            on = self.units_on[m] = Counter()
        _add(on, name, sign)
        of = self.machines_of.get(name)
        if of is None:  # a unit name never bound before: someone's globs may match it
            of = self.machines_of[name] = Counter()
            self._partners.clear()
        before = of.get(m, 0)
        after = before + sign
        _add(of, m, sign)
        levels = self.unit_levels.get(name)
        if levels is None:
            levels = self.unit_levels[name] = Counter()
        if before:
            _add(levels, before, -1)
        if after:
            levels[after] = levels.get(after, 0) + 1
        if unit is not None:
            if unit.cpu:
                self.used_cpu[m] = self.used_cpu.get(m, 0.0) + sign * unit.cpu
            if unit.memory_mb:
                self.used_memory[m] = self.used_memory.get(m, 0.0) + sign * unit.memory_mb
            if unit.host_ports:
                ports = self.ports_on.get(m)
                if ports is None:
                    ports = self.ports_on[m] = Counter()
                for hp in unit.host_ports:
                    _add(ports, hp, sign)
        if m in self._keys:
            if not before or not after:  # the unit arrived on or left a schedulable machine
                self.schedulable_hosts[name] += 1 if before == 0 else -1
            if self._rekey_later is None:
                self._reorder(m, rekey=True)
            else:
                self._rekey_later.add(m)

    def _unaccount(self, inst: InstanceView) -> None:
        self._account(inst, -1)

    def schedulable_hosts_of(self, unit: str) -> int:
        """How many Ready, schedulable machines run at least one instance of ``unit``."""
        return self.schedulable_hosts[unit]

    def unit_count_on(self, unit: str, machine: str) -> int:
        on = self.units_on.get(machine)
        return on.get(unit, 0) if on else 0
