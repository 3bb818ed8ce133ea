"""What one proxy routes: its spec, the routes read from Units and Endpoints, and which are kept.

Why this module exists: which routes a proxy serves is a decision, and a dropped route must be
said, with its reason, rather than silently missing from the config (one bad service must never
block the others, nor vanish without a word). Everything here is PURE; render.py turns a
:class:`RouteChoice` into nginx text, the proxy manager logs and reports what was dropped.

* loadbalancer: the route of ``spec.proxy.target`` is kept (an empty one when there is none);
  any other route, and a second route for the target, is dropped.
* edge: a route is dropped when its unit name or ``expose.host`` is not a DNS label, when it has
  no host, when ``expose.port`` is out of range, or when an earlier unit (by name) has its host.
* in every kept route, endpoints that are not an IP literal with a port in 1-65535 are skipped
  (and reported); the rest are deduplicated and sorted.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from controlplane.model import DEFAULT_PROXY_PORT, PROXY_KINDS

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")

ProxyKind = Literal["loadbalancer", "edge"]


class InvalidProxySpec(ValueError):
    """The proxy unit's own spec cannot be rendered at all (bad kind, port, domain, target)."""


@dataclass(frozen=True, order=True)
class Endpoint:
    """One ready instance's published ``address:port`` (an item of an Endpoints object)."""

    address: str
    port: int
    instance: str = ""
    machine: str = ""


@dataclass(frozen=True)
class Route:
    """A unit the proxy may send traffic to.

    ``host`` is the unit's ``spec.expose.host`` (edge proxies only); ``port`` its
    ``spec.expose.port`` (informational, validated when given).
    """

    unit: str
    endpoints: tuple[Endpoint, ...] = ()
    host: str | None = None
    port: int | None = None


@dataclass(frozen=True)
class ProxySpec:
    """A unit's ``spec.proxy``: ``kind``, ``port``, and ``target`` (loadbalancer) or ``domain`` (edge)."""

    kind: ProxyKind
    port: int
    target: str | None = None
    domain: str | None = None

    @classmethod
    def from_unit(cls, unit: Mapping[str, Any]) -> ProxySpec:
        """Build from a Unit object (``spec.proxy``); raises :class:`InvalidProxySpec`."""
        spec = unit.get("spec") or {}
        proxy = spec.get("proxy")
        if not isinstance(proxy, Mapping):
            raise InvalidProxySpec("unit has no spec.proxy")
        kind = proxy.get("kind")
        if kind not in PROXY_KINDS:
            raise InvalidProxySpec(f"spec.proxy.kind: unsupported kind {kind!r}")
        port = proxy.get("port", DEFAULT_PROXY_PORT)
        if not isinstance(port, int) or isinstance(port, bool):
            raise InvalidProxySpec(f"spec.proxy.port: not an integer: {port!r}")
        return cls(kind=kind, port=port, target=proxy.get("target"), domain=proxy.get("domain"))


class DroppedRoute(NamedTuple):
    """A route the proxy does not serve, and why."""

    route: Route
    reason: str


class SkippedEndpoint(NamedTuple):
    """An endpoint of a kept route that the proxy does not send to, and why."""

    route: Route
    endpoint: Endpoint
    reason: str


@dataclass(frozen=True)
class RouteChoice:
    """``kept``: the routes served, in config order, each with only its usable endpoints (valid,
    deduplicated, sorted); a loadbalancer keeps exactly one. ``dropped`` and ``skipped_endpoints``
    in the order the routes were considered (by unit name)."""

    kept: tuple[Route, ...]
    dropped: tuple[DroppedRoute, ...] = ()
    skipped_endpoints: tuple[SkippedEndpoint, ...] = ()


# ---------------------------------------------------------------- wire format helpers


def endpoints_from_object(obj: Mapping[str, Any]) -> tuple[Endpoint, ...]:
    """Parse an Endpoints object::

        {"metadata": {"name": "web"},
         "endpoints": [{"address": "127.0.1.2", "port": 32768, "instance": "web-0", "machine": "m2"}]}

    Malformed items (missing address, non-integer port) are skipped here; range and
    address checks happen in :func:`choose_routes` so they are reported.
    """
    out: list[Endpoint] = []
    items = obj.get("endpoints") or []
    if not isinstance(items, list):
        return ()
    for item in items:
        if not isinstance(item, Mapping):
            continue
        address, port = item.get("address"), item.get("port")
        if not isinstance(address, str) or not isinstance(port, int) or isinstance(port, bool):
            continue
        out.append(
            Endpoint(
                address=address,
                port=port,
                instance=str(item.get("instance") or ""),
                machine=str(item.get("machine") or ""),
            )
        )
    return tuple(out)


