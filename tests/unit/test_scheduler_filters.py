"""Table tests: each placement filter, one machine at a time, and fleet's refused combinations."""

from __future__ import annotations

from typing import Any

import pytest

from controlplane.scheduler import filters as f
from controlplane.scheduler.rules import placement_causes
from controlplane.scheduler.state import ClusterState
from controlplane.scheduler.view import MachineView, UnitView


def machine(
    name: str = "m1",
    *,
    labels: dict[str, str] | None = None,
    ready: bool = True,
    cordoned: bool = False,
    cpu: float | None = None,
    memory: float | None = None,
) -> dict[str, Any]:
    capacity: dict[str, float] = {}
    if cpu is not None:
        capacity["cpu"] = cpu
    if memory is not None:
        capacity["memoryMB"] = memory
    return {
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"unschedulable": cordoned},
        "status": {"state": "Ready" if ready else "NotReady", "capacity": capacity},
    }


def unit(name: str, **placement: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"image": "x"}
    for key in ("cpu", "memoryMB"):
        if key in placement:
            spec.setdefault("resources", {})[key] = placement.pop(key)
    if "ports" in placement:
        spec["ports"] = placement.pop("ports")
    spec["placement"] = placement
    return {"metadata": {"name": name}, "spec": spec}


def bound(unit_name: str, index: int, machine_name: str = "m1") -> dict[str, Any]:
    return {
        "metadata": {"name": f"{unit_name}-{index}"},
        "spec": {"unit": unit_name, "index": index, "machine": machine_name},
    }


