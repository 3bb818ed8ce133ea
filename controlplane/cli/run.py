"""``cpctl run``: a Unit from flags, fleet-style (``fleetctl start`` with the unit file's
[X-Fleet] options as flags), then wait until its instances run.

The flag parsers and ``build_unit`` are pure so they are table-tested; every flag mistake is
a usage error (exit 2) found before any request. Whether the *combination* is allowed
(``--machine`` with ``--conflicts``, ...) is left to the server, which owns those rules and
answers 422 with a cause per field (exit 1).
"""

from __future__ import annotations

import re
from typing import Any

import click

from controlplane.model import API_VERSION, DEFAULT_PROTOCOL, DEFAULT_PROXY_PORT, RESTART_POLICIES, SPREADS
from controlplane.timeline import mark

from .common import call, ref
from .config import connection_options
from .dryrun import CLIENT, NONE, dry_run_option, dry_run_suffix, print_objects
from .durations import DURATION
from .rest import RestClient
from .terminal import echo
from .wait import wait_for_units

PORT_RE = re.compile(r"^(\d{1,5})(?::(\d{1,5}))?(?:/(tcp|udp))?$")
MEMORY_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*(m|mb|mi|mib|g|gb|gi|gib)?$", re.IGNORECASE)
DEFAULT_TIMEOUT = 120.0


def parse_port(text: str) -> dict[str, Any]:
    """``CPORT[:HOSTPORT][/tcp|udp]`` -> ``{containerPort, hostPort, protocol}`` (hostPort 0: any)."""
    match = PORT_RE.match(text.strip())
    if not match:
        raise click.BadParameter(f"{text!r} is not CPORT[:HOSTPORT][/tcp|udp]", param_hint="'--port'")
    container, host, protocol = int(match.group(1)), int(match.group(2) or 0), match.group(3) or DEFAULT_PROTOCOL
    if not 1 <= container <= 65535 or not 0 <= host <= 65535:
        raise click.BadParameter(f"{text!r}: ports are 1-65535 (host port 0 means any)", param_hint="'--port'")
    return {"containerPort": container, "hostPort": host, "protocol": protocol}


def parse_env(text: str) -> tuple[str, str]:
    """``K=V`` (V may be empty and may contain '=')."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise click.BadParameter(f"{text!r} is not K=V", param_hint="'--env'")
    return key, value


def parse_key_value(text: str, *, flag: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    key, value = key.strip(), value.strip()
    if not sep or not key or not value:
        raise click.BadParameter(f"{text!r} is not k=v", param_hint=f"'{flag}'")
    return key, value


def parse_constraints(items: tuple[str, ...] | list[str]) -> dict[str, list[str]]:
    """``--constraint k=v`` flags -> machineMetadata: keys ANDed, a key repeated ORs its values."""
    result: dict[str, list[str]] = {}
    for item in items:
        key, value = parse_key_value(item, flag="--constraint")
        values = result.setdefault(key, [])
        if value not in values:
            values.append(value)
    return result


def parse_labels(items: tuple[str, ...] | list[str]) -> dict[str, str]:
    return dict(parse_key_value(item, flag="--label") for item in items)


def parse_health_http(text: str, ports: list[dict[str, Any]]) -> dict[str, Any]:
    """``PATH[:PORT]`` -> ``{path, port}``; the port defaults to the first ``--port``'s container port."""
    path, port = text.strip(), None
    head, sep, tail = path.rpartition(":")
    if sep and tail.isdigit():
        path, port = head, int(tail)
    path = path or "/"
    if not path.startswith("/"):
        raise click.BadParameter(f"{text!r}: the path must start with '/'", param_hint="'--health-http'")
    if port is None:
        if not ports:
            raise click.BadParameter(f"{text!r} names no port and there is no --port to default to",
                                     param_hint="'--health-http'")
        port = int(ports[0]["containerPort"])
    if not 1 <= port <= 65535:
        raise click.BadParameter(f"{text!r}: port must be 1-65535", param_hint="'--health-http'")
    return {"path": path, "port": port}


