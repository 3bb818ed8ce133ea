"""One reconcile pass of the leader, as a pure function: snapshot in, typed writes out.

The machine, unit, scheduling and endpoints controllers are level-based and read the same
snapshot, so they run as one pass (fleet's engine did the same): machines that lost their
presence become NotReady and their instances are unbound; each unit's plan (plan.py) creates,
deletes and rolls instances; the scheduler places every pending instance, including the ones
this pass creates, so a new instance is created already bound (one etcd write, not two);
statuses and Endpoints are written only when they change.

The plan is one list of ``Write``s (fleet's tasks): each names its ``WriteOp``, its target
object and the reason it is needed, plus the payload that op reads. The manager applies them
in op order (machines NotReady, then unbinds, then the rest at once; see ``manager.apply``).
Events are not writes: they are best-effort notes (``EventNote``) in a list of their own,
recorded in the background after the writes; losing one changes nothing the cluster converges to.

Each wire object is parsed once per pass into its scheduler view (scheduler/view.py); those
views feed the unit plans, the unit statuses and the scheduler. The dicts stay beside them for
what views do not carry (status details, templates, metadata) and are copied on write: the
snapshot is the watch caches' own objects. An instance this pass creates or replaces is the
pass's own object, so scheduling completes it (binding, pending status) in place.

Every binding carries an epoch (bumped on each bind), which the agent stamps on its
containers: an agent that returns after its instances moved finds them bound elsewhere (or
at a newer epoch) and removes its copies.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from controlplane.controllers.plan import Action, plan_unit, unit_status
from controlplane.model import UnitSpec, name_of, new_instance, template_of
from controlplane.scheduler.core import Placement, Scheduler
from controlplane.scheduler.view import InstanceView, MachineView, UnitView

UNSCHEDULABLE = "Unschedulable"
SCHEDULED_EVENTS_MAX = 50  # a pass that binds more records no Scheduled event per instance


class WriteOp(enum.StrEnum):
    """What a write does; the value is the ``op`` label of the refused-writes metric."""

    MARK_NOT_READY = "mark_not_ready"  # machine state -> NotReady
    UNBIND = "unbind"  # instance leaves ``machine``, back to Pending
    DELETE_INSTANCE = "delete_instance"
    CREATE_INSTANCE = "create_instance"  # ``instance``: the whole new object, maybe bound
    REPLACE_INSTANCE = "replace_instance"  # ``instance``: the object with the unit's new spec
    BIND = "bind"  # pending instance -> ``machine`` at ``epoch``
    INSTANCE_STATUS = "instance_status"  # ``status``: a pending instance's new status
    UNIT_STATUS = "unit_status"  # ``status``: the unit's new status
    ENDPOINTS = "endpoints"  # ``endpoints``: the unit's new list
    DELETE_ENDPOINTS = "delete_endpoints"


@dataclass(frozen=True)
class Write:
    """One write of a pass: ``op`` on the object named ``target``, because ``reason``."""

    op: WriteOp
    target: str
    reason: str
    machine: str = ""
    epoch: int = 0
    instance: dict[str, Any] | None = None
    status: dict[str, Any] | None = None
    endpoints: list[dict[str, Any]] | None = None


@dataclass
class EventNote:
    kind: str
    name: str
    type: str
    reason: str
    message: str


@dataclass
class ClusterPlan:
    writes: list[Write] = field(default_factory=list)
    events: list[EventNote] = field(default_factory=list)
    pending_reasons: dict[str, int] = field(default_factory=dict)  # filter reason code -> instances

    def of(self, op: WriteOp) -> list[Write]:
        """The writes of one op, in plan order."""
        return [w for w in self.writes if w.op is op]

    def write(self, op: WriteOp, target: str, reason: str, **payload: Any) -> None:
        self.writes.append(Write(op, target, reason, **payload))

    def note(self, kind: str, name: str, type_: str, reason: str, message: str) -> None:
        self.events.append(EventNote(kind, name, type_, reason, message))


@dataclass
class _Pass:
    """The working copy of one pass: instance objects (copied on write) and their views."""

    plan: ClusterPlan
    machines: list[MachineView]
    ready: set[str]
    units: dict[str, UnitView]  # snapshot order
    unit_objects: Mapping[str, Mapping[str, Any]]
    work: dict[str, dict[str, Any]] = field(default_factory=dict)
    views: dict[str, InstanceView] = field(default_factory=dict)
    fresh: set[str] = field(default_factory=set)  # created or replaced by this pass
    templates: dict[str, UnitSpec] = field(default_factory=dict)

    def put(self, obj: dict[str, Any], view: InstanceView) -> None:
        self.work[view.name] = obj
        self.views[view.name] = view

    def drop(self, name: str) -> None:
        self.work.pop(name, None)
        self.views.pop(name, None)

    def views_by_unit(self) -> dict[str, list[InstanceView]]:
        grouped: dict[str, list[InstanceView]] = {}
        for view in self.views.values():
            grouped.setdefault(view.unit, []).append(view)
        return grouped

    def new_instance(self, unit: str, name: str, index: int, machine: str) -> dict[str, Any]:
        """A new Instance of ``unit``; the unit's template is copied once per pass and shared."""
        obj = self.unit_objects[unit]
        if unit not in self.templates:
            self.templates[unit] = template_of(copy.deepcopy(obj.get("spec") or {}))
        return cast(dict[str, Any], new_instance(obj, name, index, machine, template=self.templates[unit]))


