"""Leader failover: two cp-apiserver processes on one etcd prefix; the leader is killed with
SIGKILL while a client keeps creating and scaling units through the other one.

The survivor must take over within the leader lease's TTL (the servers derive it from
``--machine-ttl``, 2 s here) -- measured from the kill to its ``cp_leader 1`` -- and the cluster
must converge: every unit has exactly its replicas, named ``<unit>-<index>`` for index
0..replicas-1 (each name once), each bound, no two copies of a unit on one machine.
"""

from __future__ import annotations

import random
import re
import threading
import time
import urllib.request
from typing import Any

import pytest
from apiserver_fixture import ApiServer
from machine_helper import FakeMachines, call, wait_for

TTL = 2
NAMES = [f"m{i}" for i in range(1, 7)]
UNITS = [f"svc{i}" for i in range(8)]


def is_leader(api: ApiServer) -> bool:
    try:
        req = urllib.request.Request(api.url + "/metrics", headers={"Authorization": f"Bearer {api.admin_token}"})
        with urllib.request.urlopen(req, timeout=1) as resp:
            text = resp.read().decode()
    except OSError:
        return False
    match = re.search(r"^cp_leader ([0-9.]+)$", text, re.M)
    return bool(match and float(match.group(1)) == 1.0)


def converged(api: ApiServer, wanted: dict[str, int]) -> bool:
    status, obj = call(api.url, "GET", "/api/v1/instances")
    if status != 200:
        return False
    by_unit: dict[str, list[dict[str, Any]]] = {}
    for inst in obj["items"]:
        by_unit.setdefault(inst["spec"]["unit"], []).append(inst)
    for unit, replicas in wanted.items():
        mine = by_unit.get(unit, [])
        if sorted(i["metadata"]["name"] for i in mine) != sorted(f"{unit}-{n}" for n in range(replicas)):
            return False
        if not all(i["spec"]["machine"] for i in mine):
            return False
    return set(by_unit) <= set(wanted)


@pytest.mark.slow
def test_killed_leader_is_replaced_within_the_lease_ttl_and_the_cluster_converges(etcd: Any, unique_prefix: str):
    with ApiServer(etcd.url, unique_prefix, machine_ttl=TTL) as a, ApiServer(etcd.url, unique_prefix, machine_ttl=TTL) as b:
        servers = wait_for(lambda: [s for s in (a, b) if is_leader(s)], timeout=10, what="a leader")
        assert len(servers) == 1, "two leaders"
        leader = servers[0]
        survivor = b if leader is a else a
        assert not is_leader(survivor)

        with FakeMachines(survivor.url, NAMES, interval=0.5):
            wanted: dict[str, int] = {}
            errors: list[str] = []
            stop = threading.Event()
            rng = random.Random(7)

            def client() -> None:
                # create the units, then keep scaling them, all through the survivor
                for unit in UNITS:
                    replicas = rng.randint(1, len(NAMES))
                    status, obj = call(survivor.url, "POST", "/api/v1/units",
                                       {"apiVersion": "v1", "kind": "Unit", "metadata": {"name": unit},
                                        "spec": {"image": "local/web:latest", "replicas": replicas}})
                    if status != 201:
                        errors.append(f"create {unit}: {status} {obj}")
                    wanted[unit] = replicas
                while not stop.is_set():
                    unit, replicas = rng.choice(UNITS), rng.randint(0, len(NAMES))
                    status, obj = call(survivor.url, "PUT", f"/api/v1/units/{unit}/scale",
                                       {"spec": {"replicas": replicas}})
                    if status != 200:
                        errors.append(f"scale {unit}: {status} {obj}")
                    wanted[unit] = replicas
                    time.sleep(0.05)

            thread = threading.Thread(target=client, daemon=True)
            thread.start()
            time.sleep(0.5)  # the client is busy and the leader is placing
            killed = time.monotonic()
            leader.kill()
            wait_for(lambda: is_leader(survivor), timeout=TTL + 10, interval=0.02, what="the survivor to lead")
            takeover = time.monotonic() - killed
            print(f"leader failover: survivor leads {takeover:.2f} s after kill -9 (lease TTL {TTL} s)")
            time.sleep(0.5)  # the client keeps going against the new leader
            stop.set()
            thread.join(10)
            assert not errors, errors[:5]
            assert takeover <= TTL + 1, f"takeover took {takeover:.2f} s, lease TTL {TTL} s"

            wait_for(lambda: converged(survivor, wanted), timeout=15, what=f"convergence to {wanted}")
            status, obj = call(survivor.url, "GET", "/api/v1/instances")
            seen: dict[str, set[str]] = {}
            for inst in obj["items"]:
                machines = seen.setdefault(inst["spec"]["unit"], set())
                assert inst["spec"]["machine"] not in machines, f"two copies of a unit on one machine: {inst}"
                machines.add(inst["spec"]["machine"])
                assert inst["spec"]["epoch"] >= 1
            status, units = call(survivor.url, "GET", "/api/v1/units")
            for unit in units["items"]:
                name = unit["metadata"]["name"]
                wait_for(lambda n=name: call(survivor.url, "GET", f"/api/v1/units/{n}")[1]["status"].get("replicas")
                         == wanted[n], timeout=5, what=f"{name}'s status.replicas")
