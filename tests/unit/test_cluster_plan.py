"""Table tests of the leader's pass, ``plan_cluster``: snapshot in, exact writes out.

The last tests apply a plan with the real ``Controllers.apply`` (over the in-memory store) and
plan again: a converged snapshot must plan no writes at all.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from controlplane.api.metrics import ApiMetrics
from controlplane.controllers.cluster import (
    UNSCHEDULABLE,
    Bind,
    ClusterPlan,
    Unbind,
    new_instance,
    plan_cluster,
)
from controlplane.controllers.manager import Controllers
from controlplane.registry import Registry
from controlplane.store.memory import MemoryStore


def machine(name: str, *, ready: bool = True, cordoned: bool = False, **labels: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": {"unschedulable": cordoned},
        "status": {"state": "Ready" if ready else "NotReady", "address": f"10.0.0.{name[1:]}"},
    }


def unit(name: str = "web", *, replicas: int = 2, generation: int = 1, glob: bool = False,
         status: dict[str, Any] | None = None, **placement: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "generation": generation, "labels": {}},
        "spec": {"image": "local/web:1", "replicas": replicas, "global": glob, "placement": placement,
                 "ports": [{"containerPort": 8080, "hostPort": 0, "protocol": "tcp"}]},
        "status": status or {},
    }


def inst(u: str, index: int, on: str, *, epoch: int = 1, phase: str = "Running", ready: bool = True,
         generation: int = 1, port: int = 0, **status: Any) -> dict[str, Any]:
    st: dict[str, Any] = {"phase": phase, "ready": ready, "reason": "", "message": "", "machine": on,
                          "epoch": epoch, "address": f"10.0.0.{on[1:]}" if on else "",
                          "hostPorts": [{"containerPort": 8080, "hostPort": port, "protocol": "tcp"}] if port else []}
    st.update(status)
    return {
        "metadata": {"name": f"{u}-{index}", "labels": {}, "annotations": {}},
        "spec": {"unit": u, "index": index, "machine": on, "epoch": epoch, "generation": generation},
        "status": st,
    }


def names(machines: list[dict[str, Any]]) -> set[str]:
    return {m["metadata"]["name"] for m in machines}


def reasons(plan: ClusterPlan, reason: str) -> list[tuple[str, str]]:
    return [(e.name, e.message) for e in plan.events if e.reason == reason]


M4 = [machine("m1"), machine("m2"), machine("m3"), machine("m4")]
ALL4 = names(M4)


# ---- machines that stop heartbeating ----------------------------------------------------------

def test_machine_without_presence_goes_not_ready_and_its_instances_move():
    units = [unit("web", replicas=2, status={"replicas": 2, "readyReplicas": 2, "observedGeneration": 1})]
    instances = [inst("web", 0, "m1", epoch=3), inst("web", 1, "m2")]
    plan = plan_cluster(M4, units, instances, [], present={"m2", "m3", "m4"})

    assert plan.machines_not_ready == ["m1"]
    assert plan.unbinds == [Unbind("web-0", "m1", "machine m1 is NotReady")]
    # rebound in the same pass, on a Ready machine not running web (spread), one epoch up
    assert len(plan.binds) == 1
    bind = plan.binds[0]
    assert (bind.instance, bind.epoch) == ("web-0", 4)
    assert bind.machine in {"m3", "m4"}
    assert reasons(plan, "NodeNotReady") == [("m1", "machine m1 stopped heartbeating")]
    assert reasons(plan, "Rescheduled") == [("web-0", "machine m1 is NotReady; placing web-0 elsewhere")]
    assert plan.creates == [] and plan.deletes == []
    # web-0 is Pending now: one ready replica
    assert plan.unit_status == {"web": {"replicas": 2, "readyReplicas": 1, "observedGeneration": 1}}


def test_machine_already_not_ready_is_not_marked_again_and_a_deleted_machine_is_gone():
    machines = [machine("m1", ready=False), machine("m2")]
    units = [unit("web", replicas=2, spread="none")]
    instances = [inst("web", 0, "m1"), inst("web", 1, "m9")]
    plan = plan_cluster(machines, units, instances, [], present={"m2"})
    assert plan.machines_not_ready == []
    assert plan.unbinds == [Unbind("web-0", "m1", "machine m1 is NotReady"),
                            Unbind("web-1", "m9", "machine m9 is gone")]
    assert sorted((b.instance, b.machine, b.epoch) for b in plan.binds) == [("web-0", "m2", 2), ("web-1", "m2", 2)]


def test_lost_machine_with_nowhere_else_to_go_leaves_the_instance_pending_with_the_reason():
    machines = [machine("m1"), machine("m2")]
    units = [unit("web", replicas=2)]
    instances = [inst("web", 0, "m1"), inst("web", 1, "m2")]
    plan = plan_cluster(machines, units, instances, [], present={"m2"})
    assert plan.unbinds == [Unbind("web-0", "m1", "machine m1 is NotReady")]
    assert plan.binds == []
    status = plan.instance_status["web-0"]
    assert status["phase"] == "Pending" and status["ready"] is False
    assert status["reason"] == UNSCHEDULABLE
    assert status["message"] == "0/2 machines: 1 already runs web, 1 NotReady"
    assert reasons(plan, "FailedScheduling") == [("web-0", status["message"])]


# ---- creating and placing ---------------------------------------------------------------------

def test_new_unit_creates_instances_already_bound_and_spread():
    plan = plan_cluster(M4, [unit("web", replicas=3)], [], [], present=ALL4)
    assert [c["metadata"]["name"] for c in plan.creates] == ["web-0", "web-1", "web-2"]
    bound = [c["spec"]["machine"] for c in plan.creates]
    assert len(set(bound)) == 3 and set(bound) <= ALL4
    assert [c["spec"]["epoch"] for c in plan.creates] == [1, 1, 1]
    assert [c["spec"]["index"] for c in plan.creates] == [0, 1, 2]
    assert all(c["spec"]["unit"] == "web" and c["spec"]["generation"] == 1 for c in plan.creates)
    assert all(c["status"]["phase"] == "Pending" for c in plan.creates)
    assert plan.binds == [] and plan.unbinds == [] and plan.instance_status == {}
    assert plan.unit_status == {"web": {"replicas": 3, "readyReplicas": 0, "observedGeneration": 1}}
    assert plan.endpoints == {"web": []}


def test_new_instances_go_to_the_emptiest_machines():
    # m1 and m2 run db already; web's two new instances go to m3 and m4
    units = [unit("db", replicas=2), unit("web", replicas=2)]
    instances = [inst("db", 0, "m1"), inst("db", 1, "m2")]
    plan = plan_cluster(M4, units, instances, [], present=ALL4)
    assert sorted(c["spec"]["machine"] for c in plan.creates) == ["m3", "m4"]


def test_scale_down_deletes_the_highest_indexes():
    units = [unit("web", replicas=1)]
    instances = [inst("web", 0, "m1"), inst("web", 1, "m2"), inst("web", 2, "m3")]
    plan = plan_cluster(M4, units, instances, [], present=ALL4)
    assert plan.deletes == [("web-1", "scale down to 1 replicas (3 exist)"),
                            ("web-2", "scale down to 1 replicas (3 exist)")]
    assert plan.creates == [] and plan.binds == []


@pytest.mark.parametrize(
    ("machines", "placement", "present", "existing", "message", "codes"),
    [
        pytest.param(
            [machine("m1", ready=False), machine("m2", cordoned=True), machine("m3", role="web"),
             machine("m4", role="edge")],
            {"machineMetadata": {"role": ["edge"]}}, {"m2", "m3", "m4"}, [inst("api", 0, "m4")],
            "0/4 machines: 1 already runs api, 1 cordoned, 1 lacks role=edge, 1 NotReady",
            {"MachineNotReady": 1, "MachineCordoned": 1, "MachineMetadataMismatch": 1, "SpreadRequired": 1},
            id="one reason each",
        ),
        pytest.param(
            [machine("m1", role="web"), machine("m2", role="web"), machine("m3", role="db"), machine("m4")],
            {"machineMetadata": {"role": ["edge", "lb"]}}, ALL4, [],
            "0/4 machines: 4 lacks role=edge|lb",
            {"MachineMetadataMismatch": 4},
            id="metadata nobody has",
        ),
        pytest.param([], {}, set(), [], "0/0 machines: no machines registered", {}, id="no machines"),
        pytest.param(
            [machine("m1"), machine("m2")], {"machine": "m3"}, {"m1", "m2"}, [],
            "0/2 machines: 2 not m3 (pinned)", {"NotPinnedMachine": 2}, id="pinned to an absent machine",
        ),
    ],
)
def test_pending_instance_says_why_no_machine_fits(machines, placement, present, existing, message, codes):
    units = [unit("api", replicas=len(existing) + 1, **placement)]
    plan = plan_cluster(machines, units, existing, [], present=present)
    [created] = plan.creates
    assert created["spec"]["machine"] == "" and created["spec"]["epoch"] == 0
    assert created["status"]["phase"] == "Pending"
    assert created["status"]["reason"] == UNSCHEDULABLE
    assert created["status"]["message"] == message
    assert reasons(plan, "FailedScheduling") == [(created["metadata"]["name"], message)]
    assert plan.pending_reasons == codes
    assert plan.instance_status == {}  # a created instance carries its status: one write, not two

    # the same pending instance on the next pass: nothing to write, no second event
    again = plan_cluster(machines, units, existing + [created], [], present=present)
    assert again.instance_status == {} and again.creates == []
    assert reasons(again, "FailedScheduling") == []


def test_an_existing_pending_instance_gets_its_message_when_placement_fails():
    units = [unit("api", replicas=1, machineMetadata={"role": ["edge"]})]
    pending = inst("api", 0, "", epoch=0, phase="Pending", ready=False)
    plan = plan_cluster(M4, units, [pending], [], present=ALL4)
    assert plan.instance_status["api-0"]["message"] == "0/4 machines: 4 lacks role=edge"
    assert plan.instance_status["api-0"]["reason"] == UNSCHEDULABLE
    assert plan.binds == []


def test_an_existing_pending_instance_is_bound_when_a_machine_fits():
    units = [unit("api", replicas=1)]
    pending = inst("api", 0, "", epoch=2, phase="Pending", ready=False, reason=UNSCHEDULABLE, message="0/0 machines")
    plan = plan_cluster([machine("m1")], units, [pending], [], present={"m1"})
    assert plan.binds == [Bind("api-0", "m1", 3)]
    assert plan.instance_status == {}


def test_cordoned_machine_gets_no_new_instances_but_keeps_its_own():
    machines = [machine("m1", cordoned=True), machine("m2"), machine("m3")]
    units = [unit("web", replicas=3, spread="preferred")]
    plan = plan_cluster(machines, units, [inst("web", 0, "m1")], [], present={"m1", "m2", "m3"})
    assert plan.unbinds == [] and plan.deletes == []
    assert sorted(c["spec"]["machine"] for c in plan.creates) == ["m2", "m3"]


# ---- unit status and endpoints ----------------------------------------------------------------

def test_unit_status_counts_and_is_written_only_when_it_changes():
    units = [
        unit("web", replicas=3, generation=4),
        unit("db", replicas=1, status={"replicas": 1, "readyReplicas": 1, "observedGeneration": 1, "conditions": []}),
    ]
    instances = [
        inst("web", 0, "m1", generation=4), inst("web", 1, "m2", ready=False, generation=4),
        inst("web", 2, "m3", phase="Starting", ready=False, generation=4), inst("db", 0, "m4"),
    ]
    plan = plan_cluster(M4, units, instances, [], present=ALL4)
    assert plan.unit_status == {"web": {"replicas": 3, "readyReplicas": 1, "observedGeneration": 4}}


def test_endpoints_only_from_running_ready_instances_on_ready_machines_at_the_current_epoch():
    machines = [machine("m1"), machine("m2"), machine("m3"), machine("m4"), machine("m5")]
    units = [unit("web", replicas=6, spread="none")]
    instances = [
        inst("web", 0, "m1", port=31000),                                # serves
        inst("web", 1, "m2", port=31001, ready=False),                   # not ready
        inst("web", 2, "m3", port=31002, phase="Starting"),             # not Running
        inst("web", 3, "m4", port=31003),                                # m4 lost its presence
        inst("web", 4, "m5", port=31004, epoch=1),                       # report from the older binding
        inst("web", 5, "m5", port=31005, **{"machine": "m2"}),           # report from another machine
    ]
    instances[4]["spec"]["epoch"] = 2
    plan = plan_cluster(machines, units, instances, [], present={"m1", "m2", "m3", "m5"})
    assert plan.endpoints == {"web": [
        {"address": "10.0.0.1", "port": 31000, "containerPort": 8080, "instance": "web-0", "machine": "m1"},
    ]}
    # unchanged endpoints are not rewritten
    current = [{"metadata": {"name": "web"}, "endpoints": plan.endpoints["web"]}]
    again = plan_cluster(machines, units, instances, current, present={"m1", "m2", "m3", "m5"})
    assert again.endpoints == {}


def test_orphan_instances_and_endpoints_of_a_deleted_unit_are_deleted():
    instances = [inst("gone", 0, "m1"), inst("web", 0, "m2")]
    endpoints = [{"metadata": {"name": "gone"}, "endpoints": []}, {"metadata": {"name": "web"}, "endpoints": []}]
    units = [unit("web", replicas=1, status={"replicas": 1, "readyReplicas": 1, "observedGeneration": 1})]
    plan = plan_cluster(M4, units, instances, endpoints, present=ALL4)
    assert plan.deletes == [("gone-0", "unit gone no longer exists")]
    assert plan.endpoints_deleted == ["gone"]
    assert plan.creates == [] and plan.unit_status == {}


# ---- global units -----------------------------------------------------------------------------

def test_global_unit_one_instance_per_eligible_machine():
    machines = [machine("m1", role="edge"), machine("m2", role="edge"), machine("m3", role="web"),
                machine("m4", role="edge", cordoned=True), machine("m5", role="edge", ready=False)]
    units = [unit("edge", glob=True, machineMetadata={"role": ["edge"]})]
    plan = plan_cluster(machines, units, [], [], present={"m1", "m2", "m3", "m4"})
    assert [(c["metadata"]["name"], c["spec"]["machine"], c["spec"]["epoch"]) for c in plan.creates] == [
        ("edge-0", "m1", 1), ("edge-1", "m2", 1)]
    assert plan.binds == []


def test_global_instance_on_a_lost_machine_is_deleted_not_moved():
    machines = [machine("m1"), machine("m2"), machine("m3")]
    units = [unit("edge", glob=True)]
    instances = [inst("edge", 0, "m1"), inst("edge", 1, "m2"), inst("edge", 2, "m3")]
    plan = plan_cluster(machines, units, instances, [], present={"m2", "m3"})
    assert plan.machines_not_ready == ["m1"]
    assert plan.unbinds == [] and plan.binds == [] and plan.creates == []
    assert plan.deletes == [("edge-0", "global: machine m1 is no longer eligible: NotReady")]


def test_global_unit_covers_a_new_machine_with_a_fresh_index():
    machines = [machine("m1"), machine("m2"), machine("m3")]
    units = [unit("edge", glob=True)]
    instances = [inst("edge", 0, "m1"), inst("edge", 1, "m2")]
    plan = plan_cluster(machines, units, instances, [], present={"m1", "m2", "m3"})
    assert [(c["metadata"]["name"], c["spec"]["machine"]) for c in plan.creates] == [("edge-2", "m3")]


# ---- rolling update ---------------------------------------------------------------------------

def test_rolling_update_replaces_one_up_instance_at_a_time():
    units = [unit("web", replicas=3, generation=2)]
    instances = [inst("web", i, f"m{i + 1}", epoch=5) for i in range(3)]
    plan = plan_cluster(M4, units, instances, [], present=ALL4)
    [fresh] = plan.replaces
    assert fresh["metadata"]["name"] == "web-0"
    assert fresh["spec"]["generation"] == 2
    assert fresh["spec"]["machine"] in ALL4 - {"m2", "m3"}  # placed again, spread kept
    assert fresh["spec"]["epoch"] == 6
    assert fresh["status"]["phase"] == "Pending"
    assert plan.binds == []  # the replace carries its binding
    assert reasons(plan, "Replaced") == [("web-0", "generation 1 -> 2")]

    # while the new web-0 is not up, the others wait
    instances[0] = fresh
    waiting = plan_cluster(M4, units, instances, [], present=ALL4)
    assert waiting.replaces == []

    # once it is up, the next one goes
    instances[0] = inst("web", 0, fresh["spec"]["machine"], epoch=6, generation=2)
    nxt = plan_cluster(M4, units, instances, [], present=ALL4)
    assert [r["metadata"]["name"] for r in nxt.replaces] == ["web-1"]


def test_rolling_update_replaces_down_instances_at_once():
    units = [unit("web", replicas=3, generation=2)]
    instances = [inst("web", 0, "m1", phase="Failed", ready=False), inst("web", 1, "m2"), inst("web", 2, "m3")]
    plan = plan_cluster(M4, units, instances, [], present=ALL4)
    assert [r["metadata"]["name"] for r in plan.replaces] == ["web-0"]
    assert reasons(plan, "Replaced") == [("web-0", "generation 1 -> 2 (instance not ready)")]


def test_plan_does_not_modify_its_inputs():
    # the snapshot is the watch caches' own objects: planning must copy before it changes anything
    machines, units = copy.deepcopy(M4), [unit("web", replicas=2, generation=2), unit("db", replicas=3)]
    instances = [inst("web", 0, "m1"), inst("web", 1, "m2"), inst("db", 0, "")]
    scaled = new_instance(unit("db", replicas=1), "db-1", 1, "m3")  # same template, older generation
    scaled["metadata"]["generation"] = 1
    units[1]["metadata"]["generation"] = 2
    instances.append(scaled)
    before = copy.deepcopy((machines, units, instances))
    plan_cluster(machines, units, instances, [], present={"m2", "m3"})
    assert (machines, units, instances) == before


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
async def test_planning_the_result_of_applying_a_plan_writes_nothing(case: str):
    machines, units, instances, present = SNAPSHOTS[case]
    store = MemoryStore()
    registry = Registry(store)
    await registry.start()
    try:
        for resource, objs in (("machines", machines), ("units", units), ("instances", instances)):
            for obj in objs:
                created = await registry.create(resource, obj)
                if obj.get("status"):  # create keeps what we give it; status included
                    assert created["status"] == obj["status"]
        controllers = Controllers(registry, store, ApiMetrics(), identity="test")

        def plan() -> ClusterPlan:
            return plan_cluster(registry.objects("machines"), registry.objects("units"),
                                registry.objects("instances"), registry.objects("endpoints"), set(present))

        first = plan()
        assert first.writes() > 0
        await controllers.apply(first)
        second = plan()
        assert second.writes() == 0, second
        # every instance is bound at most once and no name repeats
        insts = registry.objects("instances")
        assert len({i["metadata"]["name"] for i in insts}) == len(insts)
        for i in insts:
            assert (i["spec"]["machine"] == "") == (i["status"].get("reason") == UNSCHEDULABLE), i
    finally:
        await registry.stop()
