"""Docker failing under a real agent: the engine restarted, and a container killed behind its back.

The agent drives an engine of the test's own (tests/faults/second_dockerd.py): restarting the
host's dockerd would stop every other test's containers. One machine, a real cp-apiserver.

- ``test_dockerd_restart``: the engine is restarted (SIGTERM, as ``systemctl restart docker``):
  its containers stop with it and come back exited. The agent rides out the outage (its engine
  calls fail, its machine stays Ready) and then restarts the same containers per their policy,
  within its 5 s resync of the engine's return (its Docker events stream coming back wakes it):
  each instance is Running and ready again, its status names the container that runs and the
  host port it is published on now (which answers), and no instance ever has two copies.
- ``test_container_killed``: containers are SIGKILLed behind the agent's back: Always and
  OnFailure restart the same container (restarts 1, exit code 137 seen), Never leaves it exited
  and says so (Failed, exitCode 137), and nothing is recreated.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from agent_scenario import FaultCluster, cpctl_ok, wait_until  # noqa: E402
from cluster_fixture import LocalCluster  # noqa: E402
from fault_watch import DockerSampler, duplicates  # noqa: E402
from second_dockerd import SecondDockerd  # noqa: E402

pytestmark = [pytest.mark.docker, pytest.mark.slow]


@dataclass
class Rig:
    cluster: LocalCluster
    engine: SecondDockerd


@pytest.fixture(scope="module")
def rig(etcd: Any) -> Iterator[Rig]:
    with SecondDockerd() as engine:
        engine.load_images("local/web:latest")
        with FaultCluster(etcd.url, f"/cp-fault-runtime/{time.monotonic_ns()}", machines=1, machine_ttl=5,
                          agent_args=["--docker", engine.url]) as c:
            yield Rig(c, engine)


def engine_containers(rig: Rig, instance: str | None = None) -> list[dict[str, Any]]:
    """``docker inspect`` of the cluster's containers on the test engine (of one instance)."""
    label = ["--filter", f"label=cp.instance={instance}"] if instance else []
    ids = rig.engine.docker("ps", "-aq", "--filter", f"label=cp.cluster={rig.cluster.cluster}", *label).stdout.split()
    return list(json.loads(rig.engine.docker("inspect", *ids).stdout)) if ids else []


def published_port(container: dict[str, Any], port: int = 8080) -> int | None:
    bindings = (container["NetworkSettings"].get("Ports") or {}).get(f"{port}/tcp") or []
    return next((int(b["HostPort"]) for b in bindings if ":" not in b["HostIp"]), None)


def status_problem(rig: Rig, name: str) -> str | None:
    """None when ``name``'s status is Running and ready and names the one container of the
    engine, running, and its host port now, which answers as that instance."""
    (inst,) = [i for i in rig.cluster.instances() if i["metadata"]["name"] == name]
    status = inst.get("status") or {}
    containers = engine_containers(rig, name)
    if len(containers) != 1:
        return f"{name}: {len(containers)} containers"
    (container,) = containers
    if not container["State"]["Running"]:
        return f"{name}: container {container['State']['Status']}"
    if status.get("phase") != "Running" or not status.get("ready") or status.get("containerID") != container["Id"]:
        return f"{name}: status {status.get('phase')} ready={status.get('ready')} {status.get('containerID', '')[:12]}"
    reported = {p["containerPort"]: p["hostPort"] for p in status.get("hostPorts") or []}
    if reported.get(8080) != published_port(container):
        return f"{name}: status says port {reported.get(8080)}, the engine {published_port(container)}"
    url = f"http://{status['address']}:{reported[8080]}/"
    with urllib.request.urlopen(url, timeout=2) as resp:
        page = resp.read().decode()
    return None if f"instance={name} " in page else f"{url} answered {page[:80]!r}"


def run_unit(rig: Rig, unit: str, *extra: str) -> None:
    cpctl_ok(rig.cluster, "run", unit, "--image", "local/web:latest", "--replicas", "1", "--port", "8080", *extra)


