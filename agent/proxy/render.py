"""Render the whole nginx config of one proxy unit from its spec and its routes.

Why this module exists: the auto-subdomain proxies we replace (nginx-proxy, confd,
ingress-nginx) broke in ways that are decided at render time -- an empty ``upstream``
that makes ``nginx -t`` refuse the whole config, one bad service blocking every
other update, no way to tell which config nginx is serving. Rendering is therefore
PURE (no I/O, no clock, deterministic output for a given input) and defensive:

* a unit with no endpoint gets ``location / { return 503; }``, never an empty upstream;
* an invalid route (bad unit name, host that is not a DNS label, port out of range,
  a host already taken by another unit) is dropped and reported, the rest render;
* an invalid endpoint (not an IP literal, port out of range) is skipped and reported;
* every config carries its own hash, served on a loopback-only status server, so the
  applier can prove that nginx serves *this* config after a reload.

The config hash is well-defined: ``sha256`` (hex) of the rendered text in which every
occurrence of the hash is replaced by :data:`HASH_PLACEHOLDER`. :func:`stamp_hash`
computes it and substitutes it; :func:`verify_hash` / :func:`extract_hash` check it.

Two kinds (CONTRACT.md, ``spec.proxy``):

* ``loadbalancer``: ``listen <port>``; one upstream = the target unit's endpoints.
* ``edge``: ``listen <port>``; one ``server`` per exposed unit, ``server_name
  <expose.host>.<domain>``, proxied to that unit's endpoints; a ``default_server``
  answering 503 for unknown hosts.

Paths (pid, error log, temp folders) default to places that work inside the
``local/nginx`` container (``/tmp``); tests pass a temp folder instead.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

HASH_PLACEHOLDER = "@@CP_CONFIG_HASH@@"
HASH_MARKER = "# cp-config-hash: "
STATUS_PATH = "/__cp/config-hash"
DEFAULT_STATUS_PORT = 18999

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")

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
        if kind not in ("loadbalancer", "edge"):
            raise InvalidProxySpec(f"spec.proxy.kind: unsupported kind {kind!r}")
        port = proxy.get("port", 80)
        if not isinstance(port, int) or isinstance(port, bool):
            raise InvalidProxySpec(f"spec.proxy.port: not an integer: {port!r}")
        return cls(kind=kind, port=port, target=proxy.get("target"), domain=proxy.get("domain"))


@dataclass(frozen=True)
class RenderResult:
    text: str
    config_hash: str
    dropped: list[tuple[Route, str]] = field(default_factory=list)
    skipped_endpoints: list[tuple[Route, Endpoint, str]] = field(default_factory=list)


# ---------------------------------------------------------------- wire format helpers


def endpoints_from_object(obj: Mapping[str, Any]) -> tuple[Endpoint, ...]:
    """Parse an Endpoints object::

        {"metadata": {"name": "web"},
         "endpoints": [{"address": "127.0.1.2", "port": 32768, "instance": "web-0", "machine": "m2"}]}

    Malformed items (missing address, non-integer port) are skipped here; range and
    address checks happen in :func:`render` so they are reported.
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


# ---------------------------------------------------------------- hash


def stamp_hash(text_with_placeholder: str) -> tuple[str, str]:
    """Return ``(final_text, hash)``: the hash of the placeholder text, substituted into it."""
    digest = hashlib.sha256(text_with_placeholder.encode()).hexdigest()
    return text_with_placeholder.replace(HASH_PLACEHOLDER, digest), digest


def extract_hash(text: str) -> str | None:
    """The hash a config claims (its ``# cp-config-hash:`` line), or None."""
    for line in text.splitlines():
        if line.startswith(HASH_MARKER):
            value = line[len(HASH_MARKER) :].strip()
            return value if _HEX64.match(value) else None
    return None


def verify_hash(text: str) -> bool:
    """True when ``text`` carries a hash and that hash is the hash of its own text."""
    claimed = extract_hash(text)
    if claimed is None:
        return False
    return hashlib.sha256(text.replace(claimed, HASH_PLACEHOLDER).encode()).hexdigest() == claimed


# ---------------------------------------------------------------- validation


def _valid_port(port: object) -> bool:
    return isinstance(port, int) and not isinstance(port, bool) and 1 <= port <= 65535


def _valid_domain(domain: str) -> bool:
    if not domain or len(domain) > 253:
        return False
    return all(len(label) <= 63 and _DNS_LABEL.match(label) for label in domain.split("."))


def _valid_label(name: str) -> bool:
    return len(name) <= 63 and bool(_DNS_LABEL.match(name))