def endpoints_for(instances: Iterable[Mapping[str, Any]], ready_machines: set[str]) -> list[dict[str, Any]]:
    """The ready instances' published ports, sorted: what proxies route to."""
    result: list[dict[str, Any]] = []
    for inst in instances:
        spec, status = inst.get("spec") or {}, inst.get("status") or {}
        machine = spec.get("machine") or ""
        if not (status.get("phase") == "Running" and status.get("ready") and machine in ready_machines):
            continue
        if status.get("machine") not in ("", machine) or int(status.get("epoch") or 0) != int(spec.get("epoch") or 0):
            continue  # a report from an earlier binding
        address = status.get("address") or ""
        for port in status.get("hostPorts") or []:
            if address and port.get("hostPort"):
                result.append({"address": address, "port": int(port["hostPort"]),
                               "containerPort": int(port["containerPort"]),
                               "instance": name_of(inst), "machine": machine})
    return sorted(result, key=lambda e: (e["instance"], e["containerPort"], e["address"], e["port"]))


def plan_cluster(
    machines: list[dict[str, Any]],
    units: list[dict[str, Any]],
    instances: list[dict[str, Any]],
    endpoints: list[dict[str, Any]],
    present: set[str],
) -> ClusterPlan:
    """Everything the leader should write to converge, given one consistent-enough snapshot."""
    plan = ClusterPlan()
    machine_views = _machines(plan, machines, present)
    unit_objects = {name_of(u): u for u in units}
    state = _Pass(
        plan, machine_views, ready={m.name for m in machine_views if m.ready},
        units={name: UnitView.from_dict(u) for name, u in unit_objects.items()}, unit_objects=unit_objects,
    )
    _instances(state, instances, known={m.name for m in machine_views})
    _unit_actions(state)
    _schedule(state)
    _unit_statuses(state)
    _endpoints(state, endpoints)
    return plan


# ---- machines and bound instances -------------------------------------------------------------

def _machines(plan: ClusterPlan, machines: Iterable[Mapping[str, Any]], present: set[str]) -> list[MachineView]:
    """Ready machines without a presence key become NotReady; the views say so already."""
    views: list[MachineView] = []
    for obj in machines:
        view = MachineView.from_dict(obj)
        if view.ready and view.name not in present:
            reason = f"machine {view.name} stopped heartbeating"
            plan.write(WriteOp.MARK_NOT_READY, view.name, reason)
            plan.note("Machine", view.name, "Warning", "NodeNotReady", reason)
            view = dataclasses.replace(view, ready=False)
        views.append(view)
    return views


