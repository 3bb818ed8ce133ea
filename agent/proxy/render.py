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

Which routes and endpoints are served is decided in routes.py (:func:`choose_routes`);
this module checks the proxy's own spec and writes the text.

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
from collections.abc import Iterable
from dataclasses import dataclass

from agent.proxy.routes import (
    DroppedRoute,
    InvalidProxySpec,
    ProxySpec,
    Route,
    RouteChoice,
    SkippedEndpoint,
    choose_routes,
    server_address,
    valid_domain,
    valid_label,
    valid_port,
)
from controlplane.model import PROXY_KINDS

HASH_PLACEHOLDER = "@@CP_CONFIG_HASH@@"
HASH_MARKER = "# cp-config-hash: "
STATUS_PATH = "/__cp/config-hash"
DEFAULT_STATUS_PORT = 18999

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class RenderResult:
    text: str
    config_hash: str
    dropped: tuple[DroppedRoute, ...] = ()
    skipped_endpoints: tuple[SkippedEndpoint, ...] = ()


@dataclass(frozen=True)
class RenderOptions:
    """How the config is laid out around the routes (see :func:`render`)."""

    status_port: int = DEFAULT_STATUS_PORT
    run_dir: str = "/tmp"
    error_log: str = "stderr"
    listen_address: str | None = None
    worker_processes: str = "1"
    connect_timeout: str = "2s"
    keepalive: int = 16


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
    """Render the complete ``nginx.conf`` for ``proxy``: :func:`choose_routes`, then :func:`config_text`.

    ``run_dir`` holds the pid file (``cp-nginx.pid``) and temp folders (``cp-nginx-*-temp``);
    it must exist (nginx creates the temp folders). The default ``/tmp`` exists in the
    ``local/nginx`` image and is not shared with the host. ``listen_address`` binds the public server to one
    address (tests use 127.0.0.1); by default nginx listens on every address.
    Raises :class:`InvalidProxySpec` when the proxy itself is unusable.
    """
    options = RenderOptions(status_port=status_port, run_dir=run_dir, error_log=error_log,
                            listen_address=listen_address, worker_processes=worker_processes,
                            connect_timeout=connect_timeout, keepalive=keepalive)
    check_renderable(proxy, options)
    choice = choose_routes(proxy, routes)
    text, digest = stamp_hash(config_text(proxy, choice, options))
    return RenderResult(text=text, config_hash=digest, dropped=choice.dropped,
                        skipped_endpoints=choice.skipped_endpoints)


def check_renderable(proxy: ProxySpec, options: RenderOptions) -> None:
    """Raise :class:`InvalidProxySpec` unless a config can be written for ``proxy`` at all."""
    if proxy.kind not in PROXY_KINDS:
        raise InvalidProxySpec(f"spec.proxy.kind: unsupported kind {proxy.kind!r}")
    if not valid_port(proxy.port):
        raise InvalidProxySpec(f"spec.proxy.port: {proxy.port!r} out of range 1-65535")
    if not valid_port(options.status_port) or options.status_port == proxy.port:
        raise InvalidProxySpec(f"status port {options.status_port!r} invalid or equal to the proxy port")
    if proxy.kind == "loadbalancer" and not (proxy.target and valid_label(proxy.target)):
        raise InvalidProxySpec(f"spec.proxy.target: {proxy.target!r} is not a unit name")
    if proxy.kind == "edge" and not (proxy.domain and valid_domain(proxy.domain)):
        raise InvalidProxySpec(f"spec.proxy.domain: {proxy.domain!r} is not a DNS name")
    if any(c.isspace() or c in ";{}'\"" for c in options.run_dir + options.error_log):
        raise InvalidProxySpec("run_dir/error_log must not contain spaces, quotes, braces or ';'")


def config_text(proxy: ProxySpec, choice: RouteChoice, options: RenderOptions) -> str:
    """The config for the routes ``choice`` keeps, with :data:`HASH_PLACEHOLDER` where its hash goes."""
    lines = [
        *_preamble(proxy, options),
        *_upstreams(choice.kept, keepalive=options.keepalive),
        "",
        *_public_servers(proxy, choice.kept, listen=f"{_listen_addr(options.listen_address)}{proxy.port}"),
        "",
        *_status_server(options.status_port),
        "}",
    ]
    return "\n".join(lines) + "\n"