def test_dockerd_restart(rig: Rig) -> None:
    run_unit(rig, "svc", "--health-http", "/", "--timeout", "60")
    wait_until(lambda: status_problem(rig, "svc-0") is None, timeout=30, what="svc-0 running")
    before = engine_containers(rig, "svc-0")[0]
    sampler = DockerSampler(rig.cluster.cluster, socket_path=str(rig.engine.socket))
    sampler.start()
    try:
        began = time.monotonic()
        rig.engine.restart()
        back = time.monotonic() - began
        wait_until(lambda: status_problem(rig, "svc-0") is None, timeout=40, what="svc-0 recovered", interval=0.1)
        recovered = time.monotonic() - began
    finally:
        sampler.stop()
    (after,) = engine_containers(rig, "svc-0")
    (inst,) = rig.cluster.instances("svc")
    print(f"\ndockerd restart: the engine answered again {back:.1f}s after SIGTERM; svc-0 Running and ready "
          f"{recovered:.1f}s after (restarts {inst['status']['restarts']}, port "
          f"{published_port(before)} -> {published_port(after)}); {sampler.errors} samples unanswered")
    assert sampler.errors > 0, "the sampler never saw the engine down: was it restarted?"
    assert duplicates(sampler.samples) == []
    # within the agent's 5 s resync: its events stream coming back is a reason to look again
    assert recovered - back < 5.0, f"svc-0 took {recovered - back:.1f}s after the engine was back"
    assert after["Id"] == before["Id"], "the agent recreated the container instead of restarting it"
    assert after["State"]["StartedAt"] != before["State"]["StartedAt"]
    assert inst["status"]["restarts"] >= 1 and inst["spec"]["machine"] == "m1"
    machine = rig.cluster.api_get("machines/m1")
    assert machine["status"]["state"] == "Ready"
    rig.cluster.cpctl("delete", "unit", "svc")


def kill(rig: Rig, name: str) -> str:
    (container,) = engine_containers(rig, name)
    rig.engine.docker("kill", container["Id"])
    return str(container["Id"])


def test_container_killed(rig: Rig) -> None:
    run_unit(rig, "always", "--health-http", "/", "--timeout", "60")
    run_unit(rig, "onfail", "--restart", "OnFailure", "--timeout", "60")
    run_unit(rig, "never", "--restart", "Never", "--timeout", "60")
    for name in ("always-0", "onfail-0", "never-0"):
        wait_until(lambda n=name: status_problem(rig, n) is None, timeout=30, what=f"{name} running")
    killed = {name: kill(rig, name) for name in ("always-0", "onfail-0", "never-0")}
    began = time.monotonic()
    took = {}
    for name in ("always-0", "onfail-0"):
        wait_until(lambda n=name: status_problem(rig, n) is None, timeout=20, what=f"{name} restarted", interval=0.1)
        took[name] = time.monotonic() - began
    time.sleep(3.0)  # Never: still not restarted after the others' backoff
    statuses = {i["metadata"]["name"]: i["status"] for i in rig.cluster.instances()}
    print(f"\ncontainer killed: always-0 back in {took['always-0']:.1f}s, onfail-0 in {took['onfail-0']:.1f}s; "
          f"never-0 {statuses['never-0']['phase']} exit {statuses['never-0']['exitCode']}")
    for name in ("always-0", "onfail-0"):
        (container,) = engine_containers(rig, name)
        assert container["Id"] == killed[name], f"{name} was recreated, not restarted"
        assert statuses[name]["restarts"] == 1, statuses[name]
    (never,) = engine_containers(rig, "never-0")
    assert never["Id"] == killed["never-0"] and not never["State"]["Running"]
    assert never["State"]["ExitCode"] == 137
    assert statuses["never-0"]["phase"] == "Failed" and statuses["never-0"]["exitCode"] == 137, statuses["never-0"]
    assert statuses["never-0"]["restarts"] == 0
    for unit in ("always", "onfail", "never"):
        rig.cluster.cpctl("delete", "unit", unit)
