"""Scaling a unit bumps its generation but must not replace running instances (only template changes roll)."""

from __future__ import annotations

from typing import Any

from controlplane.controllers.cluster import WriteOp, plan_cluster
from controlplane.model import new_instance


def machine(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {}}, "spec": {"unschedulable": False},
            "status": {"state": "Ready", "capacity": {"cpu": 4, "memoryMB": 4096}}}


def unit(*, generation: int, replicas: int, image: str = "local/web:1") -> dict[str, Any]:
    return {"metadata": {"name": "web", "generation": generation, "labels": {}},
            "spec": {"image": image, "replicas": replicas, "ports": [], "placement": {"spread": "required"}},
            "status": {}}


def running(obj: dict[str, Any]) -> dict[str, Any]:
    obj["status"].update(phase="Running", ready=True)
    return obj


def test_scaling_up_keeps_existing_instances_and_adds_one() -> None:
    machines = [machine("m1"), machine("m2"), machine("m3")]
    old = [running(new_instance(unit(generation=1, replicas=2), f"web-{i}", i, f"m{i + 1}")) for i in range(2)]
    plan = plan_cluster(machines, [unit(generation=2, replicas=3)], old, [], {"m1", "m2", "m3"})
    assert plan.of(WriteOp.REPLACE_INSTANCE) == []
    [create] = plan.of(WriteOp.CREATE_INSTANCE)
    assert (create.target, create.reason) == ("web-2", "scale up to 3 replicas (2 exist)")
    assert create.instance is not None and create.instance["spec"]["machine"] == "m3"


def test_changing_the_image_rolls_one_instance_at_a_time() -> None:
    machines = [machine("m1"), machine("m2"), machine("m3")]
    old = [running(new_instance(unit(generation=1, replicas=2), f"web-{i}", i, f"m{i + 1}")) for i in range(2)]
    plan = plan_cluster(machines, [unit(generation=2, replicas=2, image="local/web:2")], old, [], {"m1", "m2", "m3"})
    [replace] = plan.of(WriteOp.REPLACE_INSTANCE)
    assert (replace.target, replace.reason) == ("web-0", "generation 1 -> 2")
    assert replace.instance is not None
    assert replace.instance["spec"]["template"]["image"] == "local/web:2"
    assert replace.instance["spec"]["epoch"] == 2
