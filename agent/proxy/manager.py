"""Runs the proxy instances of this machine: nginx containers whose config the agent renders.

A plug-in of the agent (agent/plugin.py). For each proxy instance bound here the manager
- shapes its container (``shape``): the proxy image, ``nginx -c /etc/cp-nginx/nginx.conf``
  and the instance's config folder bind-mounted READ-ONLY at /etc/cp-nginx, made bootable before
  start (nginx writes nothing there: its pid file and temp folders are in the container's /tmp,
  render.py's ``run_dir``; the agent writes the folder from the host, through safefs.py);
- follows Units and Endpoints (list+watch through the API) and, debounced, renders the whole
  config (routes.py chooses, render.py writes, both pure) and applies it (apply.py: validate,
  swap, reload, verify, roll back) into the container the agent last reported (``container_changed``);
- reports a rejected config, and each new set of dropped routes, as a Warning Event on the instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import socket
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from agent.metrics import AgentMetrics
from agent.proxy import safefs
from agent.proxy.apply import NginxApplier
from agent.proxy.debounce import Debouncer
from agent.proxy.render import RenderResult, render
from agent.proxy.routes import DroppedRoute, InvalidProxySpec, ProxySpec, routes_for
from agent.proxy.runners import CONTAINER_DIR, RuntimeExecNginx
from agent.reconcile import DesiredInstance
from agent.runtime.base import Bind, Runtime
from controlplane.client import Client
from controlplane.errors import CPError
from controlplane.mirror import mirror
from controlplane.model import Instance, InstanceStatus, event_object

log = logging.getLogger(__name__)
PORTS_NAME = "ports.json"
NGINX_COMMAND = ("nginx", "-c", f"{CONTAINER_DIR}/nginx.conf", "-g", "daemon off;")


def routed_port(unit: Mapping[str, Any]) -> int | None:
    """The container port a proxy sends a unit's traffic to: expose.port, else the first port."""
    spec = unit.get("spec") or {}
    expose = spec.get("expose") or {}
    if expose.get("port"):
        return int(expose["port"])
    proxy = spec.get("proxy") or {}
    if proxy.get("port"):
        return int(proxy["port"])
    ports = spec.get("ports") or []
    return int(ports[0]["containerPort"]) if ports else None