# (case id, filter, newcomer unit, machine, other units, bound instances, expected rejection text)
CASES: list[tuple[str, f.Filter, dict[str, Any], dict[str, Any], list[dict[str, Any]], list[dict[str, Any]], str | None]] = [
    ("ready", f.MachineReady(), unit("web"), machine(), [], [], None),
    ("not ready", f.MachineReady(), unit("web"), machine(ready=False), [], [], "NotReady"),
    ("schedulable", f.MachineSchedulable(), unit("web"), machine(), [], [], None),
    ("cordoned", f.MachineSchedulable(), unit("web"), machine(cordoned=True), [], [], "cordoned"),
    ("pin match", f.PinnedMachine(), unit("web", machine="m1"), machine("m1"), [], [], None),
    ("pin other", f.PinnedMachine(), unit("web", machine="m1"), machine("m2"), [], [], "not m1 (pinned)"),
    # machineMetadata: keys ANDed, values ORed, exact match
    ("meta match", f.MachineMetadata(), unit("web", machineMetadata={"role": ["edge"]}),
     machine(labels={"role": "edge"}), [], [], None),
    ("meta mismatch", f.MachineMetadata(), unit("web", machineMetadata={"role": ["edge"]}),
     machine(labels={"role": "web"}), [], [], "lacks role=edge"),
    ("meta missing label", f.MachineMetadata(), unit("web", machineMetadata={"role": ["edge"]}),
     machine(), [], [], "lacks role=edge"),
    ("meta exact, not prefix", f.MachineMetadata(), unit("web", machineMetadata={"role": ["edge"]}),
     machine(labels={"role": "edge2"}), [], [], "lacks role=edge"),
    ("meta values ORed", f.MachineMetadata(), unit("web", machineMetadata={"role": ["web", "edge"]}),
     machine(labels={"role": "edge"}), [], [], None),
    ("meta values ORed, none", f.MachineMetadata(), unit("web", machineMetadata={"role": ["web", "edge"]}),
     machine(labels={"role": "db"}), [], [], "lacks role=web|edge"),
    ("meta keys ANDed", f.MachineMetadata(), unit("web", machineMetadata={"role": ["web"], "region": ["eu"]}),
     machine(labels={"role": "web", "region": "eu"}), [], [], None),
    ("meta keys ANDed, one fails", f.MachineMetadata(),
     unit("web", machineMetadata={"role": ["web"], "region": ["eu"]}),
     machine(labels={"role": "web", "region": "us"}), [], [], "lacks region=eu"),
    ("meta first failing key in key order", f.MachineMetadata(),
     unit("web", machineMetadata={"zone": ["a"], "role": ["web"]}), machine(), [], [], "lacks role=web"),
    # spread
    ("spread required, free", f.SpreadRequired(), unit("web"), machine(), [], [bound("db", 0)], None),
    ("spread required, taken", f.SpreadRequired(), unit("web"), machine(), [], [bound("web", 0)],
     "already runs web"),
    ("spread explicit required", f.SpreadRequired(), unit("web", spread="required"), machine(), [],
     [bound("web", 0)], "already runs web"),
    ("spread taken elsewhere", f.SpreadRequired(), unit("web"), machine("m1"), [], [bound("web", 0, "m2")],
     None),
    # machineOf
    ("machineOf present", f.MachineOf(), unit("app", machineOf="cache"), machine(), [unit("cache")],
     [bound("cache", 0)], None),
    ("machineOf absent", f.MachineOf(), unit("app", machineOf="cache"), machine(), [unit("cache")], [],
     "no instance of cache"),
    ("machineOf on another machine", f.MachineOf(), unit("app", machineOf="cache"), machine("m1"),
     [unit("cache")], [bound("cache", 0, "m2")], "no instance of cache"),
    # resources
    ("cpu fits", f.Resources(), unit("web", cpu=0.5), machine(cpu=4), [unit("db", cpu=3.5)],
     [bound("db", 0)], None),
    ("cpu short", f.Resources(), unit("web", cpu=0.75), machine(cpu=4), [unit("db", cpu=3.5)],
     [bound("db", 0)], "insufficient cpu"),
    ("cpu float sums", f.Resources(), unit("web", cpu=0.1), machine(cpu=0.3), [unit("db", cpu=0.1)],
     [bound("db", 0), bound("db", 1)], None),
    ("memory short", f.Resources(), unit("web", memoryMB=512), machine(cpu=4, memory=1024),
     [unit("db", memoryMB=600)], [bound("db", 0)], "insufficient memory"),
    ("no capacity reported: unlimited", f.Resources(), unit("web", cpu=64, memoryMB=10**6), machine(), [], [],
     None),
    ("bigger than the machine", f.Resources(), unit("web", cpu=8), machine(cpu=4), [], [], "insufficient cpu"),
    # host ports
    ("host port free", f.HostPorts(), unit("web", ports=[{"containerPort": 80, "hostPort": 80}]), machine(),
     [unit("db", ports=[{"containerPort": 80, "hostPort": 81}])], [bound("db", 0)], None),
    ("host port taken", f.HostPorts(), unit("web", ports=[{"containerPort": 80, "hostPort": 80}]), machine(),
     [unit("db", ports=[{"containerPort": 8080, "hostPort": 80, "protocol": "tcp"}])], [bound("db", 0)],
     "port 80/tcp in use"),
    ("same port, other protocol", f.HostPorts(),
     unit("web", ports=[{"containerPort": 53, "hostPort": 53, "protocol": "udp"}]), machine(),
     [unit("db", ports=[{"containerPort": 53, "hostPort": 53}])], [bound("db", 0)], None),
    # conflicts, both ways
    ("conflicts glob matches existing", f.Conflicts(), unit("web", conflicts=["db-*"]), machine(),
     [unit("db-main")], [bound("db-main", 0)], "conflict with db-main"),
    ("conflicts glob does not match", f.Conflicts(), unit("web", conflicts=["db-*"]), machine(),
     [unit("dbx")], [bound("dbx", 0)], None),
    ("existing unit's glob matches newcomer", f.Conflicts(), unit("web"), machine(),
     [unit("db", conflicts=["we?"])], [bound("db", 0)], "conflict with db"),
    ("conflicts: existing instance of a deleted unit", f.Conflicts(), unit("web", conflicts=["old*"]), machine(),
     [], [bound("oldapp", 0)], "conflict with oldapp"),
    ("conflicts: smallest conflicting name", f.Conflicts(), unit("web", conflicts=["b*", "a*"]), machine(),
     [unit("bee"), unit("ant")], [bound("bee", 0), bound("ant", 0)], "conflict with ant"),
    ("conflicts: never with itself", f.Conflicts(), unit("web", conflicts=["web*"], spread="none"), machine(),
     [], [bound("web", 0)], None),
    ("conflicts: exact name glob", f.Conflicts(), unit("web", conflicts=["db"]), machine(),
     [unit("db2")], [bound("db2", 0)], None),
]


