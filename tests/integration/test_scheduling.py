"""Scheduling and failover against real etcd and a real cp-apiserver (``--machine-ttl 2``), with
machines played through the heartbeat API (tests/machine_helper.py): no agents, no Docker.

The failover time is measured from the lost machine's last acknowledged heartbeat (its lease
runs out TTL seconds later) to the moment its instance is bound to another machine, and must
stay within TTL + 1 s.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from apiserver_fixture import ApiServer
from machine_helper import FakeMachines, call, wait_for

TTL = 2
NAMES = ["m1", "m2", "m3", "m4"]


@pytest.fixture
def api(etcd: Any, unique_prefix: str) -> Iterator[ApiServer]:
    with ApiServer(etcd.url, unique_prefix, machine_ttl=TTL) as server:
        yield server


def create_unit(api: ApiServer, name: str, replicas: int, **placement: Any) -> None:
    body = {"apiVersion": "v1", "kind": "Unit", "metadata": {"name": name},
            "spec": {"image": "local/web:latest", "replicas": replicas, "placement": placement}}
    status, obj = call(api.url, "POST", "/api/v1/units", body)
    assert status == 201, obj


def instances(api: ApiServer, unit: str) -> dict[str, dict[str, Any]]:
    status, obj = call(api.url, "GET", "/api/v1/instances")
    assert status == 200, obj
    return {i["metadata"]["name"]: i for i in obj["items"] if i["spec"]["unit"] == unit}


def bindings(api: ApiServer, unit: str) -> dict[str, str]:
    return {n: i["spec"]["machine"] for n, i in instances(api, unit).items()}


def machine_state(api: ApiServer, name: str) -> str:
    status, obj = call(api.url, "GET", f"/api/v1/machines/{name}")
    assert status == 200, obj
    return str((obj.get("status") or {}).get("state"))


def test_replicas_spread_then_fail_over_within_the_ttl_and_no_duplicate_on_return(api: ApiServer):
    with FakeMachines(api.url, NAMES, interval=0.5) as machines:
        create_unit(api, "web", 2)
        placed = wait_for(lambda: (b := bindings(api, "web")) and len(b) == 2 and all(b.values()) and b,
                          timeout=10, what="web's two instances bound")
        assert sorted(placed) == ["web-0", "web-1"]
        assert len(set(placed.values())) == 2, placed  # spread: two different machines
        before = instances(api, "web")

        lost = placed["web-0"]
        last_beat = machines.pause(lost)

        def moved() -> dict[str, Any] | None:
            now = instances(api, "web")
            inst = now.get("web-0")
            if inst and inst["spec"]["machine"] and inst["spec"]["machine"] != lost:
                return now
            return None

        after = wait_for(moved, timeout=TTL + 5, interval=0.02, what=f"web-0 to leave {lost}")
        elapsed = time.monotonic() - last_beat
        new_home = after["web-0"]["spec"]["machine"]
        print(f"failover: web-0 {lost} -> {new_home} {elapsed:.2f} s after the last heartbeat (TTL {TTL} s)")
        assert elapsed <= TTL + 1, f"rebound after {elapsed:.2f} s, TTL is {TTL} s"
        assert after["web-0"]["spec"]["epoch"] > before["web-0"]["spec"]["epoch"]
        assert new_home != after["web-1"]["spec"]["machine"]  # spread still holds
        assert after["web-1"]["spec"] == before["web-1"]["spec"]  # the other copy never moved
        assert machine_state(api, lost) == "NotReady"
        assert machine_state(api, new_home) == "Ready"

        status, events = call(api.url, "GET", "/api/v1/events")
        assert status == 200
        rescheduled = [e for e in events["items"] if e["reason"] == "Rescheduled"
                       and e["involvedObject"]["name"] == "web-0"]
        assert rescheduled and lost in rescheduled[0]["message"]

        # the machine comes back: Ready again, and nothing moves back or gets duplicated
        machines.resume(lost)
        wait_for(lambda: machine_state(api, lost) == "Ready", timeout=5, what=f"{lost} Ready again")
        time.sleep(1.0)  # a few passes of the leader
        final = instances(api, "web")
        assert sorted(final) == ["web-0", "web-1"]
        assert {n: i["spec"]["machine"] for n, i in final.items()} == {
            "web-0": new_home, "web-1": after["web-1"]["spec"]["machine"]}  # no rebalancing
        assert {n: i["spec"]["epoch"] for n, i in final.items()} == {
            n: i["spec"]["epoch"] for n, i in after.items()}
        assert lost not in {i["spec"]["machine"] for i in final.values()}
        assert machines.failures[lost] == 0


def test_placement_failures_say_why_and_cordon_keeps_new_instances_off(api: ApiServer):
    labels = {n: {"role": "web"} for n in NAMES}
    with FakeMachines(api.url, NAMES, interval=0.5, labels=labels):
        # until all four have beaten, "4 NotReady" is the true reason (seen on a loaded machine, TTL 2 s)
        for name in NAMES:
            wait_for(lambda name=name: machine_state(api, name) == "Ready", timeout=10, what=f"{name} Ready")
        # machineMetadata nobody has: Pending, with the reason
        create_unit(api, "api", 1, machineMetadata={"role": ["edge"]})

        def pending_message() -> str:
            inst = instances(api, "api").get("api-0")
            return str(inst["status"].get("message") or "") if inst else ""

        message = wait_for(pending_message, timeout=10, what="api-0's pending message")
        assert message == "0/4 machines: 4 lacks role=edge"
        inst = instances(api, "api")["api-0"]
        assert inst["spec"]["machine"] == "" and inst["status"]["phase"] == "Pending"
        assert inst["status"]["reason"] == "Unschedulable"
        status, unit = call(api.url, "GET", "/api/v1/units/api")
        assert unit["status"]["replicas"] == 1 and unit["status"]["readyReplicas"] == 0

        # one machine gets the label: the pending instance is placed there
        status, obj = call(api.url, "PATCH", "/api/v1/machines/m3", {"metadata": {"labels": {"role": "edge"}}},
                           content_type="application/merge-patch+json")
        assert status == 200, obj
        wait_for(lambda: bindings(api, "api").get("api-0") == "m3", timeout=5, what="api-0 bound to m3")

        # cordon m1: new instances stay off it; a fourth copy (spread required) cannot be placed
        status, obj = call(api.url, "PATCH", "/api/v1/machines/m1", {"spec": {"unschedulable": True}},
                           content_type="application/merge-patch+json")
        assert status == 200 and obj["spec"]["unschedulable"] is True, obj
        create_unit(api, "web", 4)
        placed = wait_for(lambda: (b := bindings(api, "web")) and len(b) == 4 and
                          sum(1 for m in b.values() if m) == 3 and b, timeout=10, what="three of web placed")
        assert sorted(m for m in placed.values() if m) == ["m2", "m3", "m4"]
        [waiting] = [n for n, m in placed.items() if not m]
        msg = wait_for(lambda: instances(api, "web")[waiting]["status"].get("message"), timeout=5,
                       what="web's pending message")
        assert msg == "0/4 machines: 3 already runs web, 1 cordoned"

        # uncordon: the waiting copy goes to m1
        status, obj = call(api.url, "PATCH", "/api/v1/machines/m1", {"spec": {"unschedulable": False}},
                           content_type="application/merge-patch+json")
        assert status == 200, obj
        wait_for(lambda: bindings(api, "web").get(waiting) == "m1", timeout=5, what=f"{waiting} on m1")
