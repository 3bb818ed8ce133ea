"""Table tests for the unit controller's plan: exact action lists, reasons included."""

from __future__ import annotations

from typing import Any

import pytest

from controlplane.controllers import plan
from controlplane.controllers.plan import Action
from controlplane.scheduler.view import InstanceView, MachineView, UnitView


def plan_unit(u: dict[str, Any], instances: list[dict[str, Any]], machines: list[dict[str, Any]]) -> list[Action]:
    """``plan.plan_unit`` over wire dicts: the leader's pass parses each object into its view once."""
    return plan.plan_unit(UnitView.from_dict(u), [InstanceView.from_dict(i) for i in instances],
                          [MachineView.from_dict(m) for m in machines])


def unit_status(u: dict[str, Any], instances: list[dict[str, Any]]) -> dict[str, int]:
    return plan.unit_status(UnitView.from_dict(u), [InstanceView.from_dict(i) for i in instances])


def unit(name: str = "web", *, replicas: int = 2, generation: int = 1, glob: bool = False, **placement: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "generation": generation},
        "spec": {"image": "x", "replicas": replicas, "global": glob, "placement": placement},
    }


def inst(
    index: int, *, u: str = "web", on: str = "m1", up: bool = True, phase: str | None = None, generation: int = 1
) -> dict[str, Any]:
    return {
        "metadata": {"name": f"{u}-{index}"},
        "spec": {"unit": u, "index": index, "machine": on, "generation": generation},
        "status": {"phase": phase or ("Running" if up else "Starting"), "ready": up},
    }


def machine(name: str, *, ready: bool = True, cordoned: bool = False, **labels: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": {"unschedulable": cordoned},
        "status": {"state": "Ready" if ready else "NotReady"},
    }


def create(index: int, reason: str, machine: str = "", u: str = "web") -> Action:
    return Action("create", f"{u}-{index}", index, reason, machine)


def delete(index: int, reason: str, u: str = "web") -> Action:
    return Action("delete", f"{u}-{index}", index, reason)


def replace(index: int, reason: str, u: str = "web") -> Action:
    return Action("replace", f"{u}-{index}", index, reason)


UP3 = "scale up to 3 replicas"
DOWN2 = "scale down to 2 replicas"
ROLL = "generation 1 -> 2"
ROLL_DOWN = "generation 1 -> 2 (instance not ready)"
M3 = [machine("m1"), machine("m2"), machine("m3")]

