"""``cpctl describe KIND NAME``: one object for a human: spec, status, why an instance is
not placed, a unit's instances, a machine's instances, and the recent Events about it."""

from __future__ import annotations

import datetime as dt
from typing import Any

import click

from controlplane.discovery import cluster_domain, service_lines

from .common import KINDS, call
from .config import connection_options
from .get import kind_argument
from .printers import NONE, age, dump_yaml, format_table, labels_text
from .rest import RestClient
from .terminal import echo
from .wait import describe_instance

RECENT_EVENTS = 20


def _indent(text: str, prefix: str = "  ") -> str:
    return "\n".join(prefix + line if line else line for line in text.rstrip("\n").splitlines())


def _field(label: str, value: Any) -> str:
    return f"{label + ':':<16}{value}"


def _instance_rows(instances: list[dict[str, Any]]) -> str:
    rows = []
    for inst in instances:
        spec, status = inst.get("spec") or {}, inst.get("status") or {}
        rows.append([
            (inst.get("metadata") or {}).get("name", ""), str(spec.get("machine") or NONE),
            str(status.get("phase") or "Pending"), "yes" if status.get("ready") else "no",
            " ".join(str(status.get("message") or "").split()) or "",
        ])
    return format_table(["NAME", "MACHINE", "PHASE", "READY", "MESSAGE"], rows)


def _last_seen(event: dict[str, Any]) -> str:
    return str(event.get("lastTimestamp") or event.get("timestamp")
               or (event.get("metadata") or {}).get("creationTimestamp") or "")


def _event_rows(events: list[dict[str, Any]], now: dt.datetime) -> str:
    """kubectl's: the last seen age, and for a repeat "(xN over AGE)" since it was first seen."""
    ordered = sorted(events, key=_last_seen)
    rows = []
    for event in ordered[-RECENT_EVENTS:]:
        count = int(event.get("count") or 1)
        first = event.get("timestamp") or (event.get("metadata") or {}).get("creationTimestamp")
        repeats = f" (x{count} over {age(first, now)})" if count > 1 else ""
        rows.append([
            age(_last_seen(event), now) + repeats, str(event.get("type") or "Normal"),
            str(event.get("reason") or ""), " ".join(str(event.get("message") or "").split()),
        ])
    return format_table(["LAST SEEN", "TYPE", "REASON", "MESSAGE"], rows)


def describe_text(
    resource: str, obj: dict[str, Any], *, instances: list[dict[str, Any]] | None = None,
    events: list[dict[str, Any]] | None = None, now: dt.datetime | None = None,
    service: list[str] | None = None,
) -> str:
    """Pure: the describe page of ``obj`` (``instances``: a unit's or a machine's)."""
    now = now or dt.datetime.now(dt.UTC)
    meta = obj.get("metadata") or {}
    created = meta.get("creationTimestamp") or ""
    lines = [
        _field("Name", meta.get("name", "")),
        _field("Kind", obj.get("kind") or KINDS[resource]),
        _field("Labels", labels_text(meta.get("labels"))),
    ]
    if meta.get("annotations"):
        lines.append(_field("Annotations", labels_text(meta.get("annotations"))))
    lines += [
        _field("Created", f"{created} ({age(created, now)} ago)" if created else NONE),
        _field("Generation", meta.get("generation", NONE)),
        _field("Version", meta.get("resourceVersion", NONE)),
    ]
    if resource == "instances":
        status = obj.get("status") or {}
        spec = obj.get("spec") or {}
        lines.append(_field("Unit", spec.get("unit", NONE)))
        lines.append(_field("Machine", spec.get("machine") or "<none> (not placed)"))
        lines.append(_field("State", describe_instance(obj).split(": ", 1)[1]))
        if not spec.get("machine") and status.get("message"):
            lines.append(_field("Placement", " ".join(str(status["message"]).split())))
    body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata", "status")}
    if resource == "secrets":  # sizes, never values (kubectl's habit)
        body = {"data": {k: f"{len(str(v).encode())} bytes" for k, v in sorted((obj.get("data") or {}).items())}}
    if "spec" in body and len(body) == 1:
        body = body["spec"]
        lines.append("Spec:")
    else:
        lines.append("Fields:" if resource in ("events", "endpoints") else "Spec:")
    if body:
        lines.append(_indent(dump_yaml(body)))
    if "status" in obj:
        lines.append("Status:")
        lines.append(_indent(dump_yaml(obj.get("status") or {})) if obj.get("status") else "  <none>")
    if service is not None:  # a unit's stable name and where it leads (controlplane/discovery.py)
        lines += ["Service:", *service]
    if instances is not None:
        lines.append("Instances:")
        lines.append(_indent(_instance_rows(instances)) if instances else "  <none>")
    if events is not None:
        lines.append("Events:")
        lines.append(_indent(_event_rows(events, now)) if events else "  <none>")
    return "\n".join(lines)


@click.command("describe")
@click.argument("kind", callback=kind_argument, metavar="KIND")
@click.argument("name")
@connection_options
def describe_command(kind: str, name: str) -> None:
    """Show one object in detail, with placement reasons and recent events."""
    resource = kind

    def go(api: RestClient) -> str:
        obj = api.get(resource, name)
        instances: list[dict[str, Any]] | None = None
        if resource == "units":
            instances, _ = api.list_all("instances", field_selector=f"spec.unit={name}")
        elif resource == "machines":
            instances, _ = api.list_all("instances", field_selector=f"spec.machine={name}")
        events: list[dict[str, Any]] | None = None
        if resource != "events":
            events, _ = api.list_all(
                "events", field_selector=f"involvedObject.kind={KINDS[resource]},involvedObject.name={name}"
            )
        if instances is not None:
            instances.sort(key=lambda i: int((i.get("spec") or {}).get("index") or 0))
        service = None
        if resource == "units":
            endpoints = next(iter(api.list_all("endpoints", field_selector=f"metadata.name={name}")[0]), None)
            service = service_lines(obj, endpoints, domain=cluster_domain())
        return describe_text(resource, obj, instances=instances, events=events, service=service)

    echo(call(go))