def _endpoint_problem(ep: Endpoint) -> str | None:
    try:
        ipaddress.ip_address(ep.address)
    except ValueError:
        return f"address {ep.address!r} is not an IP address"
    if not _valid_port(ep.port):
        return f"port {ep.port!r} out of range 1-65535"
    return None


def _route_problem(route: Route, *, need_host: bool) -> str | None:
    if not _valid_label(route.unit):
        return f"unit name {route.unit!r} is not a DNS-1123 label"
    if need_host:
        if route.host is None:
            return "no expose.host"
        if not _valid_label(route.host):
            return f"expose.host {route.host!r} is not a DNS label"
    if route.port is not None and not _valid_port(route.port):
        return f"expose.port {route.port!r} out of range 1-65535"
    return None


def _server_addr(ep: Endpoint) -> str:
    ip = ipaddress.ip_address(ep.address)
    return f"[{ip.compressed}]:{ep.port}" if ip.version == 6 else f"{ip.compressed}:{ep.port}"


# ---------------------------------------------------------------- render


def render(
    proxy: ProxySpec,
    routes: Iterable[Route],
    *,
    status_port: int = DEFAULT_STATUS_PORT,
    run_dir: str = "/tmp",
    error_log: str = "stderr",
    listen_address: str | None = None,
    worker_processes: str = "1",
    connect_timeout: str = "2s",
    keepalive: int = 16,
) -> RenderResult:
    """Render the complete ``nginx.conf`` for ``proxy``.

    ``run_dir`` holds the pid file (``cp-nginx.pid``) and temp folders (``cp-nginx-*-temp``);
    it must exist (nginx creates the temp folders). The default ``/tmp`` exists in the
    ``local/nginx`` image and is not shared with the host. ``listen_address`` binds the public server to one
    address (tests use 127.0.0.1); by default nginx listens on every address.
    Raises :class:`InvalidProxySpec` when the proxy itself is unusable.
    """
    if proxy.kind not in ("loadbalancer", "edge"):
        raise InvalidProxySpec(f"spec.proxy.kind: unsupported kind {proxy.kind!r}")
    if not _valid_port(proxy.port):
        raise InvalidProxySpec(f"spec.proxy.port: {proxy.port!r} out of range 1-65535")
    if not _valid_port(status_port) or status_port == proxy.port:
        raise InvalidProxySpec(f"status port {status_port!r} invalid or equal to the proxy port")
    if proxy.kind == "loadbalancer" and not (proxy.target and _valid_label(proxy.target)):
        raise InvalidProxySpec(f"spec.proxy.target: {proxy.target!r} is not a unit name")
    if proxy.kind == "edge" and not (proxy.domain and _valid_domain(proxy.domain)):
        raise InvalidProxySpec(f"spec.proxy.domain: {proxy.domain!r} is not a DNS name")
    if any(c.isspace() or c in ";{}'\"" for c in run_dir + error_log):
        raise InvalidProxySpec("run_dir/error_log must not contain spaces, quotes, braces or ';'")

    dropped: list[tuple[Route, str]] = []
    skipped: list[tuple[Route, Endpoint, str]] = []

    def clean_endpoints(route: Route) -> list[Endpoint]:
        good: dict[tuple[str, int], Endpoint] = {}
        for ep in route.endpoints:
            problem = _endpoint_problem(ep)
            if problem:
                skipped.append((route, ep, problem))
                continue
            good.setdefault((_server_addr(ep), ep.port), ep)
        return [good[k] for k in sorted(good)]

    # (unit, host-or-None, endpoints) in deterministic order
    backends: list[tuple[Route, list[Endpoint]]] = []
    if proxy.kind == "loadbalancer":
        chosen: Route | None = None
        for route in sorted(routes, key=_route_key):
            if route.unit != proxy.target:
                dropped.append((route, f"not the target unit {proxy.target!r} of this loadbalancer"))
            elif chosen is not None:
                dropped.append((route, "duplicate route for the target unit"))
            else:
                chosen = route
        target = chosen or Route(unit=proxy.target or "")
        backends.append((target, clean_endpoints(target)))
    else:
        hosts: dict[str, str] = {}
        for route in sorted(routes, key=_route_key):
            problem = _route_problem(route, need_host=True)
            if problem is None and route.host in hosts:
                problem = f"host {route.host}.{proxy.domain} already routed to unit {hosts[route.host]!r}"
            if problem:
                dropped.append((route, problem))
                continue
            assert route.host is not None
            hosts[route.host] = route.unit
            backends.append((route, clean_endpoints(route)))
        backends.sort(key=lambda b: (b[0].host or "", b[0].unit))

    lines: list[str] = []
    w = lines.append
    w("# controlplane proxy config: generated by cp-agent, do not edit (it is overwritten).")
    w(f"{HASH_MARKER}{HASH_PLACEHOLDER}")
    w(f"# proxy kind={proxy.kind} port={proxy.port}"
      + (f" target={proxy.target}" if proxy.kind == "loadbalancer" else f" domain={proxy.domain}"))
    w(f"worker_processes {worker_processes};")
    w(f"pid {run_dir}/cp-nginx.pid;")
    w(f"error_log {error_log} warn;")
    w("events { worker_connections 1024; }")
    w("http {")
    w("    access_log off;")
    w("    server_tokens off;")
    w("    server_names_hash_bucket_size 128;")
    w(f"    client_body_temp_path {run_dir}/cp-nginx-client_body-temp;")
    w(f"    proxy_temp_path {run_dir}/cp-nginx-proxy-temp;")
    w(f"    fastcgi_temp_path {run_dir}/cp-nginx-fastcgi-temp;")
    w(f"    uwsgi_temp_path {run_dir}/cp-nginx-uwsgi-temp;")
    w(f"    scgi_temp_path {run_dir}/cp-nginx-scgi-temp;")
    w("    # WebSocket upgrade; an empty Connection header otherwise, so upstream keepalive works.")
    w("    map $http_upgrade $cp_connection_upgrade { default upgrade; '' ''; }")
    w("    proxy_http_version 1.1;")
    w("    proxy_set_header Host $host;")
    w("    proxy_set_header Upgrade $http_upgrade;")
    w("    proxy_set_header Connection $cp_connection_upgrade;")
    w("    proxy_set_header X-Real-IP $remote_addr;")
    w("    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;")
    w("    proxy_set_header X-Forwarded-Proto $scheme;")
    w("    proxy_set_header X-Forwarded-Host $host;")
    w(f"    proxy_connect_timeout {connect_timeout};")
    w("    proxy_next_upstream error timeout;")
    w("    proxy_next_upstream_tries 3;")
    w("")

    for route, eps in backends:
        if eps:
            w(f"    upstream {_upstream_name(route.unit)} {{")
            for ep in eps:
                comment = f"  # {ep.instance}@{ep.machine}" if ep.instance or ep.machine else ""
                w(f"        server {_server_addr(ep)} max_fails=1 fail_timeout=2s;{_safe_comment(comment)}")
            w(f"        keepalive {keepalive};")
            w("    }")
    w("")

    listen = f"{_listen_addr(listen_address)}{proxy.port}"

    def location(route: Route, eps: list[Endpoint]) -> None:
        if eps:
            w("        location / {")
            w(f"            proxy_pass http://{_upstream_name(route.unit)};")
            w("        }")
        else:
            w(f"        # unit {route.unit} has no ready endpoint")
            w("        location / {")
            w("            default_type text/plain;")
            w(f'            return 503 "no ready backend for {route.unit}\\n";')
            w("        }")

    if proxy.kind == "loadbalancer":
        route, eps = backends[0]
        w("    server {")
        w(f"        listen {listen} default_server;")
        w("        server_name _;")
        location(route, eps)
        w("    }")
    else:
        w("    server {")
        w(f"        listen {listen} default_server;")
        w("        server_name _;")
        w("        location / {")
        w("            default_type text/plain;")
        w('            return 503 "unknown host\\n";')
        w("        }")
        w("    }")
        for route, eps in backends:
            w("    server {")
            w(f"        listen {listen};")
            w(f"        server_name {route.host}.{proxy.domain};")
            location(route, eps)
            w("    }")

    w("")
    w("    # loopback-only status server: the applier checks nginx serves this very config.")
    w("    server {")
    w(f"        listen 127.0.0.1:{status_port};")
    w(f"        location = {STATUS_PATH} {{")
    w("            allow 127.0.0.1;")
    w("            deny all;")
    w("            default_type text/plain;")
    w(f'            return 200 "{HASH_PLACEHOLDER}\\n";')
    w("        }")
    w("        location / { return 404; }")
    w("    }")
    w("}")
    text, digest = stamp_hash("\n".join(lines) + "\n")
    return RenderResult(text=text, config_hash=digest, dropped=dropped, skipped_endpoints=skipped)


def _route_key(route: Route) -> tuple[str, str, int]:
    return (route.unit, route.host or "", route.port or 0)


def _upstream_name(unit: str) -> str:
    return f"cp_unit_{unit}"


def _listen_addr(address: str | None) -> str:
    if not address:
        return ""
    ip = ipaddress.ip_address(address)
    return f"[{ip.compressed}]:" if ip.version == 6 else f"{ip.compressed}:"


def _safe_comment(comment: str) -> str:
    # instance / machine names come from the API; keep the comment on one line
    return "".join(c for c in comment if c.isprintable())