def routes_for(
    proxy: ProxySpec,
    units: Iterable[Mapping[str, Any]],
    endpoints: Mapping[str, Mapping[str, Any]],
) -> list[Route]:
    """The routes a proxy needs, from Unit objects and Endpoints objects (keyed by unit name).

    loadbalancer: one route for ``proxy.target`` (with no endpoints if its Endpoints
    object is missing). edge: one route per unit carrying ``spec.expose``.
    """

    def eps(name: str) -> tuple[Endpoint, ...]:
        obj = endpoints.get(name)
        return endpoints_from_object(obj) if obj is not None else ()

    if proxy.kind == "loadbalancer":
        return [Route(unit=proxy.target or "", endpoints=eps(proxy.target or ""))]
    routes: list[Route] = []
    for unit in units:
        name = (unit.get("metadata") or {}).get("name")
        expose = (unit.get("spec") or {}).get("expose")
        if not isinstance(name, str) or not isinstance(expose, Mapping):
            continue
        host = expose.get("host")
        port = expose.get("port")
        routes.append(
            Route(
                unit=name,
                endpoints=eps(name),
                host=host if isinstance(host, str) else repr(host),
                port=port if isinstance(port, int) else None,
            )
        )
    return routes


# ---------------------------------------------------------------- validation


def valid_port(port: object) -> bool:
    return isinstance(port, int) and not isinstance(port, bool) and 1 <= port <= 65535


def valid_domain(domain: str) -> bool:
    if not domain or len(domain) > 253:
        return False
    return all(len(label) <= 63 and _DNS_LABEL.match(label) for label in domain.split("."))


def valid_label(name: str) -> bool:
    return len(name) <= 63 and bool(_DNS_LABEL.match(name))


def server_address(ep: Endpoint) -> str:
    """``ip:port`` as nginx's ``server`` wants it (IPv6 in brackets, addresses normalised)."""
    ip = ipaddress.ip_address(ep.address)
    return f"[{ip.compressed}]:{ep.port}" if ip.version == 6 else f"{ip.compressed}:{ep.port}"


def _endpoint_problem(ep: Endpoint) -> str | None:
    try:
        ipaddress.ip_address(ep.address)
    except ValueError:
        return f"address {ep.address!r} is not an IP address"
    if not valid_port(ep.port):
        return f"port {ep.port!r} out of range 1-65535"
    return None


def _route_problem(route: Route, *, need_host: bool) -> str | None:
    if not valid_label(route.unit):
        return f"unit name {route.unit!r} is not a DNS-1123 label"
    if need_host:
        if route.host is None:
            return "no expose.host"
        if not valid_label(route.host):
            return f"expose.host {route.host!r} is not a DNS label"
    if route.port is not None and not valid_port(route.port):
        return f"expose.port {route.port!r} out of range 1-65535"
    return None


def _route_key(route: Route) -> tuple[str, str, int]:
    return (route.unit, route.host or "", route.port or 0)


# ---------------------------------------------------------------- the choice


def choose_routes(proxy: ProxySpec, routes: Iterable[Route]) -> RouteChoice:
    """The routes ``proxy`` serves and those it drops, with reasons (the module docstring's rules).

    Deterministic whatever the order of ``routes`` and of their endpoints."""
    dropped: list[DroppedRoute] = []
    skipped: list[SkippedEndpoint] = []
    if proxy.kind == "loadbalancer":
        kept = [_choose_target(proxy, sorted(routes, key=_route_key), dropped)]
    else:
        kept = _choose_hosts(proxy, sorted(routes, key=_route_key), dropped)
    usable = tuple(_usable_endpoints(route, skipped) for route in kept)
    if proxy.kind != "loadbalancer":
        usable = tuple(sorted(usable, key=lambda r: (r.host or "", r.unit)))
    return RouteChoice(kept=usable, dropped=tuple(dropped), skipped_endpoints=tuple(skipped))


def _choose_target(proxy: ProxySpec, routes: list[Route], dropped: list[DroppedRoute]) -> Route:
    chosen: Route | None = None
    for route in routes:
        if route.unit != proxy.target:
            dropped.append(DroppedRoute(route, f"not the target unit {proxy.target!r} of this loadbalancer"))
        elif chosen is not None:
            dropped.append(DroppedRoute(route, "duplicate route for the target unit"))
        else:
            chosen = route
    return chosen or Route(unit=proxy.target or "")


def _choose_hosts(proxy: ProxySpec, routes: list[Route], dropped: list[DroppedRoute]) -> list[Route]:
    hosts: dict[str, str] = {}
    kept: list[Route] = []
    for route in routes:
        problem = _route_problem(route, need_host=True)
        if problem is None and route.host in hosts:
            problem = f"host {route.host}.{proxy.domain} already routed to unit {hosts[route.host]!r}"
        if problem:
            dropped.append(DroppedRoute(route, problem))
            continue
        assert route.host is not None
        hosts[route.host] = route.unit
        kept.append(route)
    return kept


def _usable_endpoints(route: Route, skipped: list[SkippedEndpoint]) -> Route:
    good: dict[tuple[str, int], Endpoint] = {}
    for ep in route.endpoints:
        problem = _endpoint_problem(ep)
        if problem:
            skipped.append(SkippedEndpoint(route, ep, problem))
            continue
        good.setdefault((server_address(ep), ep.port), ep)
    return dataclasses.replace(route, endpoints=tuple(good[k] for k in sorted(good)))
