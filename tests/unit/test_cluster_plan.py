"""Table tests of the leader's pass, ``plan_cluster``: snapshot in, exact writes out, reasons
included (applying them is tests/unit/test_apply_writes.py)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from cluster_objects import ALL4, M4, inst, machine, names, unit

from controlplane.controllers.cluster import UNSCHEDULABLE, ClusterPlan, Write, WriteOp, plan_cluster
from controlplane.model import new_instance


def reasons(plan: ClusterPlan, reason: str) -> list[tuple[str, str]]:
    return [(e.name, e.message) for e in plan.events if e.reason == reason]


def writes(plan: ClusterPlan, *ops: WriteOp) -> list[tuple[str, str, str]]:
    """(op, target, reason) of every write (only of ``ops``, when given), in plan order."""
    return [(w.op.value, w.target, w.reason) for w in plan.writes if not ops or w.op in ops]


def objects(plan: ClusterPlan, op: WriteOp) -> list[dict[str, Any]]:
    """The whole Instance objects that the creates (or replaces) of ``plan`` write."""
    found = [w.instance for w in plan.of(op)]
    assert all(obj is not None for obj in found)
    return [obj for obj in found if obj is not None]


def statuses(plan: ClusterPlan, op: WriteOp) -> dict[str, dict[str, Any]]:
    return {w.target: w.status for w in plan.of(op) if w.status is not None}


MARK, UNBIND, BIND, DELETE, CREATE, REPLACE = (WriteOp.MARK_NOT_READY, WriteOp.UNBIND, WriteOp.BIND,
                                               WriteOp.DELETE_INSTANCE, WriteOp.CREATE_INSTANCE,
                                               WriteOp.REPLACE_INSTANCE)
NO_ENDPOINTS = "no Endpoints object yet"


def new_status(unit: str, replicas: int, ready: int, generation: int = 1) -> tuple[str, str, str]:
    """The unit_status write of a unit whose status was never written."""
    return ("unit_status", unit,
            f"replicas unset -> {replicas}, readyReplicas unset -> {ready}, observedGeneration unset -> {generation}")


# ---- machines that stop heartbeating ----------------------------------------------------------

def test_machine_without_presence_goes_not_ready_and_its_instances_move():
    units = [unit("web", replicas=2, status={"replicas": 2, "readyReplicas": 2, "observedGeneration": 1})]
    instances = [inst("web", 0, "m1", epoch=3), inst("web", 1, "m2")]
    plan = plan_cluster(M4, units, instances, [], present={"m2", "m3", "m4"})

    # rebound in the same pass, on a Ready machine not running web (spread: m3 or m4, the
    # emptiest by name), one epoch up; web-0 is Pending now: one ready replica
    assert writes(plan) == [
        ("mark_not_ready", "m1", "machine m1 stopped heartbeating"),
        ("unbind", "web-0", "machine m1 is NotReady"),
        ("bind", "web-0", "pending; placed on m3"),
        ("unit_status", "web", "readyReplicas 2 -> 1"),
        ("endpoints", "web", NO_ENDPOINTS),
    ]
    assert plan.of(UNBIND) == [Write(UNBIND, "web-0", "machine m1 is NotReady", machine="m1")]
    assert plan.of(BIND) == [Write(BIND, "web-0", "pending; placed on m3", machine="m3", epoch=4)]
    assert reasons(plan, "NodeNotReady") == [("m1", "machine m1 stopped heartbeating")]
    assert reasons(plan, "Rescheduled") == [("web-0", "machine m1 is NotReady; placing web-0 elsewhere")]
    assert reasons(plan, "Scheduled") == [("web-0", "Successfully assigned web-0 to m3")]
    assert statuses(plan, WriteOp.UNIT_STATUS) == {
        "web": {"replicas": 2, "readyReplicas": 1, "observedGeneration": 1}}


def test_machine_already_not_ready_is_not_marked_again_and_a_deleted_machine_is_gone():
    machines = [machine("m1", ready=False), machine("m2")]
    units = [unit("web", replicas=2, spread="none")]
    instances = [inst("web", 0, "m1"), inst("web", 1, "m9")]
    plan = plan_cluster(machines, units, instances, [], present={"m2"})
    assert writes(plan, MARK, UNBIND, BIND) == [
        ("unbind", "web-0", "machine m1 is NotReady"),
        ("unbind", "web-1", "machine m9 is gone"),
        ("bind", "web-0", "pending; placed on m2"),
        ("bind", "web-1", "pending; placed on m2"),
    ]
    assert [(w.target, w.machine) for w in plan.of(UNBIND)] == [("web-0", "m1"), ("web-1", "m9")]
    assert [(w.target, w.machine, w.epoch) for w in plan.of(BIND)] == [("web-0", "m2", 2), ("web-1", "m2", 2)]


def test_lost_machine_with_nowhere_else_to_go_leaves_the_instance_pending_with_the_reason():
    machines = [machine("m1"), machine("m2")]
    units = [unit("web", replicas=2)]
    instances = [inst("web", 0, "m1"), inst("web", 1, "m2")]
    plan = plan_cluster(machines, units, instances, [], present={"m2"})
    message = "0/2 machines: 1 already runs web, 1 NotReady"
    assert writes(plan) == [
        ("mark_not_ready", "m1", "machine m1 stopped heartbeating"),
        ("unbind", "web-0", "machine m1 is NotReady"),
        ("instance_status", "web-0", f"{UNSCHEDULABLE}: {message}"),
        new_status("web", 2, 1),
        ("endpoints", "web", NO_ENDPOINTS),
    ]
    status = statuses(plan, WriteOp.INSTANCE_STATUS)["web-0"]
    assert status["phase"] == "Pending" and status["ready"] is False
    assert status["reason"] == UNSCHEDULABLE
    assert status["message"] == message
    assert reasons(plan, "FailedScheduling") == [("web-0", message)]


# ---- creating and placing ---------------------------------------------------------------------

def test_new_unit_creates_instances_already_bound_and_spread():
    plan = plan_cluster(M4, [unit("web", replicas=3)], [], [], present=ALL4)
    assert writes(plan) == [
        ("create_instance", "web-0", "scale up to 3 replicas (0 exist)"),
        ("create_instance", "web-1", "scale up to 3 replicas (0 exist)"),
        ("create_instance", "web-2", "scale up to 3 replicas (0 exist)"),
        new_status("web", 3, 0),
        ("endpoints", "web", NO_ENDPOINTS),
    ]
    creates = objects(plan, CREATE)
    assert [c["metadata"]["name"] for c in creates] == ["web-0", "web-1", "web-2"]
    bound = [c["spec"]["machine"] for c in creates]
    assert len(set(bound)) == 3 and set(bound) <= ALL4
    assert [c["spec"]["epoch"] for c in creates] == [1, 1, 1]
    assert [c["spec"]["index"] for c in creates] == [0, 1, 2]
    assert all(c["spec"]["unit"] == "web" and c["spec"]["generation"] == 1 for c in creates)
    assert all(c["status"]["phase"] == "Pending" for c in creates)
    assert statuses(plan, WriteOp.UNIT_STATUS) == {
        "web": {"replicas": 3, "readyReplicas": 0, "observedGeneration": 1}}
    assert [(w.target, w.endpoints) for w in plan.of(WriteOp.ENDPOINTS)] == [("web", [])]


def test_new_instances_go_to_the_emptiest_machines():
    # m1 and m2 run db already; web's two new instances go to m3 and m4
    units = [unit("db", replicas=2), unit("web", replicas=2)]
    instances = [inst("db", 0, "m1"), inst("db", 1, "m2")]
    plan = plan_cluster(M4, units, instances, [], present=ALL4)
    assert writes(plan, CREATE) == [("create_instance", "web-0", "scale up to 2 replicas (0 exist)"),
                                    ("create_instance", "web-1", "scale up to 2 replicas (0 exist)")]
    assert sorted(c["spec"]["machine"] for c in objects(plan, CREATE)) == ["m3", "m4"]


def test_scale_down_deletes_the_highest_indexes():
    units = [unit("web", replicas=1)]
    instances = [inst("web", 0, "m1"), inst("web", 1, "m2"), inst("web", 2, "m3")]
    plan = plan_cluster(M4, units, instances, [], present=ALL4)
    assert writes(plan) == [
        ("delete_instance", "web-1", "scale down to 1 replicas (3 exist)"),
        ("delete_instance", "web-2", "scale down to 1 replicas (3 exist)"),
        new_status("web", 1, 1),
        ("endpoints", "web", NO_ENDPOINTS),
    ]


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
    [created] = objects(plan, CREATE)
    index = len(existing)
    assert writes(plan, CREATE) == [("create_instance", f"api-{index}",
                                     f"scale up to {index + 1} replicas ({index} exist)")]
    assert created["spec"]["machine"] == "" and created["spec"]["epoch"] == 0
    assert created["status"]["phase"] == "Pending"
    assert created["status"]["reason"] == UNSCHEDULABLE
    assert created["status"]["message"] == message
    assert reasons(plan, "FailedScheduling") == [(created["metadata"]["name"], message)]
    assert plan.pending_reasons == codes
    assert plan.of(WriteOp.INSTANCE_STATUS) == []  # a created instance carries its status: one write, not two

    # the same pending instance on the next pass: nothing to write, no second event
    again = plan_cluster(machines, units, existing + [created], [], present=present)
    assert writes(again, WriteOp.INSTANCE_STATUS, CREATE) == []
    assert reasons(again, "FailedScheduling") == []


def test_an_existing_pending_instance_gets_its_message_when_placement_fails():
    units = [unit("api", replicas=1, machineMetadata={"role": ["edge"]})]
    pending = inst("api", 0, "", epoch=0, phase="Pending", ready=False)
    plan = plan_cluster(M4, units, [pending], [], present=ALL4)
    assert writes(plan) == [
        ("instance_status", "api-0", f"{UNSCHEDULABLE}: 0/4 machines: 4 lacks role=edge"),
        new_status("api", 1, 0),
        ("endpoints", "api", NO_ENDPOINTS),
    ]
    status = statuses(plan, WriteOp.INSTANCE_STATUS)["api-0"]
    assert status["message"] == "0/4 machines: 4 lacks role=edge"
    assert status["reason"] == UNSCHEDULABLE


def test_an_existing_pending_instance_is_bound_when_a_machine_fits():
    units = [unit("api", replicas=1)]
    pending = inst("api", 0, "", epoch=2, phase="Pending", ready=False, reason=UNSCHEDULABLE, message="0/0 machines")
    plan = plan_cluster([machine("m1")], units, [pending], [], present={"m1"})
    assert plan.of(BIND) == [Write(BIND, "api-0", "pending; placed on m1", machine="m1", epoch=3)]
    assert writes(plan) == [("bind", "api-0", "pending; placed on m1"), new_status("api", 1, 0),
                            ("endpoints", "api", NO_ENDPOINTS)]


def test_a_pass_that_binds_many_instances_records_no_scheduled_event_per_instance():
    machines = [machine(f"m{i}") for i in range(1, 61)]
    units = [unit("api", replicas=51, spread="none")]
    pending = [inst("api", i, "", epoch=0, phase="Pending", ready=False) for i in range(51)]
    plan = plan_cluster(machines, units, pending, [], present=names(machines))
    assert len(plan.of(BIND)) == 51
    assert reasons(plan, "Scheduled") == []
    fewer = plan_cluster(machines, [unit("api", replicas=50, spread="none")], pending[:50], [],
                         present=names(machines))
    assert len(reasons(fewer, "Scheduled")) == 50


def test_cordoned_machine_gets_no_new_instances_but_keeps_its_own():
    machines = [machine("m1", cordoned=True), machine("m2"), machine("m3")]
    units = [unit("web", replicas=3, spread="preferred")]
    plan = plan_cluster(machines, units, [inst("web", 0, "m1")], [], present={"m1", "m2", "m3"})
    assert writes(plan) == [
        ("create_instance", "web-1", "scale up to 3 replicas (1 exist)"),
        ("create_instance", "web-2", "scale up to 3 replicas (1 exist)"),
        new_status("web", 3, 1),
        ("endpoints", "web", NO_ENDPOINTS),
    ]
    assert sorted(c["spec"]["machine"] for c in objects(plan, CREATE)) == ["m2", "m3"]


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
    assert writes(plan) == [new_status("web", 3, 1, generation=4), ("endpoints", "web", NO_ENDPOINTS),
                            ("endpoints", "db", NO_ENDPOINTS)]
    assert statuses(plan, WriteOp.UNIT_STATUS) == {
        "web": {"replicas": 3, "readyReplicas": 1, "observedGeneration": 4}}


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
    eps = [{"address": "10.0.0.1", "port": 31000, "containerPort": 8080, "instance": "web-0", "machine": "m1"}]
    assert plan.of(WriteOp.ENDPOINTS) == [Write(WriteOp.ENDPOINTS, "web", NO_ENDPOINTS, endpoints=eps)]
    # unchanged endpoints are not rewritten
    current = [{"metadata": {"name": "web"}, "endpoints": eps}]
    again = plan_cluster(machines, units, instances, current, present={"m1", "m2", "m3", "m5"})
    assert again.of(WriteOp.ENDPOINTS) == []
    # changed ones are, with the count in the reason
    stale = [{"metadata": {"name": "web"}, "endpoints": eps * 2}]
    changed = plan_cluster(machines, units, instances, stale, present={"m1", "m2", "m3", "m5"})
    assert writes(changed, WriteOp.ENDPOINTS) == [("endpoints", "web", "ready endpoints changed (2 -> 1)")]


def test_orphan_instances_and_endpoints_of_a_deleted_unit_are_deleted():
    instances = [inst("gone", 0, "m1"), inst("web", 0, "m2")]
    endpoints = [{"metadata": {"name": "gone"}, "endpoints": []}, {"metadata": {"name": "web"}, "endpoints": []}]
    units = [unit("web", replicas=1, status={"replicas": 1, "readyReplicas": 1, "observedGeneration": 1})]
    plan = plan_cluster(M4, units, instances, endpoints, present=ALL4)
    assert writes(plan) == [("delete_instance", "gone-0", "unit gone no longer exists"),
                            ("delete_endpoints", "gone", "unit gone no longer exists")]


# ---- global units -----------------------------------------------------------------------------

def test_global_unit_one_instance_per_eligible_machine():
    machines = [machine("m1", role="edge"), machine("m2", role="edge"), machine("m3", role="web"),
                machine("m4", role="edge", cordoned=True), machine("m5", role="edge", ready=False)]
    units = [unit("edge", glob=True, machineMetadata={"role": ["edge"]})]
    plan = plan_cluster(machines, units, [], [], present={"m1", "m2", "m3", "m4"})
    assert writes(plan) == [
        ("create_instance", "edge-0", "global: machine m1 has no instance"),
        ("create_instance", "edge-1", "global: machine m2 has no instance"),
        new_status("edge", 2, 0),
        ("endpoints", "edge", NO_ENDPOINTS),
    ]
    assert [(c["metadata"]["name"], c["spec"]["machine"], c["spec"]["epoch"]) for c in objects(plan, CREATE)] == [
        ("edge-0", "m1", 1), ("edge-1", "m2", 1)]


def test_global_instance_on_a_lost_machine_is_deleted_not_moved():
    machines = [machine("m1"), machine("m2"), machine("m3")]
    units = [unit("edge", glob=True)]
    instances = [inst("edge", 0, "m1"), inst("edge", 1, "m2"), inst("edge", 2, "m3")]
    plan = plan_cluster(machines, units, instances, [], present={"m2", "m3"})
    assert writes(plan, MARK, UNBIND, BIND, DELETE, CREATE) == [
        ("mark_not_ready", "m1", "machine m1 stopped heartbeating"),
        ("delete_instance", "edge-0", "global: machine m1 is no longer eligible: NotReady"),
    ]


def test_global_unit_covers_a_new_machine_with_a_fresh_index():
    machines = [machine("m1"), machine("m2"), machine("m3")]
    units = [unit("edge", glob=True)]
    instances = [inst("edge", 0, "m1"), inst("edge", 1, "m2")]
    plan = plan_cluster(machines, units, instances, [], present={"m1", "m2", "m3"})
    assert writes(plan, CREATE) == [("create_instance", "edge-2", "global: machine m3 has no instance")]
    assert [(c["metadata"]["name"], c["spec"]["machine"]) for c in objects(plan, CREATE)] == [("edge-2", "m3")]


# ---- rolling update ---------------------------------------------------------------------------

def test_rolling_update_replaces_one_up_instance_at_a_time():
    units = [unit("web", replicas=3, generation=2)]
    instances = [inst("web", i, f"m{i + 1}", epoch=5) for i in range(3)]
    plan = plan_cluster(M4, units, instances, [], present=ALL4)
    assert writes(plan) == [
        ("replace_instance", "web-0", "generation 1 -> 2"),  # the replace carries its binding: no bind
        new_status("web", 3, 2, generation=2),
        ("endpoints", "web", NO_ENDPOINTS),
    ]
    [fresh] = objects(plan, REPLACE)
    assert fresh["metadata"]["name"] == "web-0"
    assert fresh["spec"]["generation"] == 2
    assert fresh["spec"]["machine"] in ALL4 - {"m2", "m3"}  # placed again, spread kept
    assert fresh["spec"]["epoch"] == 6
    assert fresh["status"]["phase"] == "Pending"
    assert reasons(plan, "Replaced") == [("web-0", "generation 1 -> 2")]

    # while the new web-0 is not up, the others wait
    instances[0] = fresh
    waiting = plan_cluster(M4, units, instances, [], present=ALL4)
    assert waiting.of(REPLACE) == []

    # once it is up, the next one goes
    instances[0] = inst("web", 0, fresh["spec"]["machine"], epoch=6, generation=2)
    nxt = plan_cluster(M4, units, instances, [], present=ALL4)
    assert writes(nxt, REPLACE) == [("replace_instance", "web-1", "generation 1 -> 2")]


def test_rolling_update_replaces_down_instances_at_once():
    units = [unit("web", replicas=3, generation=2)]
    instances = [inst("web", 0, "m1", phase="Failed", ready=False), inst("web", 1, "m2"), inst("web", 2, "m3")]
    plan = plan_cluster(M4, units, instances, [], present=ALL4)
    assert writes(plan, REPLACE) == [("replace_instance", "web-0", "generation 1 -> 2 (instance not ready)")]
    assert reasons(plan, "Replaced") == [("web-0", "generation 1 -> 2 (instance not ready)")]


def test_plan_does_not_modify_its_inputs():
    # the snapshot is the watch caches' own objects: planning must copy before it changes anything
    machines, units = copy.deepcopy(M4), [unit("web", replicas=2, generation=2), unit("db", replicas=3)]
    instances = [inst("web", 0, "m1"), inst("web", 1, "m2"), inst("db", 0, "")]
    scaled: dict[str, Any] = dict(new_instance(unit("db", replicas=1), "db-1", 1, "m3"))  # same template, older generation
    scaled["metadata"]["generation"] = 1
    units[1]["metadata"]["generation"] = 2
    instances.append(scaled)
    before = copy.deepcopy((machines, units, instances))
    plan_cluster(machines, units, instances, [], present={"m2", "m3"})
    assert (machines, units, instances) == before