def _preamble(proxy: ProxySpec, options: RenderOptions) -> list[str]:
    """Everything up to the upstreams: identity and hash lines, process and http-wide settings."""
    run_dir = options.run_dir
    about = f" target={proxy.target}" if proxy.kind == "loadbalancer" else f" domain={proxy.domain}"
    return [
        "# controlplane proxy config: generated by cp-agent, do not edit (it is overwritten).",
        f"{HASH_MARKER}{HASH_PLACEHOLDER}",
        f"# proxy kind={proxy.kind} port={proxy.port}{about}",
        f"worker_processes {options.worker_processes};",
        f"pid {run_dir}/cp-nginx.pid;",
        f"error_log {options.error_log} warn;",
        "events { worker_connections 1024; }",
        "http {",
        "    access_log off;",
        "    server_tokens off;",
        "    server_names_hash_bucket_size 128;",
        f"    client_body_temp_path {run_dir}/cp-nginx-client_body-temp;",
        f"    proxy_temp_path {run_dir}/cp-nginx-proxy-temp;",
        f"    fastcgi_temp_path {run_dir}/cp-nginx-fastcgi-temp;",
        f"    uwsgi_temp_path {run_dir}/cp-nginx-uwsgi-temp;",
        f"    scgi_temp_path {run_dir}/cp-nginx-scgi-temp;",
        "    # WebSocket upgrade; an empty Connection header otherwise, so upstream keepalive works.",
        "    map $http_upgrade $cp_connection_upgrade { default upgrade; '' ''; }",
        "    proxy_http_version 1.1;",
        "    proxy_set_header Host $host;",
        "    proxy_set_header Upgrade $http_upgrade;",
        "    proxy_set_header Connection $cp_connection_upgrade;",
        "    proxy_set_header X-Real-IP $remote_addr;",
        "    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
        "    proxy_set_header X-Forwarded-Proto $scheme;",
        "    proxy_set_header X-Forwarded-Host $host;",
        f"    proxy_connect_timeout {options.connect_timeout};",
        "    proxy_next_upstream error timeout;",
        "    proxy_next_upstream_tries 3;",
        "",
    ]


def _upstreams(routes: Iterable[Route], *, keepalive: int) -> list[str]:
    """One upstream per route with endpoints; none for a route without (never an empty upstream)."""
    lines: list[str] = []
    for route in routes:
        if not route.endpoints:
            continue
        lines.append(f"    upstream {_upstream_name(route.unit)} {{")
        for ep in route.endpoints:
            comment = f"  # {ep.instance}@{ep.machine}" if ep.instance or ep.machine else ""
            lines.append(f"        server {server_address(ep)} max_fails=1 fail_timeout=2s;{_safe_comment(comment)}")
        lines.append(f"        keepalive {keepalive};")
        lines.append("    }")
    return lines


def _public_servers(proxy: ProxySpec, routes: tuple[Route, ...], *, listen: str) -> list[str]:
    """loadbalancer: one default server for the target; edge: a 503 default server, then one per host."""
    if proxy.kind == "loadbalancer":
        return _server(f"{listen} default_server", "_", _location(routes[0]))
    unknown_host = [
        "        location / {",
        "            default_type text/plain;",
        '            return 503 "unknown host\\n";',
        "        }",
    ]
    lines = _server(f"{listen} default_server", "_", unknown_host)
    for route in routes:
        lines += _server(listen, f"{route.host}.{proxy.domain}", _location(route))
    return lines


def _server(listen: str, server_name: str, body: list[str]) -> list[str]:
    return ["    server {", f"        listen {listen};", f"        server_name {server_name};", *body, "    }"]


def _location(route: Route) -> list[str]:
    if route.endpoints:
        return ["        location / {", f"            proxy_pass http://{_upstream_name(route.unit)};", "        }"]
    return [
        f"        # unit {route.unit} has no ready endpoint",
        "        location / {",
        "            default_type text/plain;",
        f'            return 503 "no ready backend for {route.unit}\\n";',
        "        }",
    ]


def _status_server(status_port: int) -> list[str]:
    return [
        "    # loopback-only status server: the applier checks nginx serves this very config.",
        "    server {",
        f"        listen 127.0.0.1:{status_port};",
        f"        location = {STATUS_PATH} {{",
        "            allow 127.0.0.1;",
        "            deny all;",
        "            default_type text/plain;",
        f'            return 200 "{HASH_PLACEHOLDER}\\n";',
        "        }",
        "        location / { return 404; }",
        "    }",
    ]


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
