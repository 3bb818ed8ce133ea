"""Machine-centric verbs: fleet's ``list-machines``/``list-units`` views, and ``cordon``,
``uncordon`` and ``drain``.

``drain`` cordons the machine and then deletes every instance bound to it (Kubernetes'
drain evicts pods the same way). The unit controller recreates each replica under the same
name, unbound, and the scheduler places it on another machine, since a cordoned one takes
nothing new; global units simply lose their copy there, because a cordoned machine is no
longer eligible. Deleting rather than only clearing ``spec.machine`` matters: the machine's
agent watches instances with ``fieldSelector=spec.machine=<it>``, and an instance that is
deleted reaches it as DELETED, so the container stops, while an instance that merely stops
matching the selector is not reported to that watch at all.
"""

from __future__ import annotations

from typing import Any

import click

from controlplane.errors import NotFound

from .common import call, ref
from .completion import complete_names_of
from .config import connection_options
from .outputs import no_headers_option
from .printers import format_table, without_header
from .rest import RestClient
from .terminal import echo


def fleet_state(instance: dict[str, Any]) -> tuple[str, str]:
    """(ACTIVE, SUB) in systemd's words, as fleetctl list-units shows them."""
    spec, status = instance.get("spec") or {}, instance.get("status") or {}
    phase = status.get("phase") or "Pending"
    if phase == "Pending":
        return ("activating", "start-pre") if spec.get("machine") else ("inactive", "dead")
    if phase == "Starting":
        return "activating", "start"
    if phase == "Running":
        return "active", "running" if status.get("ready") else "starting"
    if phase == "Failed":
        return "failed", "failed"
    return "inactive", "dead"


def list_machines_table(machines: list[dict[str, Any]]) -> str:
    rows = []
    for machine in sorted(machines, key=lambda m: (m.get("metadata") or {}).get("name", "")):
        meta, status = machine.get("metadata") or {}, machine.get("status") or {}
        metadata = ",".join(f"{k}={v}" for k, v in sorted((meta.get("labels") or {}).items())) or "-"
        rows.append([meta.get("name", ""), str(status.get("address") or "-"), metadata])
    return format_table(["MACHINE", "IP", "METADATA"], rows)


def list_units_table(instances: list[dict[str, Any]], machines: list[dict[str, Any]]) -> str:
    addresses = {(m.get("metadata") or {}).get("name"): (m.get("status") or {}).get("address") for m in machines}
    rows = []
    ordered = sorted(instances, key=lambda i: ((i.get("spec") or {}).get("unit", ""),
                                               int((i.get("spec") or {}).get("index") or 0)))
    for inst in ordered:
        machine = str((inst.get("spec") or {}).get("machine") or "")
        where = f"{machine}/{addresses[machine]}" if machine and addresses.get(machine) else (machine or "-")
        active, sub = fleet_state(inst)
        rows.append([(inst.get("metadata") or {}).get("name", ""), where, active, sub])
    return format_table(["UNIT", "MACHINE", "ACTIVE", "SUB"], rows)


@click.command("list-machines")
@no_headers_option
@connection_options
def list_machines_command(no_headers: bool) -> None:
    """The machines, in fleetctl's columns (MACHINE, IP, METADATA)."""

    def go(api: RestClient) -> str:
        machines, _ = api.list_all("machines")
        return list_machines_table(machines)

    echo(without_header(call(go), headers=not no_headers))


@click.command("list-units")
@no_headers_option
@connection_options
def list_units_command(no_headers: bool) -> None:
    """Every instance, in fleetctl's columns (UNIT, MACHINE, ACTIVE, SUB)."""

    def go(api: RestClient) -> str:
        instances, _ = api.list_all("instances")
        machines, _ = api.list_all("machines")
        return list_units_table(instances, machines)

    echo(without_header(call(go), headers=not no_headers))


def _set_unschedulable(api: RestClient, machine: str, value: bool) -> None:
    api.patch("machines", machine, {"spec": {"unschedulable": value}})


@click.command("cordon")
@click.argument("machine", shell_complete=complete_names_of("machines"))
@connection_options
def cordon_command(machine: str) -> None:
    """Keep new instances off MACHINE (what runs there stays)."""

    def go(api: RestClient) -> None:
        _set_unschedulable(api, machine, True)

    call(go)
    echo(f"{ref('machines', machine)} cordoned")


@click.command("uncordon")
@click.argument("machine", shell_complete=complete_names_of("machines"))
@connection_options
def uncordon_command(machine: str) -> None:
    """Let the scheduler place instances on MACHINE again."""

    def go(api: RestClient) -> None:
        _set_unschedulable(api, machine, False)

    call(go)
    echo(f"{ref('machines', machine)} uncordoned")


@click.command("drain")
@click.argument("machine", shell_complete=complete_names_of("machines"))
@connection_options
def drain_command(machine: str) -> None:
    """Cordon MACHINE and move its instances elsewhere (they are deleted and recreated)."""

    def go(api: RestClient) -> None:
        _set_unschedulable(api, machine, True)
        echo(f"{ref('machines', machine)} cordoned")
        instances, _ = api.list_all("instances", field_selector=f"spec.machine={machine}")
        for inst in instances:
            name = (inst.get("metadata") or {}).get("name", "")
            try:
                api.delete("instances", name)
            except NotFound:
                continue  # gone already
            echo(f"{ref('instances', name)} evicted")
        echo(f"{ref('machines', machine)} drained")

    call(go)

