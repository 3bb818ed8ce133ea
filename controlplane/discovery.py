"""The stable name of a unit (``<unit>.<cluster domain>``), shared by the agent that answers it
and by ``cpctl describe`` that shows it and where it leads (docs/discovery.md).

PURE, and imports nothing of the project, so the CLI and the agent can both use it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

DEFAULT_CLUSTER_DOMAIN = "cp.internal"
CLUSTER_DOMAIN_ENV = "CP_CLUSTER_DOMAIN"  # what cpctl describe shows, when the cluster uses another domain


def cluster_domain() -> str:
    """The domain cpctl shows names in: ``$CP_CLUSTER_DOMAIN``, else the agents' default."""
    return (os.environ.get(CLUSTER_DOMAIN_ENV) or DEFAULT_CLUSTER_DOMAIN).strip(".").lower()


def service_name(unit: str, domain: str = DEFAULT_CLUSTER_DOMAIN) -> str:
    return f"{unit}.{domain.strip('.')}"


def service_ports(unit: Mapping[str, Any]) -> tuple[int, ...]:
    """The TCP container ports a unit's name forwards: ``spec.ports`` (tcp), and a proxy unit's port."""
    spec = unit.get("spec") or {}
    ports: set[int] = set()
    for port in spec.get("ports") or []:
        if isinstance(port, Mapping) and str(port.get("protocol") or "tcp").lower() == "tcp":
            number = port.get("containerPort")
            if isinstance(number, int) and not isinstance(number, bool) and 1 <= number <= 65535:
                ports.add(number)
    proxy = spec.get("proxy")
    if isinstance(proxy, Mapping):
        number = proxy.get("port", 80)
        if isinstance(number, int) and not isinstance(number, bool) and 1 <= number <= 65535:
            ports.add(number)
    return tuple(sorted(ports))


def service_lines(unit: Mapping[str, Any], endpoints: Mapping[str, Any] | None, *,
                  domain: str = DEFAULT_CLUSTER_DOMAIN) -> list[str]:
    """``cpctl describe unit``'s Service section: the stable name per port and the ready
    endpoints it currently leads to (instance, machine, host address)."""
    name = str((unit.get("metadata") or {}).get("name") or "")
    ports = service_ports(unit)
    items = [e for e in ((endpoints or {}).get("endpoints") or []) if isinstance(e, Mapping)]
    lines = [f"  Name:     {service_name(name, domain)}"]
    if not ports:
        lines.append("  Ports:    <none> (the unit publishes no TCP port)")
        return lines
    for port in ports:
        leads = [e for e in items if e.get("containerPort") in (None, port)]
        lines.append(f"  tcp/{port}: {service_name(name, domain)}:{port} -> "
                     + (f"{len(leads)} ready" if leads else "no ready instance"))
        for e in sorted(leads, key=lambda e: (str(e.get("instance")), str(e.get("address")))):
            lines.append(f"    {e.get('instance') or '?'} on {e.get('machine') or '?'}"
                         f" at {e.get('address')}:{e.get('port')}")
    return lines