def _instances(state: _Pass, instances: Iterable[dict[str, Any]], *, known: set[str]) -> None:
    """Orphans are deleted; instances on machines that left are unbound (global ones stay: their
    unit plan deletes them); the rest become the pass's working set."""
    plan = state.plan
    for obj in instances:
        view = InstanceView.from_dict(obj)
        unit = state.units.get(view.unit)
        if unit is None:
            plan.write(WriteOp.DELETE_INSTANCE, view.name, f"unit {view.unit} no longer exists")
            continue
        spec = obj["spec"]
        generation = int(state.unit_objects[unit.name]["metadata"].get("generation", 1))
        if view.generation < generation and template_of(spec.get("template") or {}) == template_of(
            state.unit_objects[unit.name].get("spec") or {}
        ):
            obj = {**obj, "spec": {**spec, "generation": generation}}  # only replicas changed: nothing to roll
            view = dataclasses.replace(view, generation=generation)
        bound = view.machine
        if bound and bound not in state.ready and not unit.is_global:
            why = "is gone" if bound not in known else "is NotReady"
            plan.write(WriteOp.UNBIND, view.name, f"machine {bound} {why}", machine=bound)
            plan.note("Instance", view.name, "Warning", "Rescheduled",
                      f"machine {bound} {why}; placing {view.name} elsewhere")
            obj = {**obj, "spec": {**obj["spec"], "machine": ""},
                   "status": {**(obj.get("status") or {}), "phase": "Pending", "ready": False}}
            view = dataclasses.replace(view, machine="", phase="Pending", ready=False)
        state.put(obj, view)


# ---- units: create, delete, roll --------------------------------------------------------------

def _unit_actions(state: _Pass) -> None:
    by_unit = state.views_by_unit()
    for name, unit in state.units.items():
        for action in plan_unit(unit, by_unit.get(name, []), state.machines):
            if action.kind == "delete":
                state.plan.write(WriteOp.DELETE_INSTANCE, action.instance, action.reason)
                state.drop(action.instance)
            elif action.kind == "create":
                obj = state.new_instance(name, action.instance, action.index, action.machine)
                state.plan.write(WriteOp.CREATE_INSTANCE, action.instance, action.reason, instance=obj)
                spec = obj["spec"]  # the view from_dict would parse, built from what new_instance wrote
                state.put(obj, InstanceView(name=action.instance, unit=name, index=action.index, machine=spec["machine"],
                                            epoch=spec["epoch"], generation=spec["generation"]))
                state.fresh.add(action.instance)
            elif action.kind == "replace" and action.instance in state.work:
                _replace(state, unit, action)


def _replace(state: _Pass, unit: UnitView, action: Action) -> None:
    """A new object for the instance, with the unit's spec; global instances keep their machine."""
    old = state.work[action.instance]
    fresh = state.new_instance(unit.name, action.instance, action.index,
                               old["spec"]["machine"] if unit.is_global else "")
    fresh["spec"]["epoch"] = int(old["spec"].get("epoch") or 0) + (1 if fresh["spec"]["machine"] else 0)
    fresh["metadata"] = copy.deepcopy(old["metadata"])
    state.plan.write(WriteOp.REPLACE_INSTANCE, action.instance, action.reason, instance=fresh)
    state.put(fresh, InstanceView.from_dict(fresh))
    state.fresh.add(action.instance)
    state.plan.note("Instance", action.instance, "Normal", "Replaced", action.reason)


# ---- scheduling: every instance still without a machine ---------------------------------------

