"""Wire objects for the leader's planning tests, small enough to read in a table row.

``machine("m3")`` reports address 10.0.0.3; ``inst("web", 0, "m1")`` is web-0 bound to m1 at
epoch 1, Running and ready, its status reported from that binding.
"""

from __future__ import annotations

from typing import Any


def machine(name: str, *, ready: bool = True, cordoned: bool = False, **labels: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": {"unschedulable": cordoned},
        "status": {"state": "Ready" if ready else "NotReady", "address": f"10.0.0.{name[1:]}"},
    }


def unit(name: str = "web", *, replicas: int = 2, generation: int = 1, glob: bool = False,
         status: dict[str, Any] | None = None, **placement: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "generation": generation, "labels": {}},
        "spec": {"image": "local/web:1", "replicas": replicas, "global": glob, "placement": placement,
                 "ports": [{"containerPort": 8080, "hostPort": 0, "protocol": "tcp"}]},
        "status": status or {},
    }


def inst(u: str, index: int, on: str, *, epoch: int = 1, phase: str = "Running", ready: bool = True,
         generation: int = 1, port: int = 0, **status: Any) -> dict[str, Any]:
    st: dict[str, Any] = {"phase": phase, "ready": ready, "reason": "", "message": "", "machine": on,
                          "epoch": epoch, "address": f"10.0.0.{on[1:]}" if on else "",
                          "hostPorts": [{"containerPort": 8080, "hostPort": port, "protocol": "tcp"}] if port else []}
    st.update(status)
    return {
        "metadata": {"name": f"{u}-{index}", "labels": {}, "annotations": {}},
        "spec": {"unit": u, "index": index, "machine": on, "epoch": epoch, "generation": generation},
        "status": st,
    }


def names(machines: list[dict[str, Any]]) -> set[str]:
    return {m["metadata"]["name"] for m in machines}


M4 = [machine("m1"), machine("m2"), machine("m3"), machine("m4")]
ALL4 = names(M4)
