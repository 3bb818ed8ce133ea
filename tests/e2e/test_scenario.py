"""The seed scenario end to end, on a cluster that ``cpctl dev up`` starts, and ``dev`` itself.

The cluster is the real thing a user gets (etcd, cp-apiserver, four cp-agents on Docker), in a
temp state folder with its own cluster name, API port, agent port, edge port and HOME (so the
cpctl config it writes is not the user's): it cannot clash with a user's ``cpctl dev up``.

1. ``test_scenario_survives_a_machine``: web / web-lb / edge with the real cpctl commands; while a
   client requests ``someapp.mywebsite.com`` through the edge of a surviving machine every 20 ms,
   the machine running web-0 dies (agent SIGKILLed, containers removed). The instances are replaced
   elsewhere, the endpoints and every surviving proxy's nginx config stop naming the dead machine,
   and every request after that answers 200. It prints how many failed during the switch.
2. ``test_dev_status_repair_and_down``: ``dev status`` reports the dead agent (exit 1), ``dev up``
   starts it again, ``dev down`` leaves nothing behind (processes, containers, state folder,
   config), and a second ``dev down`` is a no-op.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from docker_fixture import build_local_images  # noqa: E402

from controlplane import dev as devlib  # noqa: E402

pytestmark = [pytest.mark.docker, pytest.mark.slow]

MACHINES = 4
MACHINE_TTL = 3
HOST = "someapp.mywebsite.com"


@dataclass
class DevCluster:
    home: Path
    state_dir: Path
    cluster: str
    edge_port: int

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CPCTL_", "XDG_STATE_HOME"))}
        env["HOME"] = str(self.home)
        return env

    def cpctl(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "controlplane.cli.main", *args], env=self.env(),
                              capture_output=True, text=True, timeout=timeout)

    def dev(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.cpctl("dev", *args, "--state-dir", str(self.state_dir))

    def state(self) -> devlib.DevState:
        state = devlib.DevState.load(self.state_dir)
        assert state is not None
        return state


def _edge_port() -> int:
    """A port free on every machine address (the edge publishes it on each)."""
    addresses = [devlib.machine_address(i) for i in range(1, MACHINES + 1)]
    for _ in range(50):
        port = devlib.free_port(addresses[0])
        if all(devlib.port_free(a, port) for a in addresses):
            return port
    raise RuntimeError("no port free on every machine address")


@pytest.fixture(scope="module")
def devc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    build_local_images()
    base = tmp_path_factory.mktemp("dev")
    c = DevCluster(home=base / "home", state_dir=base / "state", cluster=f"e2e{uuid.uuid4().hex[:8]}",
                   edge_port=_edge_port())
    c.home.mkdir()
    up = c.dev("up", "--machines", str(MACHINES), "--cluster", c.cluster, "--api-port", "0", "--agent-port", "0",
               "--machine-ttl", str(MACHINE_TTL))
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        yield c
    finally:
        c.dev("down")  # idempotent: the last test already did it when all went well
        devlib.remove_containers(c.cluster)


def get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers={"Host": HOST}), timeout=timeout) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as err:
        return err.code, ""
    except OSError as err:
        return 0, str(err)


class Client(threading.Thread):
    """Requests the URL every 20 ms (bounded: at most ``limit`` requests) and records each result."""

    def __init__(self, url: str, limit: int = 5000) -> None:
        super().__init__(daemon=True)
        self.url, self.limit = url, limit
        self.results: list[tuple[float, int, str]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set() and len(self.results) < self.limit:
            status, body = get(self.url)
            match = re.search(r"instance=([\w-]+)", body)
            self.results.append((time.monotonic(), status, match.group(1) if match else body[:60]))
            time.sleep(0.02)

    def stop(self) -> None:
        self.stopping.set()
        self.join(10)


def wait_for(check: Any, *, timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def proxy_configs(c: DevCluster, machine: str) -> dict[str, str]:
    root = c.state_dir / "agents" / "proxy" / c.cluster / machine
    return {p.parent.name: p.read_text() for p in root.glob("*/nginx.conf")}


def test_scenario_survives_a_machine(devc: DevCluster) -> None:
    c = devc
    for args in (
        ["run", "web", "--image", "local/web:latest", "--replicas", "2", "--port", "8080", "--health-http", "/"],
        ["run", "web-lb", "--lb", "web", "--replicas", "2", "--expose", "someapp"],
        ["run", "edge", "--edge", "mywebsite.com", "--port", f"80:{c.edge_port}", "--global"],
    ):
        proc = c.cpctl(*args, "--timeout", "60")
        assert proc.returncode == 0, f"cpctl {' '.join(args)}: {proc.stdout}{proc.stderr}"

    state = c.state()
    instances = {i["metadata"]["name"]: i for i in state.api("instances")["items"]}
    machine_of = {name: i["spec"]["machine"] for name, i in instances.items()}
    assert machine_of["web-0"] != machine_of["web-1"]
    assert machine_of["web-lb-0"] != machine_of["web-lb-1"]
    assert sorted(machine_of[f"edge-{i}"] for i in range(MACHINES)) == state.machines
    # the units cpctl made have the shapes the scenario names
    units = {u["metadata"]["name"]: u["spec"] for u in state.api("units")["items"]}
    assert units["web-lb"]["proxy"] == {"kind": "loadbalancer", "target": "web", "port": 80}
    assert units["web-lb"]["expose"]["host"] == "someapp"
    assert units["edge"]["proxy"] == {"kind": "edge", "domain": "mywebsite.com", "port": 80}
    assert units["edge"]["ports"][0]["hostPort"] == c.edge_port and units["edge"]["global"] is True

    victim = machine_of["web-0"]
    entry = next(m for m in state.machines if m != victim)
    url = f"http://{devlib.machine_address(int(entry[1:]))}:{c.edge_port}/"
    wait_for(lambda: get(url)[0] == 200, timeout=15, what=f"{url} to answer 200")
    unknown = urllib.request.Request(url, headers={"Host": "nobody.mywebsite.com"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(unknown, timeout=2)
    assert refused.value.code == 503

    client = Client(url)
    client.start()
    try:
        time.sleep(1.0)
        killed_at = time.monotonic()
        devlib.kill_machine(state, victim)

        def converged() -> bool:
            if state.machine_states().get(victim) == "Ready":
                return False
            for inst in state.api("instances")["items"]:
                spec, status = inst["spec"], inst.get("status") or {}
                if spec["unit"] in ("web", "web-lb") and (
                        spec.get("machine") in ("", victim) or status.get("phase") != "Running"
                        or not status.get("ready")):
                    return False
            if any(e.get("machine") == victim for ep in state.api("endpoints")["items"]
                   for e in ep.get("endpoints") or []):
                return False
            # every surviving proxy's live config stopped naming the dead machine's address
            dead = devlib.machine_address(int(victim[1:])) + ":"
            return all(dead not in text for m in state.machines if m != victim
                       for text in proxy_configs(c, m).values())

        wait_for(converged, timeout=MACHINE_TTL + 30, what="the cluster to replace the dead machine's instances")
        converged_at = time.monotonic()
        time.sleep(3.0)
    finally:
        client.stop()

    during = [r for r in client.results if killed_at <= r[0] <= converged_at]
    after = [r for r in client.results if r[0] > converged_at]
    failed = [r for r in during if r[1] != 200]
    print(f"\nscenario: {victim} died; converged after {converged_at - killed_at:.1f}s; "
          f"{len(failed)}/{len(during)} requests failed during the switch; "
          f"{sum(r[1] == 200 for r in after)}/{len(after)} answered 200 after")
    assert after, "the client sent nothing after convergence"
    assert [r for r in after if r[1] != 200] == [], "requests failed after convergence"
    answered = {r[2] for r in after}
    assert answered == {"web-0", "web-1"}, answered
    web0 = next(i for i in state.api("instances")["items"] if i["metadata"]["name"] == "web-0")
    assert web0["spec"]["machine"] not in ("", victim)


def test_dev_status_repair_and_down(devc: DevCluster) -> None:
    c = devc
    state = c.state()
    dead_agents = [p.name for p in state.procs if not p.alive()]
    status = c.dev("status")
    if dead_agents:  # the scenario killed one: status says so and fails
        assert status.returncode == 1 and "DEAD" in status.stdout, status.stdout
        again = c.dev("up")
        assert again.returncode == 0 and "starting again" in again.stdout, again.stdout + again.stderr
    status = c.dev("status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert status.stdout.count("alive") == MACHINES + 2
    assert status.stdout.count("Ready") == MACHINES
    already = c.dev("up")
    assert already.returncode == 0 and "already up" in already.stdout

    state = c.state()
    config = c.home / ".config" / "cpctl" / "config.yaml"
    assert config.exists() and (config.stat().st_mode & 0o777) == 0o600
    assert (c.state_dir / "tokens.csv").stat().st_mode & 0o777 == 0o600
    assert devlib.cluster_containers(c.cluster)

    down = c.dev("down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert [p.name for p in state.procs if p.alive()] == []
    for p in state.procs:  # nothing of ours left, even in another process group
        assert not Path(f"/proc/{p.pid}").exists() or not p.alive()
    assert devlib.cluster_containers(c.cluster) == []
    assert not c.state_dir.exists()
    assert not config.exists()
    assert list(c.home.rglob("*")) == [], "dev down left files or folders in HOME"
    leftovers = subprocess.run(["pgrep", "-f", str(c.state_dir)], capture_output=True, text=True).stdout.split()
    assert leftovers == []
    again = c.dev("down")
    assert again.returncode == 0 and "nothing to do" in again.stdout
