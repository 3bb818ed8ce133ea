"""Table tests for whole placements: which machine, or the exact pending message."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from controlplane.scheduler import Scheduler, schedule
from controlplane.scheduler.core import pending_message


def machine(
    name: str,
    *,
    labels: dict[str, str] | None = None,
    ready: bool = True,
    cordoned: bool = False,
    cpu: float | None = None,
) -> dict[str, Any]:
    status: dict[str, Any] = {"state": "Ready" if ready else "NotReady"}
    if cpu is not None:
        status["capacity"] = {"cpu": cpu, "memoryMB": 4096}
    return {"metadata": {"name": name, "labels": labels or {}}, "spec": {"unschedulable": cordoned}, "status": status}


def unit(name: str, *, replicas: int = 1, cpu: float = 0, host_port: int = 0, **placement: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"image": "x", "replicas": replicas, "placement": placement}
    if cpu:
        spec["resources"] = {"cpu": cpu}
    if host_port:
        spec["ports"] = [{"containerPort": 80, "hostPort": host_port}]
    return {"metadata": {"name": name}, "spec": spec}


def inst(unit_name: str, index: int, on: str = "") -> dict[str, Any]:
    return {"metadata": {"name": f"{unit_name}-{index}"}, "spec": {"unit": unit_name, "index": index, "machine": on}}


def pending(unit_name: str, replicas: int) -> list[dict[str, Any]]:
    return [inst(unit_name, i) for i in range(replicas)]


M4 = [machine(f"m{i}") for i in range(1, 5)]

# (case id, machines, units, instances, expected {instance: machine or pending message})
CASES: list[tuple[str, list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]], dict[str, str]]] = [
    ("contract example",
     [machine("m1", labels={"role": "edge"}), machine("m2", labels={"role": "edge"}),
      machine("m3", labels={"role": "web"}), machine("m4", labels={"role": "edge"}, ready=False)],
     [unit("web", replicas=2), unit("api", conflicts=["web"], machineMetadata={"role": ["edge"]})],
     [inst("web", 0, "m1"), inst("web", 1, "m2"), inst("api", 0)],
     {"api-0": "0/4 machines: 2 conflict with web, 1 lacks role=edge, 1 NotReady"}),
    ("fleet: fewest instances wins",
     M4[:3], [unit("db", replicas=3, spread="none"), unit("web")],
     [inst("db", 0, "m1"), inst("db", 1, "m1"), inst("db", 2, "m3"), inst("web", 0)],
     {"web-0": "m2"}),
    ("ties go to the smaller name", M4, [unit("web")], [inst("web", 0)], {"web-0": "m1"}),
    ("name order is by string", [machine("m10"), machine("m9")], [unit("web")], [inst("web", 0)], {"web-0": "m10"}),
    ("spread required: one per machine, then pending",
     M4[:2], [unit("web", replicas=3)], pending("web", 3),
     {"web-0": "m1", "web-1": "m2", "web-2": "0/2 machines: 2 already runs web"}),
    ("spread preferred: spread, then stack",
     M4[:2], [unit("web", replicas=3, spread="preferred")], pending("web", 3),
     {"web-0": "m1", "web-1": "m2", "web-2": "m1"}),
    ("spread preferred beats fewest instances",
     M4[:2], [unit("web", replicas=2, spread="preferred"), unit("db", replicas=2, spread="none")],
     [inst("db", 0, "m2"), inst("db", 1, "m2"), inst("web", 0, "m1"), inst("web", 1)],
     {"web-1": "m2"}),
    ("spread none: fewest instances still spreads",
     M4[:2], [unit("web", replicas=3, spread="none")], pending("web", 3),
     {"web-0": "m1", "web-1": "m2", "web-2": "m1"}),
    ("pin", M4, [unit("web", machine="m3")], [inst("web", 0)], {"web-0": "m3"}),
    ("pin to a NotReady machine",
     [machine("m1"), machine("m2", ready=False), machine("m3")], [unit("web", machine="m2")], [inst("web", 0)],
     {"web-0": "0/3 machines: 2 not m2 (pinned), 1 NotReady"}),
    ("pin to an unknown machine", M4[:2], [unit("web", machine="m9")], [inst("web", 0)],
     {"web-0": "0/2 machines: 2 not m9 (pinned)"}),
    ("metadata: keys ANDed, values ORed",
     [machine("m1", labels={"role": "web", "region": "us"}), machine("m2", labels={"role": "db", "region": "eu"}),
      machine("m3", labels={"role": "edge", "region": "eu"}), machine("m4", labels={"role": "web", "region": "eu"})],
     [unit("web", replicas=3, machineMetadata={"role": ["web", "edge"], "region": ["eu"]})], pending("web", 3),
     {"web-0": "m3", "web-1": "m4",
      "web-2": "0/4 machines: 2 already runs web, 1 lacks region=eu, 1 lacks role=web|edge"}),
    ("metadata: few candidates among many machines",
     [machine(f"m{i:02}", labels={"role": "edge" if i in (7, 31) else "web"}) for i in range(40)],
     [unit("edge", replicas=3, machineMetadata={"role": ["edge"]})], pending("edge", 3),
     {"edge-0": "m07", "edge-1": "m31", "edge-2": "0/40 machines: 38 lacks role=edge, 2 already runs edge"}),
    ("machineOf follows the other unit",
     M4, [unit("cache"), unit("app", replicas=2, machineOf="cache", spread="none")],
     [inst("cache", 0, "m3"), inst("app", 0), inst("app", 1)],
     {"app-0": "m3", "app-1": "m3"}),
    ("machineOf with nothing to follow", M4[:2], [unit("app", machineOf="cache")], [inst("app", 0)],
     {"app-0": "0/2 machines: 2 no instance of cache"}),
    ("machineOf: the other unit placed earlier in the same pass",
     M4, [unit("cache"), unit("zapp", machineOf="cache")], [inst("cache", 0), inst("zapp", 0)],
     {"cache-0": "m1", "zapp-0": "m1"}),
    ("conflicts: newcomer's glob",
     M4[:2], [unit("db-main"), unit("web", conflicts=["db-*"])], [inst("db-main", 0, "m1"), inst("web", 0)],
     {"web-0": "m2"}),
    ("conflicts: existing unit's glob blocks the newcomer",
     M4[:2], [unit("db", conflicts=["web*"]), unit("webapp")], [inst("db", 0, "m1"), inst("webapp", 0)],
     {"webapp-0": "m2"}),
    ("conflicts everywhere",
     M4[:2], [unit("db", replicas=2, conflicts=["web*"]), unit("webapp")],
     [inst("db", 0, "m1"), inst("db", 1, "m2"), inst("webapp", 0)],
     {"webapp-0": "0/2 machines: 2 conflict with db"}),
    ("cordoned", [machine("m1", cordoned=True), machine("m2")], [unit("web", replicas=2)], pending("web", 2),
     {"web-0": "m2", "web-1": "0/2 machines: 1 already runs web, 1 cordoned"}),
    ("all NotReady", [machine("m1", ready=False), machine("m2", ready=False)], [unit("web")], [inst("web", 0)],
     {"web-0": "0/2 machines: 2 NotReady"}),
    ("resources: most free wins among equals",
     [machine("m1", cpu=2), machine("m2", cpu=8)], [unit("web", cpu=1)], [inst("web", 0)], {"web-0": "m2"}),
    ("resources: full machines are skipped",
     [machine("m1", cpu=1), machine("m2", cpu=1), machine("m3", cpu=1)],
     [unit("web", replicas=3, cpu=0.6, spread="none")], pending("web", 3),
     {"web-0": "m1", "web-1": "m2", "web-2": "m3"}),
    ("resources: none left",
     [machine("m1", cpu=1), machine("m2", cpu=4, ready=False)],
     [unit("web", replicas=2, cpu=0.6, spread="none")], pending("web", 2),
     {"web-0": "m1", "web-1": "0/2 machines: 1 insufficient cpu, 1 NotReady"}),
    ("host ports",
     M4[:2], [unit("a", host_port=80), unit("b", host_port=80, replicas=2), unit("c", host_port=81)],
     [inst("a", 0), inst("b", 0), inst("b", 1), inst("c", 0)],
     {"a-0": "m1", "b-0": "m2", "b-1": "0/2 machines: 1 already runs b, 1 port 80/tcp in use", "c-0": "m1"}),
    ("unknown unit", M4, [], [inst("ghost", 0)], {"ghost-0": "unit ghost not found"}),
    ("no machines", [], [unit("web")], [inst("web", 0)], {"web-0": "0/0 machines: no machines registered"}),
    ("bound instances are not placed again", M4, [unit("web")], [inst("web", 0, "m4")], {}),
]


def outcome(machines: list[dict[str, Any]], units: list[dict[str, Any]], instances: list[dict[str, Any]]) -> dict[str, str]:
    return {p.instance: p.machine or p.message for p in schedule(machines, units, instances)}


@pytest.mark.parametrize(("machines", "units", "instances", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_schedule(
    machines: list[dict[str, Any]], units: list[dict[str, Any]], instances: list[dict[str, Any]], expected: dict[str, str]
) -> None:
    assert outcome(machines, units, instances) == expected


@pytest.mark.parametrize(("machines", "units", "instances", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_input_order_does_not_matter(
    machines: list[dict[str, Any]], units: list[dict[str, Any]], instances: list[dict[str, Any]], expected: dict[str, str]
) -> None:
    rng = random.Random(7)
    for _ in range(3):
        ms, us, ins = list(machines), list(units), list(instances)
        rng.shuffle(ms)
        rng.shuffle(us)
        rng.shuffle(ins)
        assert outcome(ms, us, ins) == expected


def test_placements_come_in_unit_then_index_order() -> None:
    instances = [inst("web", 10), inst("api", 2), inst("web", 9), inst("api", 1)]
    placements = schedule(M4, [unit("web", replicas=11, spread="none"), unit("api", replicas=3)], instances)
    assert [p.instance for p in placements] == ["api-1", "api-2", "web-9", "web-10"]


def test_pending_placement_counts_reasons_and_codes() -> None:
    (p,) = schedule(
        [machine("m1", ready=False), machine("m2", cordoned=True), machine("m3")],
        [unit("web", machineMetadata={"role": ["edge"]})],
        [inst("web", 0)],
    )
    assert p.machine is None
    assert p.reasons == {"NotReady": 1, "cordoned": 1, "lacks role=edge": 1}
    assert p.codes == {"MachineNotReady": 1, "MachineCordoned": 1, "MachineMetadataMismatch": 1}


@pytest.mark.parametrize(
    ("total", "reasons", "expected"),
    [
        (4, {"NotReady": 1, "lacks role=edge": 1, "conflict with web": 2},
         "0/4 machines: 2 conflict with web, 1 lacks role=edge, 1 NotReady"),
        (3, {"b": 1, "a": 1, "c": 1}, "0/3 machines: 1 a, 1 b, 1 c"),
        (0, {}, "0/0 machines: no machines registered"),
    ],
)
def test_pending_message(total: int, reasons: dict[str, int], expected: str) -> None:
    assert pending_message(total, reasons) == expected


def test_scheduler_incremental() -> None:
    s = Scheduler.from_dicts([machine("m1")], [unit("web", replicas=2)], pending("web", 2))
    assert s.place("web-0").machine == "m1"
    failed = s.place("web-1")
    assert failed.message == "0/1 machines: 1 already runs web"
    s.add_machine(machine("m2"))  # a new machine invalidates the cached failure
    assert s.place("web-1").machine == "m2"
    s.unbind("web-0")
    s.remove_machine("m1")
    assert s.place("web-0").message == "0/1 machines: 1 already runs web"
    s.add_machine(machine("m3", cordoned=True))
    assert s.place("web-0").message == "0/2 machines: 1 already runs web, 1 cordoned"
    s.add_machine(machine("m3"))  # uncordon
    assert s.place("web-0").machine == "m3"


def test_place_without_binding_and_with_a_dict() -> None:
    s = Scheduler.from_dicts(M4[:2], [unit("web", replicas=2)], [])
    first = s.place(inst("web", 0), bind=False)
    assert first.machine == "m1"
    assert s.place("web-0").machine == "m1"  # not bound above, so m1 again
    assert s.place(inst("web", 1)).machine == "m2"


def test_unit_change_updates_accounting() -> None:
    s = Scheduler.from_dicts([machine("m1", cpu=2)], [unit("a", cpu=1.5), unit("b", cpu=1)], [inst("a", 0, "m1")])
    assert s.place(inst("b", 0)).message == "0/1 machines: 1 insufficient cpu"
    s.add_unit(unit("a", cpu=0.5))  # a smaller request frees room
    assert s.place("b-0").machine == "m1"


def test_rebinding_an_instance_moves_its_accounting() -> None:
    s = Scheduler.from_dicts(M4[:2], [unit("web", host_port=80), unit("lb", host_port=80)], [inst("web", 0, "m1")])
    s.add_instance(inst("web", 0, "m2"))
    assert s.place(inst("lb", 0)).machine == "m1"


def _random_cluster(seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    rng = random.Random(seed)
    machines = [
        machine(
            f"m{i:03}",
            labels={"role": rng.choice(["web", "db", "edge"]), "zone": rng.choice("ab")},
            ready=rng.random() > 0.1,
            cordoned=rng.random() < 0.05,
            cpu=rng.choice([2, 4, 8]),
        )
        for i in range(rng.randint(1, 60))
    ]
    units, instances = [], []
    for u in range(rng.randint(1, 25)):
        name = f"u{u:02}"
        placement: dict[str, Any] = {"spread": rng.choice(["required", "preferred", "none"])}
        if rng.random() < 0.3:
            placement["machineMetadata"] = {"role": rng.sample(["web", "db", "edge"], rng.randint(1, 2))}
        if rng.random() < 0.2:
            placement["conflicts"] = [f"u{rng.randint(0, 24):02}*"]
        if rng.random() < 0.1 and u:
            placement["machineOf"] = f"u{rng.randint(0, u - 1):02}"
        if rng.random() < 0.05:
            placement["machine"] = f"m{rng.randint(0, 70):03}"
        replicas = rng.randint(1, 12) if rng.random() < 0.7 else rng.randint(1, 2 * len(machines) + 2)
        units.append(
            unit(name, replicas=replicas, cpu=rng.choice([0, 0, 0.5, 1]), host_port=rng.choice([0, 0, 0, 80]), **placement)
        )
        instances += pending(name, replicas)
    return machines, units, instances


@pytest.mark.parametrize("seed", range(60))
def test_fast_path_matches_a_full_scan(seed: int) -> None:
    """The index walk must choose exactly what scoring every feasible machine would."""
    machines, units, instances = _random_cluster(seed)
    s = Scheduler.from_dicts(machines, units, instances)
    for name in s.pending():
        inst_view = s.state.instances[name]
        full = s.explain(name, s.state.units[inst_view.unit])
        placed = s.place(name)
        assert placed.machine == full.machine, name
        if placed.machine is None:
            assert placed.message == full.message


def _check_indexes(s: Scheduler) -> None:
    """Every incremental index equals a recomputation from the instances."""
    state = s.state
    fresh = Scheduler.from_dicts([], [], []).state
    for m in state.machines.values():
        fresh.upsert_machine(m)
    for u in state.units.values():
        fresh.upsert_unit(u)
    for i in state.instances.values():
        fresh.upsert_instance(i)
    nonzero = {k: v for k, v in state.count.items() if v}
    assert nonzero == {k: v for k, v in fresh.count.items() if v}
    assert {k: dict(v) for k, v in state.units_on.items() if v} == {k: dict(v) for k, v in fresh.units_on.items() if v}
    assert {k: dict(v) for k, v in state.unit_levels.items() if v} == {
        k: dict(v) for k, v in fresh.unit_levels.items() if v
    }
    assert +state.schedulable_hosts == +fresh.schedulable_hosts
    assert list(state.order) == list(fresh.order)
    for item, order in state.label_order.items():
        assert list(order) == list(fresh.label_order.get(item, []))
    for m in state.machines:
        assert abs(state.used_cpu.get(m, 0.0) - fresh.used_cpu.get(m, 0.0)) < 1e-9
        assert +state.ports_on.get(m, Counter()) == +fresh.ports_on.get(m, Counter())


@pytest.mark.parametrize("seed", range(10))
def test_incremental_indexes_match_a_rebuild(seed: int) -> None:
    rng = random.Random(seed)
    machines, units, instances = _random_cluster(seed)
    s = Scheduler.from_dicts(machines, units, instances)
    names = s.pending()
    for step in range(300):
        op = rng.random()
        if op < 0.5 and names:
            s.place(rng.choice(names))
        elif op < 0.65 and names:
            s.unbind(rng.choice(names))
        elif op < 0.8 and machines:
            m = dict(rng.choice(machines))
            m["spec"] = {"unschedulable": rng.random() < 0.3}
            m["status"] = {**m["status"], "state": rng.choice(["Ready", "Ready", "NotReady"])}
            s.add_machine(m)
        elif op < 0.85 and machines:
            s.remove_machine(rng.choice(machines)["metadata"]["name"])
        elif op < 0.95 and units:
            u = rng.choice(units)
            s.add_unit({**u, "spec": {**u["spec"], "resources": {"cpu": rng.choice([0, 0.5, 1])}}})
        elif names:
            s.remove_instance(name := rng.choice(names))
            names.remove(name)
        if step % 25 == 0:
            _check_indexes(s)
    _check_indexes(s)
