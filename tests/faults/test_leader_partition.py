"""The leading API server cut off from etcd: it steps down before its lease can expire, so it never
leads at the same time as the server that takes over, and every binding's epoch stays one story.

Two cp-apiservers share an etcd prefix. A runs as its own uid and leads; B serves the machines'
heartbeats and the test's requests. Then every packet between A and etcd is dropped (A stays
alive and reachable over HTTP), and machine m1 stops heartbeating, so the new leader has work to
do: mark m1 NotReady and bind its instances elsewhere, one epoch up.

Checked: by the leader logs and ``cp_leader`` gauges, A stopped leading before B started (and
within the lease TTL of the cut), and no sample ever saw both leading; in the history of every
instance (watched through B), an epoch never names two machines and never goes down, and the
instances moved off m1 carry epochs above those they had before the cut.
"""

from __future__ import annotations

import re
import threading
import time
from datetime import datetime
from typing import Any

from apiserver_fixture import ApiServer
from etcd_fixture import EtcdServer
from fault_servers import ApiWatch, UidApiServer, metric
from machine_helper import FakeMachines, call, wait_for
from partition import Partition, spare_uid

TTL = 2  # --machine-ttl, which is also the leader lease's TTL
MACHINES = ["m1", "m2", "m3", "m4"]
UNITS = {"web": 2, "api": 2, "db": 2}
_LEADER_LOG = re.compile(r"^(\S+ \S+) INFO controlplane\.controllers\.leader: \S+ (is now the leader|stopped leading)$")


def leader_changes(api: ApiServer) -> list[tuple[float, bool]]:
    """(wall-clock time, leading) of every "is now the leader" / "stopped leading" in the server's log."""
    changes = []
    for line in api.log_path.read_text(errors="replace").splitlines():
        match = _LEADER_LOG.match(line)
        if match:
            when = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            changes.append((when, match.group(2) == "is now the leader"))
    return changes


def placements(api: ApiServer) -> dict[str, tuple[str, int]]:
    status, body = call(api.url, "GET", "/api/v1/instances")
    assert status == 200, body
    return {i["metadata"]["name"]: (i["spec"]["machine"], int(i["spec"]["epoch"])) for i in body["items"]}


def settled(api: ApiServer, *, avoid: str = "") -> dict[str, tuple[str, int]] | None:
    now = placements(api)
    wanted = {f"{unit}-{n}" for unit, replicas in UNITS.items() for n in range(replicas)}
    if set(now) != wanted or any(not machine or machine == avoid for machine, _ in now.values()):
        return None
    return now


class LeaderSampler(threading.Thread):
    """Reads both servers' ``cp_leader`` every 50 ms; ``both`` counts samples where both lead."""

    def __init__(self, a: ApiServer, b: ApiServer) -> None:
        super().__init__(name="leader-sampler", daemon=True)
        self.servers = (a, b)
        self.both = 0
        self.samples = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.05):
            values = [metric(s.url, "cp_leader") for s in self.servers]
            self.samples += 1
            self.both += values == [1.0, 1.0]


def check_epochs(events: list[tuple[str, str, dict[str, Any]]]) -> dict[str, list[tuple[int, str]]]:
    """Per instance, its bindings (epoch, machine) in watch order; asserts they tell one story."""
    history: dict[str, list[tuple[int, str]]] = {}
    for _, name, obj in events:
        spec = obj.get("spec") or {}
        if spec.get("machine"):
            history.setdefault(name, []).append((int(spec["epoch"]), spec["machine"]))
    for name, bindings in history.items():
        by_epoch: dict[int, set[str]] = {}
        for epoch, machine in bindings:
            by_epoch.setdefault(epoch, set()).add(machine)
        assert all(len(m) == 1 for m in by_epoch.values()), f"{name}: one epoch, two machines: {bindings}"
        epochs = [epoch for epoch, _ in bindings]
        assert epochs == sorted(epochs), f"{name}: an epoch went down: {bindings}"
    return history


def create_units(api: ApiServer) -> None:
    for unit, replicas in UNITS.items():
        body = {"apiVersion": "v1", "kind": "Unit", "metadata": {"name": unit},
                "spec": {"image": "local/web:1", "replicas": replicas}}
        status, answer = call(api.url, "POST", "/api/v1/units", body)
        assert status == 201, answer


def test_a_leader_cut_off_from_etcd_steps_down_before_its_successor_leads(
    etcd: EtcdServer, unique_prefix: str, partition: Partition
) -> None:
    uid = spare_uid()
    with UidApiServer(uid, etcd.url, unique_prefix, machine_ttl=TTL) as a:
        wait_for(lambda: metric(a.url, "cp_leader") == 1.0, timeout=10, what="A to lead")
        with ApiServer(etcd.url, unique_prefix, machine_ttl=TTL) as b, \
                FakeMachines(b.url, MACHINES, interval=0.3) as machines, ApiWatch(b.url, "instances") as watch:
            create_units(b)
            before = wait_for(lambda: settled(b), timeout=15, what="every instance bound")
            sampler = LeaderSampler(a, b)
            sampler.start()
            cut_at = time.time()
            partition.uid_to_ports(uid, [etcd.members[0].client_port])
            machines.pause("m1")
            wait_for(lambda: metric(b.url, "cp_leader") == 1.0, timeout=TTL + 8, what="B to take over")
            after = wait_for(lambda: settled(b, avoid="m1"), timeout=TTL + 10, what="m1's instances moved")
            partition.heal()
            time.sleep(2 * TTL)  # A reconnects: anything it would still write as a leader lands now
            sampler.stop.set()
            sampler.join(5)
            assert metric(a.url, "cp_leader") == 0.0 and metric(b.url, "cp_leader") == 1.0
            _check_leadership(a, b, cut_at=cut_at, sampler=sampler)
            history = check_epochs(list(watch.events))
            for name, (machine, epoch) in before.items():
                if machine == "m1":
                    assert after[name][1] > epoch, (name, before[name], after[name], history[name])


def _check_leadership(a: ApiServer, b: ApiServer, *, cut_at: float, sampler: LeaderSampler) -> None:
    a_changes, b_changes = leader_changes(a), leader_changes(b)
    a_stop = next((t for t, leading in a_changes if not leading and t >= cut_at), None)
    b_start = next((t for t, leading in b_changes if leading), None)
    assert a_stop is not None and b_start is not None, (a_changes, b_changes, a.log_tail())
    assert a_stop < b_start, f"A stopped leading {a_stop - b_start:.2f} s after B started\n{a.log_tail()}"
    assert a_stop - cut_at < TTL, f"A led {a_stop - cut_at:.2f} s into the cut (lease TTL {TTL} s)"
    assert not [t for t, leading in a_changes if leading and t > cut_at], f"A led again: {a_changes}"
    assert sampler.samples > 20 and sampler.both == 0, (sampler.samples, sampler.both)