def parse_expose(text: str) -> dict[str, Any]:
    """``HOST[:PORT]`` -> ``{host[, port]}`` (the edge routes HOST.<domain> to this unit)."""
    host, sep, port = text.strip().partition(":")
    if not host or (sep and not port.isdigit()):
        raise click.BadParameter(f"{text!r} is not HOST[:PORT]", param_hint="'--expose'")
    result: dict[str, Any] = {"host": host}
    if sep:
        if not 1 <= int(port) <= 65535:
            raise click.BadParameter(f"{text!r}: port must be 1-65535", param_hint="'--expose'")
        result["port"] = int(port)
    return result


def parse_memory(text: str) -> int:
    """Megabytes: ``64``, ``64M``, ``64Mi``, ``1G``, ``1.5Gi``."""
    match = MEMORY_RE.match(text.strip())
    if not match:
        raise click.BadParameter(f"{text!r} is not a size in MB (e.g. 64, 512M, 1G)", param_hint="'--memory'")
    amount = float(match.group(1))
    if (match.group(2) or "m").lower().startswith("g"):
        amount *= 1024
    return int(amount)


def _proxy_spec(lb: str | None, edge: str | None,
                ports: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The proxy of an ``--lb``/``--edge`` unit, and its ports (its first port, else port 80)."""
    proxy_port = int(ports[0]["containerPort"]) if ports else DEFAULT_PROXY_PORT
    if not ports:
        ports = [{"containerPort": proxy_port, "hostPort": 0, "protocol": DEFAULT_PROTOCOL}]
    if lb:
        return {"kind": "loadbalancer", "target": lb, "port": proxy_port}, ports
    return {"kind": "edge", "domain": edge, "port": proxy_port}, ports


def _resources(cpu: float | None, memory: str | None) -> dict[str, Any]:
    resources: dict[str, Any] = {}
    if cpu is not None:
        resources["cpu"] = cpu
    if memory is not None:
        resources["memoryMB"] = parse_memory(memory)
    return resources


def _placement(*, spread: str | None, conflicts: tuple[str, ...] | list[str],
               constraints: tuple[str, ...] | list[str], machine_of: str | None,
               machine: str | None) -> dict[str, Any]:
    placement: dict[str, Any] = {}
    if spread:
        placement["spread"] = spread
    if conflicts:
        placement["conflicts"] = list(conflicts)
    if constraints:
        placement["machineMetadata"] = parse_constraints(constraints)
    if machine_of:
        placement["machineOf"] = machine_of
    if machine:
        placement["machine"] = machine
    return placement


def build_unit(
    name: str,
    *,
    image: str | None = None,
    replicas: int | None = None,
    ports: tuple[str, ...] | list[str] = (),
    env: tuple[str, ...] | list[str] = (),
    cpu: float | None = None,
    memory: str | None = None,
    constraints: tuple[str, ...] | list[str] = (),
    conflicts: tuple[str, ...] | list[str] = (),
    spread: str | None = None,
    is_global: bool = False,
    machine_of: str | None = None,
    machine: str | None = None,
    health_http: str | None = None,
    expose: str | None = None,
    restart: str | None = None,
    lb: str | None = None,
    edge: str | None = None,
    labels: tuple[str, ...] | list[str] = (),
    command: tuple[str, ...] | list[str] = (),
) -> dict[str, Any]:
    """The Unit ``cpctl run`` creates; raises click.BadParameter/UsageError for bad flags."""
    if lb and edge:
        raise click.UsageError("--lb and --edge are two kinds of proxy; give one")
    if not image and not (lb or edge):
        raise click.UsageError("--image is required (unless --lb or --edge makes this a proxy unit)")
    parsed_ports = [parse_port(p) for p in ports]
    spec: dict[str, Any] = {}
    if image:
        spec["image"] = image
    if command:
        spec["command"] = list(command)
    if env:
        spec["env"] = dict(parse_env(e) for e in env)
    if lb or edge:
        spec["proxy"], parsed_ports = _proxy_spec(lb, edge, parsed_ports)
    if parsed_ports:
        spec["ports"] = parsed_ports
    if replicas is not None:
        spec["replicas"] = replicas
    if is_global:
        spec["global"] = True
    if resources := _resources(cpu, memory):
        spec["resources"] = resources
    if restart:
        spec["restartPolicy"] = restart
    if placement := _placement(spread=spread, conflicts=conflicts, constraints=constraints,
                               machine_of=machine_of, machine=machine):
        spec["placement"] = placement
    if health_http:
        spec["health"] = {"http": parse_health_http(health_http, parsed_ports)}
    if expose:
        spec["expose"] = parse_expose(expose)
    metadata: dict[str, Any] = {"name": name}
    if labels:
        metadata["labels"] = parse_labels(labels)
    return {"apiVersion": API_VERSION, "kind": "Unit", "metadata": metadata, "spec": spec}


@click.command("run", context_settings={"allow_interspersed_args": True})
@click.argument("name")
@click.argument("command", nargs=-1, type=click.UNPROCESSED, metavar="[-- COMMAND ARGS...]")
@click.option("--image", help="container image (not needed for --lb/--edge proxy units)")
@click.option("--replicas", type=click.IntRange(min=0), help="copies to run (ignored with --global)")
@click.option("--port", "ports", multiple=True, metavar="CPORT[:HOSTPORT]", help="publish a container port")
@click.option("--env", multiple=True, metavar="K=V", help="environment variable")
@click.option("--cpu", type=click.FloatRange(min=0), help="CPUs reserved per instance")
@click.option("--memory", metavar="MB", help="memory reserved per instance (MB; 512M and 1G work too)")
@click.option("--constraint", "constraints", multiple=True, metavar="k=v",
              help="machine metadata to require (keys ANDed; a key repeated ORs its values)")
@click.option("--conflicts", multiple=True, metavar="GLOB", help="never share a machine with these units")
@click.option("--spread", type=click.Choice(SPREADS), help="spread of this unit's instances")
@click.option("--global", "is_global", is_flag=True, help="one instance on every eligible machine")
@click.option("--machine-of", metavar="UNIT", help="only where an instance of UNIT runs")
@click.option("--machine", metavar="M", help="pin to machine M")
@click.option("--health-http", metavar="PATH[:PORT]", help="HTTP readiness probe")
@click.option("--expose", metavar="HOST[:PORT]", help="route HOST.<edge domain> to this unit")
@click.option("--restart", type=click.Choice(RESTART_POLICIES), help="restart policy")
@click.option("--lb", metavar="UNIT", help="make this a load balancer proxy in front of UNIT")
@click.option("--edge", metavar="DOMAIN", help="make this an edge proxy for *.DOMAIN")
@click.option("--label", "labels", multiple=True, metavar="k=v", help="label of the unit")
@click.option("--wait/--no-wait", default=True, show_default=True, help="wait until every instance is ready")
@click.option("--timeout", type=DURATION, default=DEFAULT_TIMEOUT, show_default=True,
              help="how long to wait: 30s, 2m, 1h30m or seconds")
@dry_run_option
@connection_options
def run_command(name: str, command: tuple[str, ...], wait: bool, timeout: float, dry_run: str,
                **flags: Any) -> None:
    """Create unit NAME and (by default) wait until its instances are Running and ready."""
    unit = build_unit(name, command=command, **flags)
    if dry_run == CLIENT:
        print_objects([unit])
        return

    def go(api: RestClient) -> None:
        mark("cpctl.post", name)
        api.create("units", unit, dry_run=dry_run != NONE)
        mark("cpctl.created", name)
        echo(f"{ref('units', name)} created{dry_run_suffix(dry_run)}")
        if wait and dry_run == NONE:
            wait_for_units(api, [name], timeout=timeout)

    call(go)

