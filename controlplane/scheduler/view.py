"""What the scheduler sees: small frozen views of the wire dicts.

Objects arrive as plain dicts in the wire format (CONTRACT.md). Parsing each one once per pass
into a frozen dataclass keeps the reading of defaults in one place (missing ``placement.spread``
is ``model.DEFAULT_SPREAD``, missing resources are 0, missing capacity is unlimited) and keeps
the filters free of ``.get`` chains. The indexes built from these views live in ``state.py``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from controlplane.model import DEFAULT_PROTOCOL, DEFAULT_REPLICAS, DEFAULT_SPREAD

HostPort = tuple[int, str]


_EMPTY: Mapping[str, Any] = {}  # read only


def _dict(value: Any) -> Mapping[str, Any]:
    # a plain dict first: ``isinstance`` against the Mapping ABC costs as much again, and every
    # pass parses every object (10,000 instances are 30,000 calls)
    return value if type(value) is dict or isinstance(value, Mapping) else _EMPTY


def _float(value: Any, default: float) -> float:
    if value is None or value == "":
        return default
    return float(value)


@dataclass(frozen=True, slots=True)
class MachineView:
    name: str
    labels: Mapping[str, str]
    ready: bool
    schedulable: bool
    cpu: float  # capacity; math.inf when the machine reports none
    memory_mb: float

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> MachineView:
        meta, spec, status = _dict(obj.get("metadata")), _dict(obj.get("spec")), _dict(obj.get("status"))
        capacity = _dict(status.get("capacity"))
        return cls(
            name=str(meta.get("name", "")),
            labels={str(k): str(v) for k, v in _dict(meta.get("labels")).items()},
            ready=status.get("state") == "Ready",
            schedulable=not bool(spec.get("unschedulable", False)),
            cpu=_float(capacity.get("cpu"), math.inf),
            memory_mb=_float(capacity.get("memoryMB"), math.inf),
        )


@dataclass(frozen=True, slots=True)
class UnitView:
    name: str
    replicas: int = DEFAULT_REPLICAS
    is_global: bool = False
    spread: str = DEFAULT_SPREAD
    conflicts: tuple[str, ...] = ()
    # keys sorted, values in the user's order: keys ANDed, values ORed
    machine_metadata: tuple[tuple[str, tuple[str, ...]], ...] = ()
    machine_of: str = ""
    machine: str = ""
    cpu: float = 0.0
    memory_mb: float = 0.0
    host_ports: tuple[HostPort, ...] = ()  # non-zero hostPorts only
    generation: int = 0

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> UnitView:
        meta, spec = _dict(obj.get("metadata")), _dict(obj.get("spec"))
        placement = _dict(spec.get("placement"))
        resources = _dict(spec.get("resources"))
        metadata: list[tuple[str, tuple[str, ...]]] = []
        for key, values in sorted(_dict(placement.get("machineMetadata")).items()):
            if isinstance(values, str):
                values = [values]
            metadata.append((str(key), tuple(str(v) for v in values)))
        ports: list[HostPort] = []
        for port in spec.get("ports") or ():
            host_port = int(_dict(port).get("hostPort") or 0)
            if host_port:
                ports.append((host_port, str(_dict(port).get("protocol") or DEFAULT_PROTOCOL).lower()))
        return cls(
            name=str(meta.get("name", "")),
            replicas=int(spec["replicas"] if spec.get("replicas") is not None else DEFAULT_REPLICAS),
            is_global=bool(spec.get("global", False)),
            spread=str(placement.get("spread") or DEFAULT_SPREAD),
            conflicts=tuple(str(c) for c in placement.get("conflicts") or ()),
            machine_metadata=tuple(metadata),
            machine_of=str(placement.get("machineOf") or ""),
            machine=str(placement.get("machine") or ""),
            cpu=_float(resources.get("cpu"), 0.0),
            memory_mb=_float(resources.get("memoryMB"), 0.0),
            host_ports=tuple(sorted(set(ports))),
            generation=int(meta.get("generation") or 0),
        )


@dataclass(frozen=True, slots=True)
class InstanceView:
    name: str
    unit: str
    index: int = 0
    machine: str = ""  # "" while pending
    epoch: int = 0
    phase: str = "Pending"
    ready: bool = False
    generation: int = 0

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> InstanceView:
        meta, spec, status = _dict(obj.get("metadata")), _dict(obj.get("spec")), _dict(obj.get("status"))
        return cls(
            name=str(meta.get("name", "")),
            unit=str(spec.get("unit", "")),
            index=int(spec.get("index") or 0),
            machine=str(spec.get("machine") or ""),
            epoch=int(spec.get("epoch") or 0),
            phase=str(status.get("phase") or "Pending"),
            ready=bool(status.get("ready", False)),
            generation=int(spec.get("generation") or 0),
        )
