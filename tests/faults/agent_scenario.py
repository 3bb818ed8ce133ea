"""The seed scenario on a ``LocalCluster`` (tests/cluster_fixture.py), for the agent fault tests
and bench/chaos.py: real agents on real Docker serving web x2 behind web-lb x2 behind an edge on
every machine, with requests going in through one machine's edge.

    c = FaultCluster(etcd.url, prefix, machines=4, machine_ttl=3)
    with c:
        edge_port = start_scenario(c)
        url = edge_url(c, "m2", edge_port)
        wait_until(lambda: converged(c.api_get), timeout=30, what="the scenario")

The checks take a ``get(path)`` (``LocalCluster.api_get``, or bench/chaos.py's getter that fails
over between API servers) rather than the cluster, so they work while one server is down.
"""

from __future__ import annotations

import http.client
import time
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from cluster_fixture import LocalCluster

from controlplane.devproc import free_port, port_free

HOST = "someapp.mywebsite.com"
SERVED = ("web", "web-lb")  # the units the edge's traffic goes through
T = TypeVar("T")
Getter = Callable[[str], Any]  # "instances" -> the parsed GET /api/v1/instances


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
    except (OSError, http.client.HTTPException):
        return False


def placement(get: Getter) -> dict[str, str]:
    """Instance name -> the machine it is bound to ("" while pending)."""
    return {i["metadata"]["name"]: i["spec"].get("machine") or "" for i in get("instances")["items"]}


def ready_machines(get: Getter) -> set[str]:
    return {m["metadata"]["name"] for m in get("machines")["items"] if m["status"].get("state") == "Ready"}


def convergence_problem(get: Getter, *, units: dict[str, int] | None = None,
                        running: Mapping[str, str] | None = None) -> str | None:
    """None when every unit (or only ``units``, name -> replicas) runs exactly its replicas, each
    bound to a Ready machine, Running and ready, every global instance on a Ready machine is
    Running and ready, and no Endpoint names a machine that is not Ready; else what is wrong.
    With ``running`` (instance -> the short id of its one running container, from Docker) each
    such status must also name that container: a status the API holds is not just old news."""
    ready = ready_machines(get)
    specs = {u["metadata"]["name"]: u["spec"] for u in get("units")["items"]}
    everything = units is None
    wanted = units or {name: spec.get("replicas", 1) for name, spec in specs.items() if not spec.get("global")}
    by_unit: dict[str, list[dict[str, Any]]] = {}
    for inst in get("instances")["items"]:
        by_unit.setdefault(inst["spec"]["unit"], []).append(inst)
    for unit, replicas in sorted(wanted.items()):
        names = sorted(i["metadata"]["name"] for i in by_unit.get(unit, []))
        if names != sorted(f"{unit}-{n}" for n in range(replicas)):
            return f"{unit} has instances {names}, wants {replicas}"
    for unit, items in sorted(by_unit.items()):
        if unit not in wanted and not everything:
            continue
        for inst in items:
            machine, status = inst["spec"].get("machine"), inst.get("status") or {}
            if machine in ready and not (status.get("phase") == "Running" and status.get("ready")):
                return (f"{inst['metadata']['name']} on {machine}: {status.get('phase')} ready={status.get('ready')} "
                        f"{status.get('reason')}: {status.get('message')}")
            if running is not None and machine in ready and status.get("containerID", "")[:12] != running.get(
                    inst["metadata"]["name"]):
                return (f"{inst['metadata']['name']}: the status names container {status.get('containerID', '')[:12]}, "
                        f"Docker runs {running.get(inst['metadata']['name'])}")
            if machine not in ready and unit in wanted:
                return f"{inst['metadata']['name']} bound to {machine!r}, not a Ready machine"
    for ep in get("endpoints")["items"]:
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
        except (OSError, ValueError, http.client.HTTPException) as err:
            last = err
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; last: {last!r}")


def wait_converged(get: Getter, *, timeout: float, units: dict[str, int] | None = None,
                   running: Callable[[], Mapping[str, str]] | None = None, what: str = "convergence") -> None:
    """Wait until ``convergence_problem`` is None; the timeout's message says what was still wrong."""
    still = ["not asked yet"]

    def check() -> bool:
        still[0] = convergence_problem(get, units=units, running=running() if running else None) or ""
        return not still[0]

    try:
        wait_until(check, timeout=timeout, what=what)
    except AssertionError as err:
        raise AssertionError(f"{err}; still: {still[0]}") from None


def converged(get: Getter, *, units: dict[str, int] | None = None) -> bool:
    return convergence_problem(get, units=units) is None
