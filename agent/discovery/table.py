"""What the agent's resolver and forwarder know: each unit's virtual address, ports and ready backends.

PURE (no I/O, no clock): the plug-in (agent/discovery/plugin.py) rebuilds a :class:`ServiceTable`
from the Units and Endpoints it watches, the DNS server asks :func:`decide` what to answer, and
the forwarder asks :func:`backend_order` which backends to try, in which order.

Virtual addresses: a unit's address is ``network + slot``, its slot derived from its name (a
hash over the network's usable slots) and made unique by probing: units claim slots in creation
order (oldest first), so an existing unit keeps its slot when another unit is created. Every
agent derives the same slots from the same Units; no allocation is stored. The first slot of
the network (``.1``) is the resolver's own address.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from controlplane.discovery import service_ports

_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
FIRST_SLOT = 2  # .0 is the network, .1 the resolver
MIN_PREFIX_SLOTS = 4
ANSWER_TTL = 5  # seconds; the address of a unit is stable, only deletion frees it


@dataclass(frozen=True, order=True)
class Backend:
    """One ready instance's published ``address:port`` for one container port."""

    address: str
    port: int
    instance: str = ""


@dataclass(frozen=True)
class ServiceTable:
    domain: str
    addresses: Mapping[str, str] = field(default_factory=dict)  # unit -> virtual IPv4 address
    ports: Mapping[str, tuple[int, ...]] = field(default_factory=dict)  # unit -> TCP container ports
    backends: Mapping[tuple[str, int], tuple[Backend, ...]] = field(default_factory=dict)  # (unit, port)

    def listeners(self) -> dict[tuple[str, int], tuple[str, int]]:
        """(virtual address, port) -> (unit, port): every socket the forwarder must hold."""
        return {(self.addresses[unit], port): (unit, port)
                for unit, ports in self.ports.items() if unit in self.addresses for port in ports}


def resolver_address(network: ipaddress.IPv4Network) -> str:
    return str(network.network_address + 1)


def check_network(network: ipaddress.IPv4Network) -> None:
    if network.num_addresses < MIN_PREFIX_SLOTS + FIRST_SLOT:
        raise ValueError(f"service network {network} is too small (at least a /29)")


def _slot_count(network: ipaddress.IPv4Network) -> int:
    return network.num_addresses - FIRST_SLOT - 1  # no broadcast address


def _home_slot(name: str, count: int) -> int:
    digest = hashlib.sha256(name.encode()).digest()
    return int.from_bytes(digest[:8], "big") % count


def assign_slots(units: Iterable[Mapping[str, Any]], network: ipaddress.IPv4Network) -> dict[str, str]:
    """unit name -> virtual address. Oldest unit first (creationTimestamp, then uid and name);
    a unit whose home slot is taken probes the next ones. Units beyond the network's size get none."""
    count = _slot_count(network)
    ordered = sorted(
        ((str(m.get("creationTimestamp") or ""), str(m.get("uid") or ""), str(m.get("name") or ""))
         for m in ((u.get("metadata") or {}) for u in units)),
    )
    taken: set[int] = set()
    result: dict[str, str] = {}
    for _created, _uid, name in ordered:
        if not name or name in result or len(taken) >= count:
            continue
        slot = _home_slot(name, count)
        while slot in taken:
            slot = (slot + 1) % count
        taken.add(slot)
        result[name] = str(network.network_address + FIRST_SLOT + slot)
    return result


def _backends(obj: Mapping[str, Any] | None, port: int, *, only_port: bool) -> tuple[Backend, ...]:
    found: set[Backend] = set()
    for item in (obj or {}).get("endpoints") or []:
        if not isinstance(item, Mapping):
            continue
        address, host_port = item.get("address"), item.get("port")
        cport = item.get("containerPort")
        if cport != port and not (cport is None and only_port):
            continue
        if not isinstance(host_port, int) or isinstance(host_port, bool) or not 1 <= host_port <= 65535:
            continue
        try:
            ip = ipaddress.ip_address(str(address))
        except ValueError:
            continue
        found.add(Backend(ip.compressed, host_port, str(item.get("instance") or "")))
    return tuple(sorted(found))


def build_table(units: Iterable[Mapping[str, Any]], endpoints: Mapping[str, Mapping[str, Any]], *,
                domain: str, network: ipaddress.IPv4Network) -> ServiceTable:
    """The table for these Units and Endpoints objects (the latter keyed by unit name)."""
    unit_list = [u for u in units if valid_label(str((u.get("metadata") or {}).get("name") or ""))]
    ports = {str(u["metadata"]["name"]): service_ports(u) for u in unit_list}
    backends = {(unit, port): _backends(endpoints.get(unit), port, only_port=len(unit_ports) == 1)
                for unit, unit_ports in ports.items() for port in unit_ports}
    return ServiceTable(domain=normalise_name(domain), addresses=assign_slots(unit_list, network),
                        ports=ports, backends=backends)


# ---------------------------------------------------------------- DNS answers

AnswerKind = Literal["address", "nodata", "nxdomain", "forward", "refused"]


@dataclass(frozen=True)
class Decision:
    """What to answer: ``address`` (A records), ``nodata`` (the name exists, not this type),
    ``nxdomain``, ``forward`` (not ours: ask the host's resolvers), ``refused`` (malformed)."""

    kind: AnswerKind
    addresses: tuple[str, ...] = ()
    ttl: int = ANSWER_TTL


def valid_label(name: str) -> bool:
    return len(name) <= 63 and bool(_LABEL.match(name))


def normalise_name(name: str) -> str:
    return name.strip().rstrip(".").lower()


def decide(table: ServiceTable, qname: str, qtype: str) -> Decision:
    """The answer to one question. Names in the cluster domain are answered from the table only
    (``<unit>.<domain>``: its virtual address for A and ANY; nothing else exists there); names
    outside it are forwarded; a name that is not a well-formed host name is refused."""
    name = normalise_name(qname)
    if not name or len(name) > 253 or not all(0 < len(label) <= 63 for label in name.split(".")):
        return Decision("refused")
    domain = table.domain
    if name != domain and not name.endswith("." + domain):
        return Decision("forward")
    if name == domain:
        return Decision("nodata")
    head = name[: -len(domain) - 1]
    if "." in head or not valid_label(head) or head not in table.addresses:
        return Decision("nxdomain")
    if qtype in ("A", "ANY"):
        return Decision("address", (table.addresses[head],))
    return Decision("nodata")


# ---------------------------------------------------------------- backend choice


def backend_order(backends: Sequence[Backend], turn: int, *, suspect: Mapping[Backend, float] | None = None,
                  now: float = 0.0) -> list[Backend]:
    """The backends to try for one connection, in order: round robin from ``turn``, backends that
    failed lately (``suspect``: backend -> until when) after the others, so a dead one is tried
    last rather than never (it may be the only one)."""
    if not backends:
        return []
    start = turn % len(backends)
    rotated = [*backends[start:], *backends[:start]]
    suspect = suspect or {}
    return sorted(rotated, key=lambda b: suspect.get(b, 0.0) > now)
