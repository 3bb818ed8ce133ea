"""``cpctl diff -f FILE|DIR|- [-f ...]``: what ``cpctl apply`` would change, as a unified diff.

For each object the server is asked what apply would produce (the same create or three-way merge
patch as apply, sent with ``?dryRun=All``), so defaults and admission are the server's own; the
diff is of the live object against that answer, without status and the metadata the server sets
(uid, resourceVersion, creationTimestamp) or apply's own annotation. A Secret's values are shown
as ``<redacted>`` (changed ones as ``<redacted: before>``/``<redacted: after>``). Exit codes as
kubectl's: 0 no difference, 1 differences, 2 an error.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

import click

from controlplane.errors import NotFound

from .apply import load_manifests
from .common import KIND_TO_RESOURCE, CLIError, call, ref
from .config import connection_options
from .merge import LAST_APPLIED, apply_patch, with_record
from .rest import RestClient
from .terminal import echo

HIDDEN_METADATA = ("uid", "resourceVersion", "creationTimestamp")


class DiffError(CLIError):
    """diff's errors exit 2 (1 means: there are differences)."""

    exit_code = 2


def shown(obj: Mapping[str, Any] | None) -> dict[str, Any]:
    """Pure: the part of an object a diff shows ({} for none)."""
    if obj is None:
        return {}
    out = {k: v for k, v in obj.items() if k != "status"}
    meta = {k: v for k, v in (out.get("metadata") or {}).items() if k not in HIDDEN_METADATA}
    if "annotations" in meta:
        meta["annotations"] = {k: v for k, v in (meta["annotations"] or {}).items() if k != LAST_APPLIED}
    out["metadata"] = meta
    return out


def redact_pair(live: dict[str, Any], merged: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Pure: a Secret's two sides with their values hidden, saying which changed."""
    before, after = dict(live.get("data") or {}), dict(merged.get("data") or {})
    hidden_before = {k: "<redacted>" if after.get(k) == v else "<redacted: before>" for k, v in before.items()}
    hidden_after = {k: "<redacted>" if before.get(k) == v else "<redacted: after>" for k, v in after.items()}
    live = {**live, "data": hidden_before} if "data" in live else live
    merged = {**merged, "data": hidden_after} if "data" in merged else merged
    return live, merged


def render_diff(name: str, live: Mapping[str, Any] | None, merged: Mapping[str, Any]) -> str:
    """Pure: the unified diff of ``live`` (None: not there yet) against ``merged``; "" when equal."""
    from .printers import dump_yaml

    before, after = shown(live), shown(merged)
    if merged.get("kind") == "Secret":
        before, after = redact_pair(before, after)
    if before == after:
        return ""
    old = dump_yaml(before).splitlines(keepends=True) if before else []
    new = dump_yaml(after).splitlines(keepends=True)
    return "".join(difflib.unified_diff(old, new, fromfile=f"live/{name}", tofile=f"merged/{name}"))


def merged_object(api: RestClient, obj: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """(live or None, what apply would make of it), asked of the server with dryRun=All."""
    resource = KIND_TO_RESOURCE[obj["kind"]]
    name = obj["metadata"]["name"]
    try:
        live = api.get(resource, name)
    except NotFound:
        return None, api.create(resource, with_record(obj), dry_run=True)
    patch = apply_patch(obj, live)
    if not patch:
        return live, live
    patch.setdefault("metadata", {})["resourceVersion"] = live["metadata"]["resourceVersion"]
    return live, api.patch(resource, name, patch, dry_run=True)


@click.command("diff")
@click.option("-f", "--filename", "paths", multiple=True, required=True, metavar="FILE|DIR|-",
              help="YAML or JSON file, a directory of them, or '-' for stdin (repeatable)")
@connection_options
def diff_command(paths: tuple[str, ...]) -> None:
    """Show what apply -f would change: exit 0 no difference, 1 differences, 2 error."""
    try:
        objects = load_manifests(paths)

        def go(api: RestClient) -> bool:
            changed = False
            for obj in objects:
                live, merged = merged_object(api, obj)
                text = render_diff(ref(KIND_TO_RESOURCE[obj["kind"]], obj["metadata"]["name"]), live, merged)
                if text:
                    changed = True
                    echo(text, nl=False)
            return changed

        changed = call(go)
    except CLIError as err:  # call() made every CPError one
        raise DiffError(err.format_message(), details=err.details) from err
    if changed:
        raise SystemExit(1)
