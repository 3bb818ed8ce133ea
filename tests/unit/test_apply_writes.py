"""The manager's one apply loop over the real Registry (in-memory store): op phases, bulk creates,
failed writes logged and counted without stopping the pass, and convergence -- a plan applied
and planned again writes nothing.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from cluster_objects import ALL4, M4, inst, machine, unit
from prometheus_client import CollectorRegistry

from controlplane.controllers.cluster import UNSCHEDULABLE, ClusterPlan, Write, WriteOp, plan_cluster
from controlplane.controllers.manager import Controllers
from controlplane.controllers.metrics import ControllerMetrics
from controlplane.registry import Registry

REFUSED = "cp_controller_refused_writes_total"


def controllers_of(registry: Registry) -> tuple[Controllers, CollectorRegistry]:
    prom = CollectorRegistry()
    return Controllers(registry, registry.store, ControllerMetrics(prom), identity="test"), prom


async def seed(registry: Registry, machines: list[dict[str, Any]], units: list[dict[str, Any]],
               instances: list[dict[str, Any]]) -> None:
    for resource, objs in (("machines", machines), ("units", units), ("instances", instances)):
        for obj in objs:
            await registry.create(resource, obj)


async def test_refused_writes_are_logged_and_counted_and_the_rest_is_applied(
    registry: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    await seed(registry, [machine("m1")], [unit("web", replicas=1)], [])
    controllers, prom = controllers_of(registry)
    status = {"replicas": 0, "readyReplicas": 0, "observedGeneration": 1}
    plan = ClusterPlan(writes=[
        Write(WriteOp.BIND, "ghost-0", "pending; placed on m1", machine="m1", epoch=1),  # deleted meanwhile
        Write(WriteOp.DELETE_ENDPOINTS, "ghost", "unit ghost no longer exists"),  # deleted already
        Write(WriteOp.UNIT_STATUS, "web", "replicas unset -> 0", status=status),
    ])
    with caplog.at_level(logging.INFO, logger="controlplane.controllers.manager"):
        assert await controllers.apply(plan) == 0  # refusals are not failures: no retry
    assert registry.get("units", "web")["status"] == status
    assert prom.get_sample_value(REFUSED, {"op": "bind", "reason": "NotFound"}) == 1
    assert prom.get_sample_value(REFUSED, {"op": "delete_endpoints", "reason": "NotFound"}) == 1
    assert prom.get_sample_value(REFUSED, {"op": "unit_status", "reason": "NotFound"}) is None
    refused = [r for r in caplog.records if "refused" in r.getMessage()]
    assert [r.levelno for r in refused] == [logging.INFO, logging.INFO]
    assert "write bind ghost-0 (pending; placed on m1) refused" in refused[0].getMessage()


async def test_an_unexpected_error_is_counted_and_does_not_stop_the_pass(
    registry: Registry, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    await seed(registry, [machine("m1")], [unit("web", replicas=2)],
               [inst("web", 0, "", epoch=0, phase="Pending", ready=False),
                inst("web", 1, "", epoch=0, phase="Pending", ready=False)])
    controllers, prom = controllers_of(registry)
    mutate = registry.mutate

    async def broken(resource: str, name: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if name == "web-0":
            raise RuntimeError("disk on fire")
        return await mutate(resource, name, *args, **kwargs)

    monkeypatch.setattr(registry, "mutate", broken)
    plan = ClusterPlan(writes=[Write(WriteOp.BIND, f"web-{i}", "pending; placed on m1", machine="m1", epoch=1)
                               for i in range(2)])
    with caplog.at_level(logging.INFO, logger="controlplane.controllers.manager"):
        assert await controllers.apply(plan) == 1  # the pass will be retried with backoff
    assert registry.get("instances", "web-1")["spec"]["machine"] == "m1"
    assert prom.get_sample_value(REFUSED, {"op": "bind", "reason": "RuntimeError"}) == 1
    [failed] = [r for r in caplog.records if "failed" in r.getMessage()]
    assert failed.levelno == logging.WARNING and "web-0" in failed.getMessage()


async def test_machines_go_not_ready_then_unbinds_then_the_rest(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    await seed(registry, [machine("m1"), machine("m2")], [unit("web", replicas=2, spread="none")],
               [inst("web", 0, "m1"), inst("web", 1, "", epoch=0, phase="Pending", ready=False)])
    controllers, _ = controllers_of(registry)
    calls: list[tuple[str, str]] = []
    mutate = registry.mutate

    async def recorded(resource: str, name: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        calls.append(("start", name))
        await asyncio.sleep(0.01)
        try:
            return await mutate(resource, name, *args, **kwargs)
        finally:
            calls.append(("end", name))

    monkeypatch.setattr(registry, "mutate", recorded)
    plan = ClusterPlan(writes=[  # listed backwards: the phases, not the list, decide
        Write(WriteOp.BIND, "web-1", "pending; placed on m2", machine="m2", epoch=1),
        Write(WriteOp.UNBIND, "web-0", "machine m1 is NotReady", machine="m1"),
        Write(WriteOp.MARK_NOT_READY, "m1", "machine m1 stopped heartbeating"),
    ])
    assert await controllers.apply(plan) == 0
    assert calls == [("start", "m1"), ("end", "m1"), ("start", "web-0"), ("end", "web-0"),
                     ("start", "web-1"), ("end", "web-1")]
    assert registry.get("machines", "m1")["status"]["state"] == "NotReady"
    assert registry.get("instances", "web-0")["spec"]["machine"] == ""


async def test_creates_go_in_one_bulk_call(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    await seed(registry, M4, [unit("web", replicas=3)], [])
    controllers, _ = controllers_of(registry)
    bulk: list[list[str]] = []
    create_many = registry.create_many

    async def counted(resource: str, objs: list[dict[str, Any]], **kwargs: Any) -> int:
        bulk.append([o["metadata"]["name"] for o in objs])
        return await create_many(resource, objs, **kwargs)

    monkeypatch.setattr(registry, "create_many", counted)
    plan = plan_cluster(registry.objects("machines"), registry.objects("units"), [], [], ALL4)
    assert await controllers.apply(plan) == 0
    assert bulk == [["web-0", "web-1", "web-2"]]
    assert sorted(i["metadata"]["name"] for i in registry.objects("instances")) == ["web-0", "web-1", "web-2"]


# ---- idempotence through the real apply -------------------------------------------------------

SNAPSHOTS = {
    "new units": (M4, [unit("web", replicas=3), unit("edge", glob=True), unit("pinned", replicas=1, machine="m2")],
                  [], ALL4),
    "lost machine": (M4, [unit("web", replicas=2, status={"replicas": 2, "readyReplicas": 2, "observedGeneration": 1})],
                     [inst("web", 0, "m1", port=31000), inst("web", 1, "m2", port=31001)], {"m2", "m3", "m4"}),
    "unplaceable": (M4, [unit("web", replicas=5), unit("api", replicas=1, machineMetadata={"role": ["x"]})],
                    [inst("web", 0, "m1"), inst("orphan", 0, "m2")], {"m1", "m2", "m3"}),
    "rollout": (M4, [unit("web", replicas=2, generation=2)], [inst("web", 0, "m1"), inst("web", 1, "m2")], ALL4),
}


@pytest.mark.parametrize("case", list(SNAPSHOTS))
async def test_planning_the_result_of_applying_a_plan_writes_nothing(case: str, registry: Registry):
    machines, units, instances, present = SNAPSHOTS[case]
    for resource, objs in (("machines", machines), ("units", units), ("instances", instances)):
        for obj in objs:
            created = await registry.create(resource, obj)
            if obj.get("status"):  # create keeps what we give it; status included
                assert created["status"] == obj["status"]
    controllers, _ = controllers_of(registry)

    def plan() -> ClusterPlan:
        return plan_cluster(registry.objects("machines"), registry.objects("units"),
                            registry.objects("instances"), registry.objects("endpoints"), set(present))

    first = plan()
    assert first.writes
    assert await controllers.apply(first) == 0  # no write failed
    second = plan()
    assert second.writes == [], second
    # every instance is bound at most once and no name repeats
    insts = registry.objects("instances")
    assert len({i["metadata"]["name"] for i in insts}) == len(insts)
    for i in insts:
        assert (i["spec"]["machine"] == "") == (i["status"].get("reason") == UNSCHEDULABLE), i
