"""An agent partitioned from the API server, both ways and each way alone, on real agents and Docker.

A 4-machine ``LocalCluster`` (machine TTL 3 s, fencing at the default 80 %) runs the seed scenario
(web x2 behind web-lb x2 behind an edge on every machine) while two clients request
``someapp.mywebsite.com`` through the edge of a machine that stays up. The machine running web-0
is cut off from the API port by iptables (tests/faults/agent_partition.py; the agents connect
from their own address, so the rule touches that machine alone), its edge container is killed
at once (so its agent has a status to write to the API it cannot reach: fencing must not wait
for that write), then the cut is healed. Throughout, Docker
is sampled every 100 ms (tests/faults/fault_watch.py). Each direction is its own test:

- the cut-off machine fences before the TTL ends: its last running container stops less than
  TTL seconds after the cut (Docker's view, not the agent's word);
- web-0 starts again on another machine, and only after the old copy stopped: at no sample do
  two running containers carry the same instance (``<unit>-<index>``); the gap between the old
  copy's last sample and the new one's first is printed for every instance that moved;
- the requests that failed, and the span from the first to the last, are printed; the span is
  bounded by TTL + 3 s;
- after the heal the machine unfences, is Ready again, runs its edge again and nothing else of
  what moved: every unit converges, and the edge answers;
- and statuses stay right: 8 s after the heal (when TCP has delivered whatever request the cut
  held back, such as the status write about the killed edge) every status still names the
  container Docker runs.
"""

from __future__ import annotations

import functools
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from agent_partition import AgentPartition, Direction, remove_leftovers, skip_without_iptables  # noqa: E402
from agent_scenario import (  # noqa: E402
    FaultCluster,
    edge_answers,
    edge_url,
    placement,
    ready_machines,
    start_scenario,
    wait_converged,
    wait_until,
)
from cluster_fixture import LocalCluster  # noqa: E402
from fault_watch import (  # noqa: E402
    DockerSampler,
    EdgeLoad,
    Sample,
    duplicates,
    failures,
    first_running_elsewhere,
    gaps,
    last_running_on,
    running_by_instance,
    window,
)

pytestmark = [pytest.mark.docker, pytest.mark.slow]

TTL = 3
MACHINES = 4
STALE_WRITES_LAND = 8.0  # s after the heal: TCP retransmits a request the cut held back within this


@dataclass
class Scenario:
    cluster: LocalCluster
    edge_port: int


@dataclass
class PartitionRun:
    direction: str
    victim: str
    entry: str
    cut_at: float
    healed_at: float
    samples: list[Sample]
    results: list[tuple[float, float, int]]


@pytest.fixture(scope="module")
def scenario(etcd: Any) -> Iterator[Scenario]:
    skip_without_iptables()
    remove_leftovers()
    with FaultCluster(etcd.url, f"/cp-fault-agent/{time.monotonic_ns()}", machines=MACHINES,
                      machine_ttl=TTL) as c:
        try:
            port = start_scenario(c)
            wait_converged(c.api_get, timeout=60, what="the scenario to converge")
            yield Scenario(c, port)
        finally:
            remove_leftovers()


def cut_and_heal(s: Scenario, direction: Direction) -> PartitionRun:
    """Cut web-0's machine off, wait until it fenced and web-0 runs elsewhere, heal, converge."""
    c = s.cluster
    victim = placement(c.api_get)["web-0"]
    entry = next(m for m in c.names if m != victim)
    url = edge_url(c, entry, s.edge_port)
    wait_until(lambda: edge_answers(url), timeout=20, what=f"{url} to answer")
    log = c.dir / f"agent-{victim}.log"
    unfenced = log.read_text().count("unfencing")
    sampler = DockerSampler(c.cluster)
    sampler.start()
    load = EdgeLoad(url, "someapp.mywebsite.com").start()
    try:
        time.sleep(1.0)
        cut_at = time.monotonic()
        with AgentPartition(c.address(victim), c.api.port, direction):
            kill_edge_container(c, victim)  # its agent now has a status to write, to an API it cannot reach
            wait_until(lambda: fenced_and_replaced(sampler.since(cut_at), victim), timeout=TTL + 20,
                       what=f"{victim} to fence and web-0 to run elsewhere", interval=0.1)
            wait_converged(c.api_get, timeout=30, what="the rest to converge")
            time.sleep(1.0)
        healed_at = time.monotonic()
        wait_until(lambda: victim in ready_machines(c.api_get), timeout=20, what=f"{victim} Ready again")
        wait_until(lambda: log.read_text().count("unfencing") > unfenced, timeout=20, what=f"{victim} to unfence")
        docker = functools.partial(running_by_instance, c.cluster)
        wait_converged(c.api_get, running=docker, timeout=30, what="convergence after the heal")
        # a status write stuck in the cut reaches the API when it heals, late: it must not stick
        time.sleep(max(0.0, healed_at + STALE_WRITES_LAND - time.monotonic()))
        wait_converged(c.api_get, running=docker, timeout=5, what="statuses that stay right")
    except AssertionError as err:
        raise AssertionError(f"{err}\n{c.logs(60)}") from None
    finally:
        load.stop()
        sampler.stop()
    return PartitionRun(direction, victim, entry, cut_at, healed_at, sampler.since(cut_at - 1.0),
                        list(load.results))


