"""Output formats of ``cpctl get`` and friends: table, wide, json, yaml and name (and, through
cli/outputs.py, jsonpath=TEMPLATE and custom-columns=SPEC).

Pure functions of (resource, objects, now) so every column is unit-tested without a server.
Tables are plain text padded kubectl-style (no rich), which keeps them greppable and cheap; yaml
is imported only to print YAML.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Sequence
from typing import Any

from controlplane.model import API_VERSION, DEFAULT_PROTOCOL

from .common import KINDS, ref
from .outputs import PLAIN_OUTPUTS, OutputFormat, column_rows, jsonpath_text, parse_output
from .terminal import safe_text

OUTPUTS = PLAIN_OUTPUTS
NONE = "<none>"
Row = list[str]


def parse_time(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def age(timestamp: str | None, now: dt.datetime) -> str:
    """kubectl's short age: ``42s``, ``5m``, ``3h``, ``2d``; ``<unknown>`` without a time."""
    then = parse_time(timestamp)
    if then is None:
        return "<unknown>"
    seconds = max(0, int((now - then).total_seconds()))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 2 * 3600:
        return f"{seconds // 60}m"
    if seconds < 2 * 86400:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def format_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Columns padded to their widest cell, three spaces apart, the last one unpadded. A cell is
    one line of terminal-safe text (server data may hold escape sequences)."""
    all_rows = [list(headers)] + [[safe_text(str(c), multiline=False) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in all_rows) for i in range(len(headers))]
    lines = []
    for row in all_rows:
        cells = [cell.ljust(widths[i]) if i < len(row) - 1 else cell for i, cell in enumerate(row)]
        lines.append("   ".join(cells).rstrip())
    return "\n".join(lines)


def labels_text(labels: dict[str, str] | None) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted((labels or {}).items())) or NONE


def _meta(obj: dict[str, Any]) -> dict[str, Any]:
    return obj.get("metadata") or {}


def _spec(obj: dict[str, Any]) -> dict[str, Any]:
    return obj.get("spec") or {}


def _status(obj: dict[str, Any]) -> dict[str, Any]:
    return obj.get("status") or {}


def unit_desired(unit: dict[str, Any]) -> int:
    """Desired copies: ``spec.replicas``, or for a global unit the instances that exist."""
    if _spec(unit).get("global"):
        return int(_status(unit).get("replicas") or 0)
    return int(_spec(unit).get("replicas") or 0)


def unit_image(unit: dict[str, Any]) -> str:
    spec = _spec(unit)
    proxy = spec.get("proxy") or {}
    if proxy.get("kind") == "loadbalancer":
        return f"<lb: {proxy.get('target', '?')}>"
    if proxy.get("kind") == "edge":
        return f"<edge: {proxy.get('domain', '?')}>"
    return str(spec.get("image") or NONE)


def unit_ports(unit: dict[str, Any]) -> str:
    parts = []
    for port in _spec(unit).get("ports") or []:
        host = port.get("hostPort") or 0
        text = f"{port.get('containerPort')}:{host}" if host else str(port.get("containerPort"))
        if port.get("protocol", DEFAULT_PROTOCOL) != DEFAULT_PROTOCOL:
            text += f"/{port['protocol']}"
        parts.append(text)
    return ",".join(parts) or NONE


def unit_placement(unit: dict[str, Any]) -> str:
    spec = _spec(unit)
    placement = spec.get("placement") or {}
    parts = []
    if spec.get("global"):
        parts.append("global")
    if placement.get("machine"):
        parts.append(f"machine={placement['machine']}")
    if placement.get("machineOf"):
        parts.append(f"machineOf={placement['machineOf']}")
    for key, values in sorted((placement.get("machineMetadata") or {}).items()):
        parts.append(f"{key}={'|'.join(values)}")
    for glob in placement.get("conflicts") or []:
        parts.append(f"conflicts={glob}")
    if placement.get("spread", "required") != "required":
        parts.append(f"spread={placement['spread']}")
    return ",".join(parts) or NONE


def instance_ports(instance: dict[str, Any]) -> str:
    parts = []
    for port in _status(instance).get("hostPorts") or []:
        text = f"{port.get('hostPort')}->{port.get('containerPort')}"
        if port.get("protocol", DEFAULT_PROTOCOL) != DEFAULT_PROTOCOL:
            text += f"/{port['protocol']}"
        parts.append(text)
    return ",".join(parts) or NONE


def is_up(instance: dict[str, Any]) -> bool:
    status = _status(instance)
    return status.get("phase") == "Running" and bool(status.get("ready"))


def _units(items: list[dict[str, Any]], wide: bool, now: dt.datetime) -> tuple[Row, list[Row]]:
    headers = ["NAME", "REPLICAS", "IMAGE", "AGE"] + (["PORTS", "PLACEMENT", "LABELS"] if wide else [])
    rows = []
    for unit in items:
        ready = int(_status(unit).get("readyReplicas") or 0)
        row = [_meta(unit).get("name", ""), f"{ready}/{unit_desired(unit)}", unit_image(unit),
               age(_meta(unit).get("creationTimestamp"), now)]
        if wide:
            row += [unit_ports(unit), unit_placement(unit), labels_text(_meta(unit).get("labels"))]
        rows.append(row)
    return headers, rows


def _instances(items: list[dict[str, Any]], wide: bool, now: dt.datetime) -> tuple[Row, list[Row]]:
    headers = ["NAME", "UNIT", "MACHINE", "PHASE", "READY", "ADDRESS", "PORTS", "RESTARTS", "AGE"]
    if wide:
        headers += ["REASON", "MESSAGE"]
    rows = []
    for inst in items:
        spec, status = _spec(inst), _status(inst)
        row = [
            _meta(inst).get("name", ""), str(spec.get("unit") or NONE), str(spec.get("machine") or NONE),
            str(status.get("phase") or "Pending"), "yes" if status.get("ready") else "no",
            str(status.get("address") or NONE), instance_ports(inst), str(status.get("restarts") or 0),
            age(_meta(inst).get("creationTimestamp"), now),
        ]
        if wide:
            row += [str(status.get("reason") or NONE), " ".join(str(status.get("message") or "").split()) or NONE]
        rows.append(row)
    return headers, rows


def _machines(items: list[dict[str, Any]], wide: bool, now: dt.datetime) -> tuple[Row, list[Row]]:
    headers = ["NAME", "STATE", "ADDRESS", "LABELS", "SCHEDULABLE", "AGE"]
    if wide:
        headers += ["CPU", "MEMORY", "ALLOCATED", "AGENT"]
    rows = []
    for machine in items:
        status = _status(machine)
        row = [
            _meta(machine).get("name", ""), str(status.get("state") or "NotReady"), str(status.get("address") or NONE),
            labels_text(_meta(machine).get("labels")), "no" if _spec(machine).get("unschedulable") else "yes",
            age(_meta(machine).get("creationTimestamp"), now),
        ]
        if wide:
            capacity = status.get("capacity") or {}
            allocated = status.get("allocated") or {}
            row += [
                f"{capacity.get('cpu', 0):g}", f"{capacity.get('memoryMB', 0)}Mi",
                f"{allocated.get('cpu', 0):g}/{allocated.get('memoryMB', 0)}Mi",
                str(status.get("agentVersion") or NONE),
            ]
        rows.append(row)
    return headers, rows


def _endpoints(items: list[dict[str, Any]], wide: bool, now: dt.datetime) -> tuple[Row, list[Row]]:
    headers = ["NAME", "ENDPOINTS", "AGE"]
    rows = []
    for ep in items:
        addresses = [f"{a.get('address')}:{a.get('port')}" for a in ep.get("endpoints") or []]
        text = ",".join(addresses) if wide or len(addresses) <= 3 else ",".join(addresses[:3]) + f" + {len(addresses) - 3} more"
        rows.append([_meta(ep).get("name", ""), text or NONE, age(_meta(ep).get("creationTimestamp"), now)])
    return headers, rows


def _events(items: list[dict[str, Any]], wide: bool, now: dt.datetime) -> tuple[Row, list[Row]]:
    headers = ["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    rows = []
    ordered = sorted(items, key=lambda e: str(e.get("lastTimestamp") or e.get("timestamp")
                                               or _meta(e).get("creationTimestamp") or ""))
    for event in ordered:
        involved = event.get("involvedObject") or {}
        obj = f"{str(involved.get('kind', '')).lower()}/{involved.get('name', '')}"
        when = event.get("lastTimestamp") or event.get("timestamp") or _meta(event).get("creationTimestamp")
        rows.append([age(when, now), str(event.get("type") or "Normal"), str(event.get("reason") or ""), obj,
                     " ".join(str(event.get("message") or "").split())])
    return headers, rows


def _secrets(items: list[dict[str, Any]], wide: bool, now: dt.datetime) -> tuple[Row, list[Row]]:
    """Keys only, never values (kubectl's DATA column is the count)."""
    headers = ["NAME", "DATA", "AGE"] + (["KEYS"] if wide else [])
    rows = []
    for secret in items:
        keys = sorted(secret.get("data") or {})
        row = [_meta(secret).get("name", ""), str(len(keys)), age(_meta(secret).get("creationTimestamp"), now)]
        if wide:
            row.append(",".join(keys) or NONE)
        rows.append(row)
    return headers, rows


TABLES = {"units": _units, "instances": _instances, "machines": _machines, "endpoints": _endpoints,
          "events": _events, "secrets": _secrets}


def table(resource: str, items: list[dict[str, Any]], *, wide: bool = False, now: dt.datetime | None = None,
          headers: bool = True) -> str:
    """The table for ``items`` of ``resource`` (``headers=False`` for rows under an earlier header)."""
    now = now or dt.datetime.now(dt.UTC)
    head, rows = TABLES[resource](items, wide, now)
    return without_header(format_table(head, rows), headers=headers)


def without_header(text: str, *, headers: bool) -> str:
    """``text`` as is, or without its first line (``--no-headers``, rows under an earlier header)."""
    return text if headers else "\n".join(text.splitlines()[1:])


def dump_yaml(data: Any) -> str:
    import yaml  # ~10 ms: only for -o yaml and describe

    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    return str(yaml.dump(data, Dumper=dumper, sort_keys=False, default_flow_style=False))


def render(resource: str, items: list[dict[str, Any]], output: str | OutputFormat, *, single: bool = False,
           now: dt.datetime | None = None, resource_version: str = "", headers: bool = True) -> str:
    """``items`` in ``output`` format; ``single`` prints one object itself rather than a List;
    ``headers=False`` leaves out a table's header line."""
    form = output if isinstance(output, OutputFormat) else parse_output(output)
    output = form.kind
    if output in ("table", "wide"):
        if not items:
            return ""
        return table(resource, items, wide=output == "wide", now=now, headers=headers)
    if output == "custom-columns":
        if not items:
            return ""
        head, rows = column_rows(items, form.columns)
        return without_header(format_table(head, rows), headers=headers)
    if output == "name":
        return "\n".join(ref(resource, _meta(o).get("name", "")) for o in items)
    data: Any
    if single and len(items) == 1:
        data = items[0]
    else:
        data = {"kind": f"{KINDS[resource]}List", "apiVersion": API_VERSION,
                "metadata": {"resourceVersion": resource_version}, "items": items}
    if output == "json":
        return json.dumps(data, indent=2)
    if output == "yaml":
        return dump_yaml(data).rstrip("\n")
    if output == "jsonpath":
        return jsonpath_text(form, data)
    raise ValueError(f"unknown output format {output!r}")
