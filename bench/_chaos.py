"""The parts of bench/chaos.py: the cluster it breaks, an API getter that fails over, the unit
churn that records every acknowledged write, and one injector per fault.

The cluster: 3 etcd members, 2 cp-apiservers (one leads), 4 real agents on the host's Docker
(tests/faults/agent_scenario.FaultCluster, machines 127.0.1.1-4) that know both servers, and the
seed scenario (web x2, web-lb x2, edge on every machine). Each injector breaks one thing, heals
it, and returns when it healed; bench/chaos.py then checks the invariants.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import random
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parents[1] / "tests"
for folder in (TESTS, TESTS / "faults"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from agent_partition import AgentPartition, Direction  # noqa: E402
from agent_scenario import SERVED, FaultCluster, start_scenario, wait_converged, wait_until  # noqa: E402
from apiserver_fixture import ApiServer  # noqa: E402
from etcd_fixture import EtcdCluster  # noqa: E402
from fault_servers import metric  # noqa: E402
from fault_watch import DockerSampler, RunningCopy, running_by_instance, running_copies  # noqa: E402

TOKEN = "admin-token"


class Api:
    """REST calls to the first API server that answers (a 503 or no answer: the next one)."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls

    def call(self, method: str, path: str, body: Any = None, *, timeout: float = 3.0) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        last: Exception | None = None
        for url in self.urls:
            request = urllib.request.Request(url + path, data=data, method=method, headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=timeout) as resp:
                    raw = resp.read()
                    return resp.status, json.loads(raw) if raw else None
            except urllib.error.HTTPError as err:
                if err.code == 503:
                    last = err
                    continue
                return err.code, None
            except (OSError, ValueError, http.client.HTTPException) as err:  # no answer, or cut short
                last = err
        raise ConnectionError(f"no API server answered {method} {path}: {last}")

    def get(self, path: str) -> Any:
        full = path if path.startswith("/") else f"/api/v1/{path}"
        code, obj = self.call("GET", full)
        if code != 200:
            raise ConnectionError(f"GET {full}: {code}")
        return obj


@dataclass
class Rig:
    etcd: EtcdCluster
    apis: list[ApiServer]
    cluster: FaultCluster
    api: Api
    edge_port: int
    entry: str  # the machine whose edge the load goes through (never partitioned)
    sampler: DockerSampler
    fences: list[float] = field(default_factory=list)  # per partition: cut -> the machine ran nothing

    def docker(self) -> dict[str, str]:
        """Instance -> its running container, from Docker (statuses must name these)."""
        return running_by_instance(self.cluster.cluster, socket_path=self.sampler.socket_path)


@contextlib.contextmanager
def chaos_rig(ttl: int) -> Iterator[Rig]:
    prefix = f"/cp-chaos/{uuid.uuid4().hex[:8]}"
    with EtcdCluster(n=3) as etcd:
        c = FaultCluster(etcd.url, prefix, machines=4, machine_ttl=ttl)
        with ApiServer(etcd.url, prefix, machine_ttl=ttl) as second:
            c.agent_args = ["--server", f"{c.api.url},{second.url}"]
            with c:
                port = start_scenario(c)
                api = Api([c.api.url, second.url])
                wait_converged(api.get, timeout=60, what="the scenario")
                sampler = DockerSampler(c.cluster)
                sampler.start()
                try:
                    yield Rig(etcd, [c.api, second], c, api, port, "m1", sampler)
                finally:
                    sampler.stop()


def unit_body(name: str, replicas: int) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Unit", "metadata": {"name": name},
            "spec": {"image": "local/web:latest", "replicas": replicas, "ports": [{"containerPort": 8080}]}}


class Churn(threading.Thread):
    """Creates, scales and deletes ``churn-N`` units every ``interval`` s, each write retried until
    acknowledged; ``expected`` is what the acknowledged writes left (None: deleted)."""

    def __init__(self, api: Api, rng: random.Random, *, interval: float = 2.0, max_units: int = 3) -> None:
        super().__init__(daemon=True)
        self.api, self.rng, self.interval, self.max_units = api, rng, interval, max_units
        self.expected: dict[str, int | None] = {}
        self.acked: Counter[str] = Counter()
        self.retries = 0
        self.never_acked: list[str] = []
        self.lock = threading.Lock()  # held by an op, or by pause()
        self.stopping = threading.Event()
        self.serial = 0

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            with self.lock:
                if not self.stopping.is_set():
                    try:
                        self.step()
                    except Exception as err:  # noqa: BLE001 - reported as a violation, the churn goes on
                        self.never_acked.append(f"churn step failed: {err!r}")

    def step(self) -> None:
        live = sorted(n for n, r in self.expected.items() if r is not None)
        if len(live) < self.max_units and (not live or self.rng.random() < 0.4):
            self.serial += 1
            name, replicas = f"churn-{self.serial}", self.rng.randint(1, 2)
            if self.until_acked("create", "POST", "/api/v1/units", unit_body(name, replicas), {200, 201, 409}):
                self.expected[name] = replicas
        elif self.rng.random() < 0.6:
            name, replicas = self.rng.choice(live), self.rng.randint(1, 3)
            body = {"apiVersion": "v1", "kind": "Scale", "metadata": {"name": name}, "spec": {"replicas": replicas}}
            if self.until_acked("scale", "PUT", f"/api/v1/units/{name}/scale", body, {200}):
                self.expected[name] = replicas
        else:
            name = self.rng.choice(live)
            if self.until_acked("delete", "DELETE", f"/api/v1/units/{name}", None, {200, 202, 404}):
                self.expected[name] = None

    def until_acked(self, op: str, method: str, path: str, body: Any, ok: set[int], *, within: float = 90) -> bool:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            try:
                code, _ = self.api.call(method, path, body)
            except ConnectionError:
                code = 0
            if code in ok:
                self.acked[op] += 1
                return True
            if code and code < 500 and code not in (408, 429):
                self.never_acked.append(f"{method} {path}: refused {code}")
                return False
            self.retries += 1
            time.sleep(0.5)
        self.never_acked.append(f"{method} {path}: not acknowledged within {within:g}s")
        return False

    def pause(self) -> None:
        self.lock.acquire()

    def resume(self) -> None:
        self.lock.release()

    def stop(self) -> None:
        self.stopping.set()
        self.join(120)


