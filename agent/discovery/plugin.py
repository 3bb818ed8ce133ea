"""Service discovery as an agent plug-in (agent/plugin.py): ``<unit>.<domain>`` for this machine's containers.

``start`` (before the agent's loops) makes the service network local to this host (one route:
``ip route replace local NETWORK dev lo``, so every address in it can be bound without adding
each one), then opens the resolver on the network's first address. The plug-in then
- shapes every bridge-networked container to use that resolver (and the cluster domain as its
  search domain);
- follows Units and Endpoints (list+watch through the API, what the node token may read) and on
  every change rebuilds the service table, which the resolver and the forwarder read at once;
- keeps one forwarder socket per unit's (virtual address, container port).
If the route or the resolver cannot be had (not root, the address taken by another agent on this
host), discovery is off for this agent, said once in its log, and containers keep the host's DNS.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from agent.discovery.dnsserver import DNSServer, Resolver
from agent.discovery.forwarder import Forwarder
from agent.discovery.table import ServiceTable, build_table, check_network, resolver_address
from agent.reconcile import DesiredInstance
from controlplane.client import Client
from controlplane.mirror import mirror
from controlplane.model import Instance, InstanceStatus

log = logging.getLogger(__name__)


async def _ip(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec("ip", *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    return int(proc.returncode or 0), out.decode(errors="replace").strip()


class Discovery:
    """The plug-in. ``network`` is this agent's service network (``--service-cidr``)."""

    def __init__(self, client: Client, *, domain: str, network: ipaddress.IPv4Network,
                 upstreams: Sequence[str], dns_port: int = 53, manage_route: bool = True) -> None:
        check_network(network)
        self.client = client
        self.domain = domain
        self.network = network
        self.address = resolver_address(network)
        self.units: dict[str, dict[str, Any]] = {}
        self.endpoints: dict[str, dict[str, Any]] = {}
        self.table = ServiceTable(domain=domain)
        self.resolver = Resolver(lambda: self.table, upstreams=upstreams)
        self.dns = DNSServer(self.resolver, self.address, port=dns_port)
        self.forwarder = Forwarder(lambda: self.table)
        self.manage_route = manage_route
        self.enabled = False
        self.route_added = False
        self.changed = asyncio.Event()

    async def start(self) -> bool:
        """Route and resolver; False (and a warning) when discovery cannot run here."""
        if self.manage_route:
            code, out = await _ip("route", "replace", "local", str(self.network), "dev", "lo")
            if code != 0:
                log.warning("service discovery off: cannot route %s locally (ip route: %s)", self.network, out)
                return False
            self.route_added = True
        try:
            await self.dns.start()
        except OSError as err:
            log.warning("service discovery off: resolver cannot listen on %s:%d: %s (another agent on "
                        "this host with the same --service-cidr?)", self.address, self.dns.port, err)
            self.route_added = False  # the route may be the other agent's: leave it
            return False
        self.enabled = True
        log.info("service discovery: *.%s on %s, virtual addresses in %s", self.domain, self.address, self.network)
        return True

    async def close(self) -> None:
        await self.forwarder.close()
        await self.dns.close()
        if self.route_added:
            await _ip("route", "del", "local", str(self.network), "dev", "lo")
            self.route_added = False

    # ---- the agent plug-in interface ----
    def shape(self, desired: Sequence[DesiredInstance], instances: Mapping[str, Instance]) -> list[DesiredInstance]:
        if not self.enabled:
            return list(desired)
        return [dataclasses.replace(d, dns=(self.address,), dns_search=(self.domain,)) if d.network == "" else d
                for d in desired]

    def container_changed(self, instance: str, container_id: str) -> None:
        return None

    def status_fields(self, instance: str, status: InstanceStatus) -> InstanceStatus:
        return {}

    def rebuild(self) -> None:
        self.table = build_table(self.units.values(), self.endpoints, domain=self.domain, network=self.network)
        self.changed.set()

    async def _keep_listeners(self) -> None:
        while True:
            await self.changed.wait()
            self.changed.clear()
            await self.forwarder.reconcile(self.table.listeners())

    async def run(self) -> None:
        if not self.enabled:
            await asyncio.Event().wait()  # nothing to follow; run until the agent stops
        try:
            await asyncio.gather(mirror(self.client, "units", self.units, on_change=self.rebuild),
                                 mirror(self.client, "endpoints", self.endpoints, on_change=self.rebuild),
                                 self._keep_listeners())
        finally:
            with contextlib.suppress(Exception):
                await self.close()
