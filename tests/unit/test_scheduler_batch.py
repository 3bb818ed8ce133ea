"""``Scheduler.place_many`` (a unit's replicas placed in one go) against ``place`` one at a time.

The batch must give exactly the placements of the one-at-a-time path -- the same machine for
every instance, not merely the same rules satisfied, and the same pending message, reasons and
codes where nothing fits -- and leave the same state behind. Ties cannot be broken differently:
the scores end with the machine name, so the best feasible machine is unique, and the batch
picks the best feasible machine at every step as ``place`` does (see ``_place_run``).
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from controlplane.scheduler import Scheduler


def _machine(rng: random.Random, i: int) -> dict[str, Any]:
    status: dict[str, Any] = {"state": "Ready" if rng.random() > 0.1 else "NotReady"}
    if rng.random() < 0.8:  # some report no capacity: unlimited
        status["capacity"] = {"cpu": rng.choice([1, 2, 4, 8]), "memoryMB": rng.choice([1024, 4096])}
    labels = {"role": rng.choice(["web", "db", "edge"]), "zone": rng.choice("abc")}
    return {"metadata": {"name": f"m{i:03}", "labels": labels},
            "spec": {"unschedulable": rng.random() < 0.05}, "status": status}


def _unit(rng: random.Random, u: int, machines: int) -> dict[str, Any]:
    placement: dict[str, Any] = {}
    if rng.random() < 0.8:
        placement["spread"] = rng.choice(["required", "preferred", "none"])
    if rng.random() < 0.3:
        placement["machineMetadata"] = {"role": rng.sample(["web", "db", "edge"], rng.randint(1, 2))}
        if rng.random() < 0.3:
            placement["machineMetadata"]["zone"] = rng.choice("abc")
    if rng.random() < 0.2:
        placement["conflicts"] = [f"u{rng.randint(0, 19):02}*"]
    if rng.random() < 0.1 and u:
        placement["machineOf"] = f"u{rng.randint(0, u - 1):02}"
    elif rng.random() < 0.05:
        placement["machine"] = f"m{rng.randint(0, machines + 3):03}"
    spec: dict[str, Any] = {"image": "x", "placement": placement,
                            "replicas": rng.randint(1, 10) if rng.random() < 0.6 else rng.randint(1, 2 * machines + 3)}
    if rng.random() < 0.6:
        spec["resources"] = {"cpu": rng.choice([0.1, 0.25, 0.5, 1]), "memoryMB": rng.choice([0, 64, 512])}
    if rng.random() < 0.15:
        spec["ports"] = [{"containerPort": 80, "hostPort": rng.choice([80, 443])}]
    return {"metadata": {"name": f"u{u:02}"}, "spec": spec}


def random_cluster(seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Machines, units and instances, some already bound (also to machines that left) and some
    of units that do not exist."""
    rng = random.Random(seed)
    count = rng.randint(1, 80)
    machines = [_machine(rng, i) for i in range(count)]
    units = [_unit(rng, u, count) for u in range(rng.randint(1, 20))]
    instances: list[dict[str, Any]] = []
    for unit in units + [{"metadata": {"name": "ghost"}, "spec": {"replicas": 2}}]:
        name = unit["metadata"]["name"]
        for index in range(unit["spec"]["replicas"]):
            on = f"m{rng.randint(0, count + 2):03}" if rng.random() < 0.25 else ""
            instances.append({"metadata": {"name": f"{name}-{index}"}, "spec": {"unit": name, "index": index, "machine": on}})
    return machines, units, instances


def _state_of(s: Scheduler) -> dict[str, Any]:
    state = s.state
    return {
        "instances": dict(state.instances),
        "count": {k: v for k, v in state.count.items() if v},
        "units_on": {k: dict(v) for k, v in state.units_on.items() if v},
        "machines_of": {k: dict(v) for k, v in state.machines_of.items() if v},
        "levels": {k: dict(v) for k, v in state.unit_levels.items() if v},
        "hosts": +state.schedulable_hosts,
        "cpu": dict(state.used_cpu),
        "memory": dict(state.used_memory),
        "ports": {k: dict(v) for k, v in state.ports_on.items() if v},
        "order": list(state.order),
        "labels": {item: list(order) for item, order in state.label_order.items() if order},
    }


@pytest.mark.parametrize("seed", range(300))
def test_batch_places_exactly_as_one_at_a_time(seed: int) -> None:
    machines, units, instances = random_cluster(seed)
    one, batch = Scheduler.from_dicts(machines, units, instances), Scheduler.from_dicts(machines, units, instances)
    names = one.pending()
    assert [one.place(name) for name in names] == batch.place_many(names)
    assert _state_of(one) == _state_of(batch)


@pytest.mark.parametrize("seed", range(60))
def test_batch_in_any_order_and_after_earlier_placements(seed: int) -> None:
    """Runs of one unit broken up by others (any order), names placed twice (already bound),
    and a second batch over a state the first one left."""
    rng = random.Random(seed)
    machines, units, instances = random_cluster(seed + 1000)
    one, batch = Scheduler.from_dicts(machines, units, instances), Scheduler.from_dicts(machines, units, instances)
    names = one.pending()
    for _ in range(2):
        picked = rng.sample(names, k=len(names) // 2) + rng.sample(names, k=min(3, len(names)))
        rng.shuffle(picked)
        assert [one.place(name) for name in picked] == batch.place_many(picked)
        assert _state_of(one) == _state_of(batch)
        victim = rng.choice(names)
        one.unbind(victim)
        batch.unbind(victim)


def test_replicas_beyond_the_machines_stay_pending_with_the_reason() -> None:
    machines = [{"metadata": {"name": f"m{i}"}, "status": {"state": "Ready"}} for i in range(3)]
    units = [{"metadata": {"name": "web"}, "spec": {"replicas": 5}}]
    instances = [{"metadata": {"name": f"web-{i}"}, "spec": {"unit": "web", "index": i}} for i in range(5)]
    placements = Scheduler.from_dicts(machines, units, instances).place_many([f"web-{i}" for i in range(5)])
    assert [p.machine for p in placements] == ["m0", "m1", "m2", None, None]
    assert placements[3].message == placements[4].message == "0/3 machines: 3 already runs web"
    assert placements[4].codes == {"SpreadRequired": 3}
