"""One reconcile pass of the leader, as a pure function: snapshot in, writes out.

The machine, unit, scheduling and endpoints controllers are level-based and read the same
snapshot, so they run as one pass (fleet's engine did the same): machines that lost their
presence become NotReady and their instances are unbound; each unit's plan (plan.py) creates,
deletes and rolls instances; the scheduler places every pending instance, including the ones
this pass creates, so a new instance is created already bound (one etcd write, not two);
statuses and Endpoints are written only when they change. The manager applies the writes.

Every binding carries an epoch (bumped on each bind), which the agent stamps on its
containers: an agent that returns after its instances moved finds them bound elsewhere (or
at a newer epoch) and removes its copies.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from controlplane.controllers.plan import plan_unit, unit_status
from controlplane.scheduler.core import Scheduler

UNSCHEDULABLE = "Unschedulable"


@dataclass
class Bind:
    instance: str
    machine: str
    epoch: int


@dataclass
class Unbind:
    instance: str
    machine: str
    reason: str


@dataclass
class EventNote:
    kind: str
    name: str
    type: str
    reason: str
    message: str


@dataclass
class ClusterPlan:
    machines_not_ready: list[str] = field(default_factory=list)
    unbinds: list[Unbind] = field(default_factory=list)
    deletes: list[tuple[str, str]] = field(default_factory=list)  # (instance, reason)
    creates: list[dict[str, Any]] = field(default_factory=list)  # whole Instance objects, maybe bound
    replaces: list[dict[str, Any]] = field(default_factory=list)  # instance objects with the new spec
    binds: list[Bind] = field(default_factory=list)
    instance_status: dict[str, dict[str, Any]] = field(default_factory=dict)  # pending instances' status
    unit_status: dict[str, dict[str, Any]] = field(default_factory=dict)
    endpoints: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # unit -> new list
    endpoints_deleted: list[str] = field(default_factory=list)
    events: list[EventNote] = field(default_factory=list)
    pending_reasons: dict[str, int] = field(default_factory=dict)  # filter reason code -> instances

    def writes(self) -> int:
        return (len(self.machines_not_ready) + len(self.unbinds) + len(self.deletes) + len(self.creates)
                + len(self.replaces) + len(self.binds) + len(self.instance_status) + len(self.unit_status)
                + len(self.endpoints) + len(self.endpoints_deleted))


def _name(obj: Mapping[str, Any]) -> str:
    return str(obj["metadata"]["name"])


def new_instance(unit: Mapping[str, Any], name: str, index: int, machine: str = "", *,
                 template: dict[str, Any] | None = None) -> dict[str, Any]:
    """A new Instance of ``unit``. ``template`` (the unit's template, copied once per pass) may be
    shared by the instances of one plan: they are encoded, never mutated."""
    spec = unit.get("spec") or {}
    return {
        "apiVersion": "v1",
        "kind": "Instance",
        "metadata": {"name": name, "labels": dict((unit.get("metadata") or {}).get("labels") or {}),
                     "annotations": {}},
        "spec": {
            "unit": _name(unit),
            "index": index,
            "machine": machine,
            "epoch": 1 if machine else 0,
            "generation": int(unit["metadata"].get("generation", 1)),
            "template": template if template is not None else template_of(copy.deepcopy(spec)),
        },
        "status": {"phase": "Pending", "ready": False, "reason": "", "message": "", "containerID": "",
                   "address": "", "hostPorts": [], "restarts": 0, "exitCode": None, "startedAt": "",
                   "machine": "", "epoch": 0, "reasons": {}},
    }


# spec fields whose change does not touch a running instance (scaling is not a rollout)
NOT_TEMPLATE = ("replicas",)


def template_of(spec: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in spec.items() if k not in NOT_TEMPLATE}


def endpoints_for(unit: Mapping[str, Any], instances: Iterable[Mapping[str, Any]],
                  ready_machines: set[str]) -> list[dict[str, Any]]:
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
                               "instance": _name(inst), "machine": machine})
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
    # Copy on write: the snapshot is shared with the watch caches and is never modified here.
    # (Deep-copying every machine and instance was most of a pass's cost at 10,000 instances.)
    machines = list(machines)
    for i, machine in enumerate(machines):
        status = machine.get("status") or {}
        if status.get("state") == "Ready" and _name(machine) not in present:
            plan.machines_not_ready.append(_name(machine))
            machines[i] = {**machine, "status": {**status, "state": "NotReady"}}
            plan.events.append(EventNote("Machine", _name(machine), "Warning", "NodeNotReady",
                                         f"machine {_name(machine)} stopped heartbeating"))
    ready = {_name(m) for m in machines if (m.get("status") or {}).get("state") == "Ready"}
    known = {_name(m) for m in machines}

    units_by_name = {_name(u): u for u in units}
    work: dict[str, dict[str, Any]] = {}
    for inst in instances:
        spec = inst["spec"]
        unit = units_by_name.get(spec.get("unit", ""))
        if unit is None:
            plan.deletes.append((_name(inst), f"unit {spec.get('unit')} no longer exists"))
            continue
        generation = int(unit["metadata"].get("generation", 1))
        if int(spec.get("generation") or 0) < generation and template_of(spec.get("template") or {}) == template_of(
            unit.get("spec") or {}
        ):
            inst = {**inst, "spec": {**spec, "generation": generation}}  # only replicas changed: nothing to roll
            spec = inst["spec"]
        bound = str(spec.get("machine") or "")
        if bound and bound not in ready and not unit["spec"].get("global"):
            why = "is gone" if bound not in known else "is NotReady"
            plan.unbinds.append(Unbind(_name(inst), bound, f"machine {bound} {why}"))
            plan.events.append(EventNote("Instance", _name(inst), "Warning", "Rescheduled",
                                         f"machine {bound} {why}; placing {_name(inst)} elsewhere"))
            inst = {**inst, "spec": {**spec, "machine": ""},
                    "status": {**(inst.get("status") or {}), "phase": "Pending", "ready": False}}
        work[_name(inst)] = inst

    # units: create, delete, roll
    by_unit: dict[str, list[dict[str, Any]]] = {}
    for inst in work.values():
        by_unit.setdefault(inst["spec"]["unit"], []).append(inst)
    templates: dict[str, dict[str, Any]] = {}

    def template_for(unit: Mapping[str, Any]) -> dict[str, Any]:
        """The unit's template, copied once per pass and shared by the instances this pass makes."""
        if _name(unit) not in templates:
            templates[_name(unit)] = template_of(copy.deepcopy(unit.get("spec") or {}))
        return templates[_name(unit)]

    for unit in units:
        mine = by_unit.get(_name(unit), [])
        for action in plan_unit(unit, mine, machines):
            if action.kind == "delete":
                plan.deletes.append((action.instance, action.reason))
                work.pop(action.instance, None)
            elif action.kind == "create":
                obj = new_instance(unit, action.instance, action.index, action.machine,
                                   template=template_for(unit))
                plan.creates.append(obj)
                work[action.instance] = obj
            elif action.kind == "replace" and action.instance in work:
                old = work[action.instance]
                fresh = new_instance(unit, action.instance, action.index,
                                     old["spec"]["machine"] if unit["spec"].get("global") else "",
                                     template=template_for(unit))
                fresh["spec"]["epoch"] = int(old["spec"].get("epoch") or 0) + (1 if fresh["spec"]["machine"] else 0)
                fresh["metadata"] = copy.deepcopy(old["metadata"])
                plan.replaces.append(fresh)
                work[action.instance] = fresh
                plan.events.append(EventNote("Instance", action.instance, "Normal", "Replaced", action.reason))

    # scheduling: every instance still without a machine
    scheduler = Scheduler.from_dicts(machines, units, list(work.values()))
    created = {_name(c): c for c in plan.creates}
    replaced = {_name(r): r for r in plan.replaces}
    for name in scheduler.pending():
        placement = scheduler.place(name)
        inst = work[name]
        if placement.machine is not None:
            epoch = int(inst["spec"].get("epoch") or 0) + 1
            if name in created or name in replaced:
                inst["spec"]["machine"], inst["spec"]["epoch"] = placement.machine, epoch
            else:
                plan.binds.append(Bind(name, placement.machine, epoch))
                work[name] = {**inst, "spec": {**inst["spec"], "machine": placement.machine, "epoch": epoch}}
            continue
        for code, count in placement.codes.items():
            plan.pending_reasons[code] = plan.pending_reasons.get(code, 0) + count
        status = inst.get("status") or {}
        wanted = {"phase": "Pending", "ready": False, "reason": UNSCHEDULABLE, "message": placement.message,
                  "reasons": dict(placement.reasons)}
        if any(status.get(k) != v for k, v in wanted.items()):
            new_status = {**status, **wanted}
            if name in created or name in replaced:
                inst["status"] = new_status
            else:
                plan.instance_status[name] = new_status
            if status.get("message") != placement.message:
                plan.events.append(EventNote("Instance", name, "Warning", "FailedScheduling", placement.message))

    # unit status and endpoints
    by_unit = {}
    for inst in work.values():
        by_unit.setdefault(inst["spec"]["unit"], []).append(inst)
    current_eps = {_name(e): e for e in endpoints}
    for unit in units:
        mine = by_unit.get(_name(unit), [])
        status = unit.get("status") or {}
        counts = unit_status(unit, mine)
        if any(status.get(k) != v for k, v in counts.items()):
            plan.unit_status[_name(unit)] = {**status, **counts}
        eps = endpoints_for(unit, mine, ready)
        existing = current_eps.get(_name(unit))
        if existing is None or existing.get("endpoints") != eps:
            plan.endpoints[_name(unit)] = eps
    for name in current_eps:
        if name not in units_by_name:
            plan.endpoints_deleted.append(name)
    return plan