def write_problem(api: Api, expected: dict[str, int | None]) -> str | None:
    """None when every acknowledged write is what the API holds."""
    units = {u["metadata"]["name"]: u for u in api.get("units")["items"]}
    for name in (*SERVED, "edge"):
        if name not in units:
            return f"unit {name} is gone"
    for name, replicas in sorted(expected.items()):
        if replicas is None and name in units:
            return f"{name} was deleted (acknowledged) but is still there"
        if replicas is not None and (units.get(name) or {}).get("spec", {}).get("replicas") != replicas:
            return f"{name}: acknowledged replicas {replicas}, the API has {(units.get(name) or {}).get('spec')}"
    return None


# ---- faults: each returns (what it did, when it healed) ----
Fault = Callable[[Rig, random.Random], tuple[str, float]]


def partition(direction: Direction) -> Fault:
    def inject(rig: Rig, rng: random.Random) -> tuple[str, float]:
        c = rig.cluster
        victim = rng.choice([m for m in c.names if m != rig.entry])
        ran = sorted(x.instance for x in running_copies(rig.sampler.socket_path, c.cluster) if x.machine == victim)
        cuts = [AgentPartition(c.address(victim), api.port, direction) for api in rig.apis]
        cut_at = time.monotonic()
        try:
            for cut in cuts:
                cut.cut()
            fenced = wait_until(lambda: not_running_on(rig, victim, cut_at), timeout=c.api.machine_ttl + 15,
                                what=f"{victim} to fence", interval=0.1)
            wait_converged(rig.api.get, units={"web": 2, "web-lb": 2}, running=rig.docker, timeout=60,
                           what=f"web and web-lb to run without {victim}")
        finally:
            for cut in cuts:
                cut.heal()
        rig.fences.append(fenced - cut_at)
        return (f"{victim} cut {direction} ({len(ran)} running: {', '.join(ran)}), all stopped "
                f"+{fenced - cut_at:.1f}s", time.monotonic())
    return inject


def not_running_on(rig: Rig, machine: str, since: float) -> float | None:
    samples = rig.sampler.since(since)
    if samples and not any(copy.machine == machine for copy in samples[-1].running):
        return samples[-1].at
    return None


def agent_kill(rig: Rig, rng: random.Random) -> tuple[str, float]:
    machine = rng.choice(rig.cluster.names)
    rig.cluster.kill_agent(machine)
    down = rng.uniform(0.0, 1.0)
    time.sleep(down)
    rig.cluster.start_agent(machine)
    return f"{machine}'s agent SIGKILLed, started {down:.1f}s later", time.monotonic()


def container_kill(rig: Rig, rng: random.Random) -> tuple[str, float]:
    """Healed when the instance runs again (restarted by its agent, per its Always policy)."""
    victim = rng.choice(running_copies(rig.sampler.socket_path, rig.cluster.cluster))
    subprocess.run(["docker", "kill", victim.container], capture_output=True, check=False)
    killed_at = time.monotonic()
    wait_until(lambda: gone_since(rig, victim, killed_at), timeout=10, what=f"{victim.instance} to die")
    died_at = time.monotonic()
    back = wait_until(lambda: running_since(rig, victim.instance, died_at), timeout=30,
                      what=f"{victim.instance} to run again", interval=0.1)
    return f"container of {victim.instance} on {victim.machine} killed, back +{back - killed_at:.1f}s", back


def gone_since(rig: Rig, copy: RunningCopy, since: float) -> bool:
    samples = rig.sampler.since(since)
    return bool(samples) and copy not in samples[-1].running


def running_since(rig: Rig, instance: str, since: float) -> float | None:
    """The first sample after ``since`` in which ``instance`` runs."""
    return next((s.at for s in rig.sampler.since(since) if any(c.instance == instance for c in s.running)), None)


def etcd_member(rig: Rig, rng: random.Random) -> tuple[str, float]:
    index = rng.randrange(len(rig.etcd.members))
    rig.etcd.kill(index)
    down = rng.uniform(2.0, 5.0)
    time.sleep(down)
    rig.etcd.restart(index)
    return f"etcd member {index} SIGKILLed for {down:.1f}s", time.monotonic()


def is_leader(api: ApiServer) -> bool:
    return metric(api.url, "cp_leader", token=TOKEN) == 1.0


def leader_kill(rig: Rig, rng: random.Random) -> tuple[str, float]:
    (leader,) = wait_until(lambda: [a for a in rig.apis if is_leader(a)][:1], timeout=30, what="a leader")
    leader.kill()
    down = rng.uniform(0.5, 2.0)
    time.sleep(down)
    leader.start()
    which = rig.apis.index(leader) + 1
    return f"API server {which} (the leader) SIGKILLed, started {down:.1f}s later", time.monotonic()


FAULTS: dict[str, Fault] = {
    "partition both ways": partition("both"),
    "partition agent->API": partition("to_api"),
    "partition API->agent": partition("from_api"),
    "agent kill -9": agent_kill,
    "container kill": container_kill,
    "etcd member kill": etcd_member,
    "API leader kill -9": leader_kill,
}