def kill_edge_container(c: LocalCluster, machine: str) -> None:
    ids = [x["ID"] for x in c.containers(machine) if "cp.unit=edge," in x["Labels"] + "," and x["State"] == "running"]
    assert ids, f"no edge container running on {machine}"
    subprocess.run(["docker", "kill", *ids], capture_output=True, check=True)


def fenced_and_replaced(samples: list[Sample], victim: str) -> bool:
    if not samples or any(c.machine == victim for c in samples[-1].running):
        return False
    return first_running_elsewhere(samples, "web-0", victim) is not None


def summary(run: PartitionRun) -> dict[str, Any]:
    during = [s for s in run.samples if run.cut_at <= s.at <= run.healed_at]
    fenced = last_running_on(during, run.victim)
    moved = first_running_elsewhere(during, "web-0", run.victim)
    after_cut = [r for r in run.results if r[0] >= run.cut_at]
    return {
        "fenced": None if fenced is None else fenced - run.cut_at,
        "replaced": None if moved is None else moved[0] - run.cut_at,
        "replaced_on": None if moved is None else moved[1],
        "gaps": gaps(during, run.victim),
        "duplicates": duplicates(run.samples),
        "sent": len(after_cut),
        "failed": len(failures(after_cut)),
        "window": window(after_cut),
        "failed_before": len(failures([r for r in run.results if r[0] < run.cut_at])),
    }


@pytest.mark.parametrize("direction", ["both", "to_api", "from_api"])
def test_partitioned_agent_fences_before_its_replacement_starts(scenario: Scenario, direction: Direction) -> None:
    run = cut_and_heal(scenario, direction)
    s = summary(run)
    moved = ", ".join(f"{name} {gap:+.2f}s" for name, gap in s["gaps"].items())
    print(f"\npartition {direction}: {run.victim} cut (edge on {run.entry}); fenced +{s['fenced']:.2f}s, "
          f"web-0 running on {s['replaced_on']} +{s['replaced']:.2f}s; gaps old->new: {moved}; "
          f"{s['failed']}/{s['sent']} requests failed over {s['window']:.2f}s; "
          f"{len(s['duplicates'])} duplicate samples")
    c = scenario.cluster
    assert s["duplicates"] == [], f"two running copies of one instance: {s['duplicates'][:5]}\n{c.logs()}"
    assert s["fenced"] is not None and s["fenced"] < TTL, f"{run.victim} fenced at +{s['fenced']}s, TTL {TTL}s"
    assert s["replaced_on"] not in (None, run.victim)
    assert s["replaced"] > s["fenced"], s
    assert all(gap > 0 for gap in s["gaps"].values()), s["gaps"]
    assert s["failed_before"] == 0, "requests failed before the cut"
    assert s["window"] < TTL + 3, f"requests failed over {s['window']:.2f}s"
    assert placement(c.api_get)["web-0"] != run.victim, "the healed machine took web-0 back"
    assert edge_answers(edge_url(c, run.victim, scenario.edge_port)), "the healed machine's edge does not answer"
    log = (c.dir / f"agent-{run.victim}.log").read_text()
    assert "stopping this machine's instances" in log