def filtered_endpoints(units: Mapping[str, Mapping[str, Any]],
                       endpoints: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Endpoints per unit keeping only the entries of the port proxies route to."""
    result: dict[str, dict[str, Any]] = {}
    for name, obj in endpoints.items():
        unit = units.get(name)
        port = routed_port(unit) if unit else None
        items = [e for e in obj.get("endpoints") or [] if port is None or e.get("containerPort") in (None, port)]
        result[name] = {"metadata": {"name": name}, "endpoints": items}
    return result


def dropped_summary(dropped: Iterable[DroppedRoute]) -> tuple[frozenset[tuple[str, str, str]], str]:
    """What identifies a set of dropped routes (unit, host, reason: endpoint churn does not
    count), and the sentence that reports it."""
    key = frozenset((d.route.unit, d.route.host or "", d.reason) for d in dropped)
    parts = [f"unit {unit!r}" + (f" (host {host!r})" if host else "") + f": {reason}"
             for unit, host, reason in sorted(key)]
    return key, f"{len(parts)} route(s) dropped: " + "; ".join(parts)


def free_port(address: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


class ProxyInstance:
    """One proxy instance: nginx on the host network, listening on the machine's address.

    Host networking because a dev cluster's machine addresses (127.0.1.x) are the host's
    loopback, which a bridge-networked container cannot reach; on real machines it also spares
    a NAT hop. The listen port is the unit's hostPort, or one picked free on the address and kept
    in the instance's folder so an agent restart reuses it."""

    def __init__(self, name: str, spec: ProxySpec, conf_dir: Path, *, address: str, host_port: int) -> None:
        self.name = name
        self.container_port = spec.port
        self.conf_dir = conf_dir
        saved: dict[str, int] = {}
        with safefs.open_dir(conf_dir) as folder:
            with contextlib.suppress(OSError, ValueError):
                loaded = json.loads(safefs.read_text(folder, PORTS_NAME) or "{}")
                saved = loaded if isinstance(loaded, dict) else {}
            if host_port:
                listen = host_port
            elif saved.get("listen") and saved.get("containerPort") == spec.port:
                listen = int(saved["listen"])
            else:
                listen = free_port(address)
            status = int(saved.get("status") or 0) or free_port("127.0.0.1")
            safefs.write_atomic(folder, PORTS_NAME,
                                json.dumps({"listen": listen, "status": status, "containerPort": spec.port}))
        self.listen_port = listen
        self.status_port = status
        self.address = address
        self.spec = dataclasses.replace(spec, port=listen)
        self.source_spec = spec
        self.applier: NginxApplier | None = None
        self.container_id = ""
        self.debouncer: Debouncer | None = None
        self.last_reason = ""
        self.last_dropped: frozenset[tuple[str, str, str]] = frozenset()


class ProxyManager:
    """The agent plug-in for proxy instances; needs the agent's cluster, machine and address."""

    def __init__(self, client: Client, runtime: Runtime, *, cluster: str, machine: str, address: str,
                 state_dir: Path, metrics: AgentMetrics | None = None) -> None:
        self.client = client
        self.metrics = metrics if metrics is not None else AgentMetrics()
        self.runtime = runtime
        self.cluster = cluster
        self.machine = machine
        self.address = address
        self.state_dir = state_dir
        self.units: dict[str, dict[str, Any]] = {}
        self.endpoints: dict[str, dict[str, Any]] = {}
        self.proxies: dict[str, ProxyInstance] = {}
        self.container_ids: dict[str, str] = {}  # proxy instance -> its container, as the agent reports it

    # ---- container shape ----
    def conf_dir(self, instance: str) -> Path:
        return self.state_dir / "proxy" / self.cluster / self.machine / instance

    def render_for(self, proxy: ProxyInstance) -> RenderResult:
        routes = routes_for(proxy.spec, self.units.values(), filtered_endpoints(self.units, self.endpoints))
        return render(proxy.spec, routes, status_port=proxy.status_port, listen_address=proxy.address)

    def status_fields(self, instance: str, status: InstanceStatus) -> InstanceStatus:
        """Proxies publish no Docker ports (host network): report the port nginx listens on."""
        proxy = self.proxies.get(instance)
        if proxy is None:
            return {}
        return {"hostPorts": [{"containerPort": proxy.container_port, "hostPort": proxy.listen_port,
                               "protocol": "tcp"}],
                "address": proxy.address}

    def shape(self, desired: Sequence[DesiredInstance], instances: Mapping[str, Instance]) -> list[DesiredInstance]:
        shaped: list[DesiredInstance] = []
        live: set[str] = set()
        for d in desired:
            template = ((instances.get(d.name) or {}).get("spec") or {}).get("template") or {}
            if not template.get("proxy"):
                shaped.append(d)
                continue
            try:
                spec = ProxySpec.from_unit({"spec": template})
            except InvalidProxySpec as err:
                log.warning("proxy instance %s: %s", d.name, err)
                continue
            host_port = next((p.host_port for p in d.ports if p.container_port == spec.port), 0)
            proxy = self.proxies.get(d.name)
            if proxy is None or proxy.source_spec != spec:
                proxy = self._open(d.name, spec, host_port)
            live.add(d.name)
            shaped.append(dataclasses.replace(
                d, command=NGINX_COMMAND, network="host", ports=(),
                binds=(Bind(str(proxy.conf_dir), CONTAINER_DIR, read_only=True),),
            ))
        for name in list(self.proxies):
            if name not in live:
                self._close(name)
        return shaped

    def _open(self, name: str, spec: ProxySpec, host_port: int) -> ProxyInstance:
        proxy = ProxyInstance(name, spec, self.conf_dir(name), address=self.address, host_port=host_port)
        # nginx.conf must exist before the container starts: the last good config if there is
        # one (an agent restart), else a render of what is known now
        NginxApplier(proxy.conf_dir, _NoRunner()).prepare(self.render_for(proxy).text)
        proxy.debouncer = Debouncer(lambda: self.apply(name), quiet=0.1, max_wait=1.0)
        self.proxies[name] = proxy
        return proxy

    def _close(self, name: str) -> None:
        proxy = self.proxies.pop(name, None)
        self.container_ids.pop(name, None)
        if proxy and proxy.debouncer:
            asyncio.ensure_future(proxy.debouncer.close())

    def container_changed(self, instance: str, container_id: str) -> None:
        """Apply as soon as a proxy's container is (re)started: the agent reports its id."""
        proxy = self.proxies.get(instance)
        if proxy is None:
            return
        self.container_ids[instance] = container_id
        if container_id and proxy.debouncer is not None:
            proxy.debouncer.poke()

    # ---- config updates ----
    def poke_all(self) -> None:
        for proxy in self.proxies.values():
            if proxy.debouncer is not None:
                proxy.debouncer.poke()

    async def apply(self, name: str) -> None:
        proxy = self.proxies.get(name)
        if proxy is None:
            return
        rendered = self.render_for(proxy)
        await self._report_dropped(proxy, rendered.dropped)
        text = rendered.text
        container_id = self.container_ids.get(name, "")
        if proxy.applier is None or proxy.container_id != container_id:
            if not container_id:
                return
            runner = RuntimeExecNginx(self.runtime, container_id, host_dir=proxy.conf_dir,
                                      status_port=proxy.status_port, container_dir=CONTAINER_DIR)
            proxy.applier = NginxApplier(proxy.conf_dir, runner)
            proxy.applier.prepare(text)
            proxy.container_id = container_id
        reloads = proxy.applier.reloads
        result = await proxy.applier.apply(text)
        failed = not result.ok and result.reason != proxy.last_reason
        self.metrics.observe_proxy_apply(reloads=proxy.applier.reloads - reloads, failed=failed)
        if failed:
            log.warning("proxy %s kept its last good config: %s", name, result.reason)
            await self._event(name, "ProxyConfigRejected", result.reason)
        elif result.ok and result.changed:
            log.info("proxy %s serves config %s (%.0f ms)", name, (result.config_hash or "")[:12],
                     result.seconds * 1000)
        proxy.last_reason = "" if result.ok else result.reason

    async def _report_dropped(self, proxy: ProxyInstance, dropped: Sequence[DroppedRoute]) -> None:
        """Log and report the dropped routes once per distinct set, not on every render."""
        key, message = dropped_summary(dropped)
        if key == proxy.last_dropped:
            return
        proxy.last_dropped = key
        if not key:
            log.info("proxy %s: no route dropped any more", proxy.name)
            return
        log.warning("proxy %s: %s", proxy.name, message)
        await self._event(proxy.name, "RouteDropped", message)

    async def _event(self, instance: str, reason: str, message: str) -> None:
        obj = event_object("Instance", instance, type_="Warning", reason=reason, message=message)
        with contextlib.suppress(CPError):
            await self.client.create("events", cast(dict[str, Any], obj))

    # ---- watches ----
    async def run(self) -> None:
        await asyncio.gather(mirror(self.client, "units", self.units, on_change=self.poke_all),
                             mirror(self.client, "endpoints", self.endpoints, on_change=self.poke_all))


class _NoRunner:
    """For ``prepare`` only: writes files, never runs nginx."""

    async def test(self, conf: Path) -> tuple[bool, str]:
        return True, ""

    async def reload(self) -> tuple[bool, str]:
        return True, ""

    async def fetch_hash(self) -> str | None:
        return None

    async def reload_settled(self) -> bool:
        return True
