"""cp-agent's discovery flags (``--cluster-domain``, ``--service-cidr``, ``--dns-upstream``), checked,
and the plug-in opened from them: kept apart so agent/main.py only wires.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass

from agent.discovery.dnsserver import host_resolvers
from agent.discovery.plugin import Discovery
from agent.discovery.table import check_network, normalise_name, resolver_address, valid_label
from controlplane.client import Client

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DiscoverySettings:
    domain: str
    network: ipaddress.IPv4Network
    upstreams: tuple[str, ...] = ()  # () = the host's /etc/resolv.conf


def parse_service_cidr(cidr: str, *, domain: str, upstreams: str = "") -> DiscoverySettings | None:
    """The settings, or None for ``--service-cidr off``; ValueError says what is wrong."""
    if cidr.strip().lower() in ("off", "none", ""):
        return None
    try:
        network = ipaddress.ip_network(cidr.strip(), strict=True)
    except ValueError as err:
        raise ValueError(f"--service-cidr {cidr!r}: {err}") from None
    if not isinstance(network, ipaddress.IPv4Network):
        raise ValueError(f"--service-cidr {cidr!r}: only IPv4 networks")
    check_network(network)
    name = normalise_name(domain)
    if not name or len(name) > 200 or not all(valid_label(label) for label in name.split(".")):
        raise ValueError(f"--cluster-domain {domain!r}: not a DNS name of lowercase labels")
    resolvers: list[str] = []
    for item in (part.strip() for part in upstreams.split(",")):
        if item:
            resolvers.append(str(ipaddress.ip_address(item)))
    return DiscoverySettings(domain=name, network=network, upstreams=tuple(resolvers))


async def open_discovery(client: Client, settings: DiscoverySettings | None, *, docker: str) -> Discovery | None:
    """The started plug-in, or None when off here (its reason logged)."""
    if settings is None:
        return None
    if docker.startswith("ssh://"):
        log.info("service discovery off: the containers run on the remote Docker host %s, which cannot "
                 "reach this agent's resolver (run an agent on that host instead; docs/discovery.md)", docker)
        return None
    upstreams = settings.upstreams or tuple(host_resolvers(exclude=(resolver_address(settings.network),)))
    plugin = Discovery(client, domain=settings.domain, network=settings.network, upstreams=upstreams)
    return plugin if await plugin.start() else None