def _schedule(state: _Pass) -> None:
    scheduler = Scheduler.from_views(state.machines, state.units.values(), state.views.values())
    binds: list[tuple[str, str]] = []
    for placement in scheduler.place_many(scheduler.pending()):
        name = placement.instance
        if placement.machine is None:
            _unschedulable(state, name, placement)
        else:
            _bind(state, name, placement.machine)
            binds.append((name, placement.machine))
    if len(binds) <= SCHEDULED_EVENTS_MAX:  # new instances too: they are created bound
        for name, machine in binds:
            state.plan.note("Instance", name, "Normal", "Scheduled", f"Successfully assigned {name} to {machine}")


def _bind(state: _Pass, name: str, machine: str) -> bool:
    """Bind ``name`` one epoch up; True when that takes a write of its own (not a create or a
    replace, which carry their binding)."""
    inst = state.work[name]
    epoch = int(inst["spec"].get("epoch") or 0) + 1
    view = state.views[name]  # built, not dataclasses.replace'd: this runs once per binding
    state.views[name] = InstanceView(name=view.name, unit=view.unit, index=view.index, machine=machine, epoch=epoch,
                                     phase=view.phase, ready=view.ready, generation=view.generation)
    if name in state.fresh:
        inst["spec"]["machine"], inst["spec"]["epoch"] = machine, epoch
        return False
    state.plan.write(WriteOp.BIND, name, f"pending; placed on {machine}", machine=machine, epoch=epoch)
    state.work[name] = {**inst, "spec": {**inst["spec"], "machine": machine, "epoch": epoch}}
    return True


def _unschedulable(state: _Pass, name: str, placement: Placement) -> None:
    """Nothing fits: the instance says why (written only when the why changes)."""
    plan = state.plan
    for code, count in placement.codes.items():
        plan.pending_reasons[code] = plan.pending_reasons.get(code, 0) + count
    inst = state.work[name]
    status = inst.get("status") or {}
    wanted = {"phase": "Pending", "ready": False, "reason": UNSCHEDULABLE, "message": placement.message,
              "reasons": dict(placement.reasons)}
    if all(status.get(k) == v for k, v in wanted.items()):
        return
    new_status = {**status, **wanted}
    if name in state.fresh:
        inst["status"] = new_status
    else:
        plan.write(WriteOp.INSTANCE_STATUS, name, f"{UNSCHEDULABLE}: {placement.message}", status=new_status)
    if status.get("message") != placement.message:
        plan.note("Instance", name, "Warning", "FailedScheduling", placement.message)


# ---- unit status and endpoints ----------------------------------------------------------------

def _changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    return [f"{k} {old.get(k, 'unset')} -> {v}" for k, v in new.items() if old.get(k) != v]


def _unit_statuses(state: _Pass) -> None:
    by_unit = state.views_by_unit()
    for name, unit in state.units.items():
        status = state.unit_objects[name].get("status") or {}
        counts = unit_status(unit, by_unit.get(name, []))
        changes = _changes(status, counts)
        if changes:
            state.plan.write(WriteOp.UNIT_STATUS, name, ", ".join(changes), status={**status, **counts})


def _endpoints(state: _Pass, endpoints: Iterable[Mapping[str, Any]]) -> None:
    current = {name_of(e): e for e in endpoints}
    by_unit: dict[str, list[dict[str, Any]]] = {}
    for name, obj in state.work.items():
        by_unit.setdefault(state.views[name].unit, []).append(obj)
    for name in state.units:
        eps = endpoints_for(by_unit.get(name, []), state.ready)
        existing = current.get(name)
        if existing is None:
            state.plan.write(WriteOp.ENDPOINTS, name, "no Endpoints object yet", endpoints=eps)
        elif existing.get("endpoints") != eps:
            before = len(existing.get("endpoints") or [])
            state.plan.write(WriteOp.ENDPOINTS, name, f"ready endpoints changed ({before} -> {len(eps)})",
                             endpoints=eps)
    for name in current:
        if name not in state.units:
            state.plan.write(WriteOp.DELETE_ENDPOINTS, name, f"unit {name} no longer exists")
