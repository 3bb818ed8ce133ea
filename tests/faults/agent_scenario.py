"""The seed scenario on a ``LocalCluster`` (tests/cluster_fixture.py), for the agent fault tests
and bench/chaos.py: real agents on real Docker serving web x2 behind web-lb x2 behind an edge on
every machine, with requests going in through one machine's edge.

    c = FaultCluster(etcd.url, prefix, machines=4, machine_ttl=3)
    with c:
        edge_port = start_scenario(c)
        url = edge_url(c, "m2", edge_port)
        wait_until(lambda: converged(c), timeout=30, what="the scenario")
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any, TypeVar

from cluster_fixture import LocalCluster

from controlplane.devproc import free_port, port_free

HOST = "someapp.mywebsite.com"
SERVED = ("web", "web-lb")  # the units the edge's traffic goes through
T = TypeVar("T")


class FaultCluster(LocalCluster):
    """A LocalCluster whose agents take free log ports and serve no /metrics: other clusters (a
    ``cpctl dev`` of the e2e tests) may use the same 127.0.1.N addresses at the same time."""

    def start_agent(self, machine: str, *, extra: list[str] | None = None) -> None:
        port = free_port(self.address(machine))
        super().start_agent(machine, extra=["--agent-port", str(port), "--metrics-listen", "off", *(extra or [])])


def edge_port_for(c: LocalCluster) -> int:
    """A port free on every machine address (the edge publishes it on each)."""
    addresses = [c.address(m) for m in c.names]
    for port in range(18400, 18600):
        if all(port_free(a, port) for a in addresses):
            return port
    raise RuntimeError("no port free on every machine address")


def cpctl_ok(c: LocalCluster, *args: str) -> str:
    proc = c.cpctl(*args)
    if proc.returncode != 0:
        raise AssertionError(f"cpctl {' '.join(args)}: exit {proc.returncode}\n{proc.stdout}{proc.stderr}\n{c.logs()}")
    return proc.stdout


def start_scenario(c: LocalCluster) -> int:
    """web (2, health-checked), web-lb (2, exposed as someapp), edge (global): the edge's port."""
    port = edge_port_for(c)
    cpctl_ok(c, "run", "web", "--image", "local/web:latest", "--replicas", "2", "--port", "8080",
             "--health-http", "/", "--timeout", "90")
    cpctl_ok(c, "run", "web-lb", "--lb", "web", "--replicas", "2", "--expose", "someapp", "--timeout", "90")
    cpctl_ok(c, "run", "edge", "--edge", "mywebsite.com", "--port", f"80:{port}", "--global", "--timeout", "90")
    return port


def edge_url(c: LocalCluster, machine: str, port: int) -> str:
    return f"http://{c.address(machine)}:{port}/"


def edge_answers(url: str, *, timeout: float = 2.0) -> bool:
    try:
        request = urllib.request.Request(url, headers={"Host": HOST})
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def placement(c: LocalCluster) -> dict[str, str]:
    """Instance name -> the machine it is bound to ("" while pending)."""
    return {i["metadata"]["name"]: i["spec"].get("machine") or "" for i in c.instances()}


def ready_machines(c: LocalCluster) -> set[str]:
    return {m["metadata"]["name"] for m in c.api_get("machines")["items"] if m["status"].get("state") == "Ready"}


def convergence_problem(c: LocalCluster, *, units: dict[str, int] | None = None) -> str | None:
    """None when every unit (its spec's replicas, or ``units``) runs exactly its replicas, each
    bound to a Ready machine, Running and ready, and no Endpoint names a machine that is not
    Ready; else what is still wrong."""
    ready = ready_machines(c)
    wanted = units or {u["metadata"]["name"]: u["spec"].get("replicas", 1) for u in c.api_get("units")["items"]
                       if not u["spec"].get("global")}
    by_unit: dict[str, list[dict[str, Any]]] = {}
    for inst in c.instances():
        by_unit.setdefault(inst["spec"]["unit"], []).append(inst)
    for unit, replicas in sorted(wanted.items()):
        names = sorted(i["metadata"]["name"] for i in by_unit.get(unit, []))
        if names != sorted(f"{unit}-{n}" for n in range(replicas)):
            return f"{unit} has instances {names}, wants {replicas}"
    for unit, items in sorted(by_unit.items()):
        for inst in items:
            machine, status = inst["spec"].get("machine"), inst.get("status") or {}
            if machine in ready and not (status.get("phase") == "Running" and status.get("ready")):
                return f"{inst['metadata']['name']} on {machine}: {status.get('phase')} ready={status.get('ready')}"
            if machine not in ready and unit in wanted:
                return f"{inst['metadata']['name']} bound to {machine!r}, not a Ready machine"
    for ep in c.api_get("endpoints")["items"]:
        stale = [e for e in ep.get("endpoints") or [] if e.get("machine") not in ready]
        if stale:
            return f"endpoints {ep['metadata']['name']} still name {stale[0].get('machine')}"
    return None


def wait_until(check: Callable[[], T], *, timeout: float, what: str, interval: float = 0.2) -> T:
    """``check()``'s first truthy answer; its exceptions count as not yet (a restarting server)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (OSError, ValueError) as err:
            last = err
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; last: {last!r}")


def converged(c: LocalCluster, *, units: dict[str, int] | None = None) -> bool:
    return convergence_problem(c, units=units) is None