# (case id, unit, instances, machines, expected actions)
CASES: list[tuple[str, dict[str, Any], list[dict[str, Any]], list[dict[str, Any]], list[Action]]] = [
    # replicas
    ("create from nothing", unit(replicas=3), [], [],
     [create(0, f"{UP3} (0 exist)"), create(1, f"{UP3} (0 exist)"), create(2, f"{UP3} (0 exist)")]),
    ("steady", unit(replicas=2), [inst(0), inst(1)], [], []),
    ("lowest free index first", unit(replicas=3), [inst(0), inst(2)], [], [create(1, f"{UP3} (2 exist)")]),
    ("lowest free indexes, several", unit(replicas=4), [inst(1), inst(3)], [],
     [create(0, "scale up to 4 replicas (2 exist)"), create(2, "scale up to 4 replicas (2 exist)")]),
    ("count matters, not index values", unit(replicas=3), [inst(0), inst(1), inst(5)], [], []),
    ("scale down removes the highest", unit(replicas=2), [inst(0), inst(1), inst(2), inst(3)], [],
     [delete(2, f"{DOWN2} (4 exist)"), delete(3, f"{DOWN2} (4 exist)")]),
    ("scale down with gaps", unit(replicas=1), [inst(7), inst(0), inst(5)], [],
     [delete(5, "scale down to 1 replicas (3 exist)"), delete(7, "scale down to 1 replicas (3 exist)")]),
    ("scale to zero", unit(replicas=0), [inst(0)], [], [delete(0, "scale down to 0 replicas (1 exist)")]),
    ("other units' instances are ignored", unit(replicas=1), [inst(0), inst(0, u="api"), inst(1, u="api")], [], []),
    ("replicas without machines: the scheduler places them", unit(replicas=1), [], [],
     [create(0, "scale up to 1 replicas (0 exist)")]),
    # global
    ("global: one per machine, pinned, by machine name", unit("edge", glob=True), [],
     [machine("m3"), machine("m1"), machine("m2")],
     [create(0, "global: machine m1 has no instance", "m1", "edge"),
      create(1, "global: machine m2 has no instance", "m2", "edge"),
      create(2, "global: machine m3 has no instance", "m3", "edge")]),
    ("global: replicas ignored", unit("edge", glob=True, replicas=0), [inst(0, u="edge", on="m1")], [machine("m1")], []),
    ("global: only eligible machines",
     unit("edge", glob=True, machineMetadata={"role": ["edge", "lb"]}), [],
     [machine("m1", role="edge"), machine("m2", role="web"), machine("m3", role="lb"),
      machine("m4", role="edge", ready=False), machine("m5", role="edge", cordoned=True), machine("m6")],
     [create(0, "global: machine m1 has no instance", "m1", "edge"),
      create(1, "global: machine m3 has no instance", "m3", "edge")]),
    ("global: a new machine gets the lowest free index", unit("edge", glob=True),
     [inst(0, u="edge", on="m1"), inst(2, u="edge", on="m3")], M3,
     [create(1, "global: machine m2 has no instance", "m2", "edge")]),
    ("global: machine gone", unit("edge", glob=True),
     [inst(0, u="edge", on="m1"), inst(1, u="edge", on="m9")], [machine("m1")],
     [delete(1, "global: machine m9 is gone", "edge")]),
    ("global: machine NotReady", unit("edge", glob=True),
     [inst(0, u="edge", on="m1"), inst(1, u="edge", on="m2")], [machine("m1"), machine("m2", ready=False)],
     [delete(1, "global: machine m2 is no longer eligible: NotReady", "edge")]),
    ("global: machine cordoned", unit("edge", glob=True),
     [inst(0, u="edge", on="m1")], [machine("m1", cordoned=True)],
     [delete(0, "global: machine m1 is no longer eligible: cordoned", "edge")]),
    ("global: labels changed", unit("edge", glob=True, machineMetadata={"role": ["edge"]}),
     [inst(0, u="edge", on="m1")], [machine("m1", role="web")],
     [delete(0, "global: machine m1 is no longer eligible: lacks role=edge", "edge")]),
    ("global: duplicate on one machine", unit("edge", glob=True),
     [inst(0, u="edge", on="m1"), inst(1, u="edge", on="m1")], [machine("m1")],
     [delete(1, "global: another instance already runs on machine m1", "edge")]),
    ("global: unpinned instance", unit("edge", glob=True), [inst(0, u="edge", on="")], [machine("m1")],
     [delete(0, "global: instance is not pinned to a machine", "edge"),
      create(1, "global: machine m1 has no instance", "m1", "edge")]),
    ("global: replacement machine never reuses a name being deleted", unit("edge", glob=True),
     [inst(0, u="edge", on="m9")], [machine("m4")],
     [delete(0, "global: machine m9 is gone", "edge"), create(1, "global: machine m4 has no instance", "m4", "edge")]),
    # rolling update: never more than one instance down
    ("roll: one at a time, lowest index first", unit(replicas=3, generation=2),
     [inst(0), inst(1), inst(2)], [], [replace(0, ROLL)]),
    ("roll: wait while the replaced one starts", unit(replicas=3, generation=2),
     [inst(0, generation=2, up=False), inst(1), inst(2)], [], []),
    ("roll: next once it is ready", unit(replicas=3, generation=2),
     [inst(0, generation=2), inst(1), inst(2)], [], [replace(1, ROLL)]),
    ("roll: done", unit(replicas=2, generation=2), [inst(0, generation=2), inst(1, generation=2)], [], []),
    ("roll: a single instance is replaced", unit(replicas=1, generation=2), [inst(0)], [], [replace(0, ROLL)]),
    ("roll: an old instance that is down goes first, alone", unit(replicas=3, generation=2),
     [inst(0), inst(1, up=False), inst(2)], [], [replace(1, ROLL_DOWN)]),
    ("roll: every old down instance at once (crash loop fixed by the new version)", unit(replicas=3, generation=2),
     [inst(0, phase="Failed", up=False), inst(1, up=False), inst(2)], [], [replace(0, ROLL_DOWN), replace(1, ROLL_DOWN)]),
    ("roll: a down new instance holds back up old ones", unit(replicas=3, generation=2),
     [inst(0, generation=2, phase="Failed", up=False), inst(1), inst(2)], [], []),
    ("roll: Running but not ready is down", unit(replicas=2, generation=2),
     [inst(0, phase="Running", up=False, generation=2), inst(1)], [], []),
    ("roll: scale-up creates count as down", unit(replicas=3, generation=2),
     [inst(0), inst(1)], [], [create(2, "scale up to 3 replicas (2 exist)")]),
    ("roll: scaled-down instances are not replaced", unit(replicas=1, generation=2),
     [inst(0), inst(1)], [], [delete(1, "scale down to 1 replicas (2 exist)"), replace(0, ROLL)]),
    ("roll: missing generations are equal", {"metadata": {"name": "web"}, "spec": {"replicas": 1}},
     [{"metadata": {"name": "web-0"}, "spec": {"unit": "web", "index": 0, "machine": "m1"}}], [], []),
    ("roll: global units too", unit("edge", glob=True, generation=2),
     [inst(0, u="edge", on="m1"), inst(1, u="edge", on="m2")], M3[:2], [replace(0, ROLL, "edge")]),
    ("roll: global, new machine's create counts as down", unit("edge", glob=True, generation=2),
     [inst(0, u="edge", on="m1")], M3[:2], [create(1, "global: machine m2 has no instance", "m2", "edge")]),
]


@pytest.mark.parametrize(("u", "instances", "machines", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_plan_unit(
    u: dict[str, Any], instances: list[dict[str, Any]], machines: list[dict[str, Any]], expected: list[Action]
) -> None:
    assert plan_unit(u, instances, machines) == expected


def test_plan_converges() -> None:
    """Applying a plan and planning again gives nothing more to do (for a steady cluster)."""
    u = unit(replicas=3)
    instances = [inst(1)]
    for action in plan_unit(u, instances, []):
        assert action.kind == "create"
        instances.append(inst(action.index))
    assert plan_unit(u, instances, []) == []


@pytest.mark.parametrize(
    ("u", "instances", "expected"),
    [
        (unit(replicas=3, generation=4), [inst(0), inst(1, up=False), inst(2, phase="Running", up=False), inst(0, u="x")],
         {"replicas": 3, "readyReplicas": 1, "observedGeneration": 4}),
        ({"metadata": {"name": "web"}, "spec": {}}, [], {"replicas": 0, "readyReplicas": 0, "observedGeneration": 0}),
    ],
)
def test_unit_status(u: dict[str, Any], instances: list[dict[str, Any]], expected: dict[str, int]) -> None:
    assert unit_status(u, instances) == expected