@pytest.mark.parametrize(
    ("flt", "newcomer", "mach", "others", "instances", "expected"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_filter(
    flt: f.Filter,
    newcomer: dict[str, Any],
    mach: dict[str, Any],
    others: list[dict[str, Any]],
    instances: list[dict[str, Any]],
    expected: str | None,
) -> None:
    state = ClusterState.from_dicts([mach], [newcomer, *others], instances)
    view = UnitView.from_dict(newcomer)
    assert flt.applies(view, state)
    assert flt.check(view, MachineView.from_dict(mach), state) == expected


# (case id, filter, unit, other units, applies?)
APPLIES: list[tuple[str, f.Filter, dict[str, Any], list[dict[str, Any]], bool]] = [
    ("no pin", f.PinnedMachine(), unit("web"), [], False),
    ("no metadata", f.MachineMetadata(), unit("web"), [], False),
    ("spread default is required", f.SpreadRequired(), {"metadata": {"name": "web"}, "spec": {}}, [], True),
    ("spread preferred", f.SpreadRequired(), unit("web", spread="preferred"), [], False),
    ("spread none", f.SpreadRequired(), unit("web", spread="none"), [], False),
    ("no machineOf", f.MachineOf(), unit("web"), [], False),
    ("no resources", f.Resources(), unit("web"), [], False),
    ("hostPort 0 is the agent's pick", f.HostPorts(), unit("web", ports=[{"containerPort": 80, "hostPort": 0}]),
     [], False),
    ("no globs anywhere", f.Conflicts(), unit("web"), [unit("db")], False),
    ("own globs", f.Conflicts(), unit("web", conflicts=["x"]), [], True),
    ("someone else's glob matches", f.Conflicts(), unit("web"), [unit("db", conflicts=["w*"])], True),
    ("someone else's glob does not match", f.Conflicts(), unit("web"), [unit("db", conflicts=["x*"])], False),
]


@pytest.mark.parametrize(
    ("flt", "subject", "others", "expected"), [c[1:] for c in APPLIES], ids=[c[0] for c in APPLIES]
)
def test_applies(flt: f.Filter, subject: dict[str, Any], others: list[dict[str, Any]], expected: bool) -> None:
    state = ClusterState.from_dicts([], [subject, *others], [])
    assert flt.applies(UnitView.from_dict(subject), state) is expected


def test_every_filter_has_a_distinct_reason_code() -> None:
    codes = [cls.reason for cls in f.Filter.__subclasses__()]
    assert all(codes) and len(codes) == len(set(codes))


# (case id, unit spec, expected causes); the messages are the API's 422 causes (fields relative to the spec)
PIN = ("placement.machine", "machine (a pin) cannot be combined with conflicts, machineOf or global")
REFUSED: list[tuple[str, dict[str, Any], list[tuple[str, str]]]] = [
    ("plain", {"image": "x"}, []),
    ("every rule but the refused ones",
     {"placement": {"conflicts": ["db*"], "machineOf": "cache", "machineMetadata": {"role": ["web"]}}}, []),
    ("machine alone", {"placement": {"machine": "m1", "machineMetadata": {"role": ["web"]}}}, []),
    ("machine + conflicts", {"placement": {"machine": "m1", "conflicts": ["db*"]}}, [PIN]),
    ("machine + empty conflicts", {"placement": {"machine": "m1", "conflicts": []}}, []),
    ("machine + machineOf", {"placement": {"machine": "m1", "machineOf": "cache"}}, [PIN]),
    ("machine + global", {"global": True, "placement": {"machine": "m1"}}, [PIN]),
    ("global + machineOf", {"global": True, "placement": {"machineOf": "cache"}},
     [("placement.machineOf", "machineOf cannot be combined with global")]),
    ("global + conflicts is fine", {"global": True, "placement": {"conflicts": ["db*"]}}, []),
    ("machineOf matched by own conflicts", {"placement": {"machineOf": "cache", "conflicts": ["web", "ca*"]}},
     [("placement.machineOf", "machineOf 'cache' is matched by this unit's own conflicts")]),
    ("everything at once", {"global": True, "placement": {"machine": "m1", "machineOf": "db", "conflicts": ["d*"]}},
     [PIN,
      ("placement.machineOf", "machineOf cannot be combined with global"),
      ("placement.machineOf", "machineOf 'db' is matched by this unit's own conflicts")]),
]


@pytest.mark.parametrize(("spec", "expected"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_placement_causes(spec: dict[str, Any], expected: list[tuple[str, str]]) -> None:
    assert placement_causes(spec) == expected
