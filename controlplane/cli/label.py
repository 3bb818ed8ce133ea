"""``cpctl label|annotate KIND NAME KEY=VALUE... KEY-... [--overwrite]``: kubectl's habit.

``KEY=VALUE`` sets, ``KEY-`` removes. Changing a key that has another value already needs
``--overwrite`` (as kubectl: the mistake it prevents is clobbering someone's label); setting the
value it has is fine, removing a key that is not there is a warning. The change is one merge
patch of ``metadata.labels`` (or ``annotations``) with the resourceVersion it was checked
against, read again on a conflict; the server validates keys and values (422 naming the field).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import click

from controlplane.errors import Conflict

from .common import CLIError, call, ref, resolve_kind
from .config import connection_options
from .dryrun import CLIENT, NONE, dry_run_option, dry_run_suffix
from .rest import RestClient
from .terminal import echo

ATTEMPTS = 5


def parse_changes(args: Sequence[str], *, what: str = "label") -> tuple[dict[str, str], list[str]]:
    """Pure: ``KEY=VALUE`` and ``KEY-`` arguments -> (to set, to remove); a key in both is an error."""
    to_set: dict[str, str] = {}
    to_remove: list[str] = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if sep and key:
            if key in to_set and to_set[key] != value:
                raise click.BadParameter(f"{what} {key!r} is given twice", param_hint="KEY=VALUE")
            to_set[key] = value
        elif not sep and arg.endswith("-") and len(arg) > 1:
            to_remove.append(arg[:-1])
        else:
            raise click.BadParameter(f"{arg!r}: expected KEY=VALUE to set or KEY- to remove", param_hint="KEY=VALUE")
    both = sorted(set(to_set) & set(to_remove))
    if both:
        raise click.BadParameter(f"{what} {both[0]!r} is both set and removed", param_hint="KEY=VALUE")
    return to_set, to_remove


def plan_changes(current: Mapping[str, str], to_set: Mapping[str, str], to_remove: Sequence[str], *,
                 overwrite: bool, what: str = "label") -> tuple[dict[str, str | None], list[str]]:
    """Pure: (the map's merge patch, warnings). Refuses (CLIError) to change a value without ``overwrite``."""
    patch: dict[str, str | None] = {}
    warnings: list[str] = []
    for key, value in to_set.items():
        if key in current and current[key] != value and not overwrite:
            raise CLIError(f"{what} {key!r} already has a value ({current[key]}), and --overwrite is false")
        if current.get(key) != value:
            patch[key] = value
    for key in to_remove:
        if key in current:
            patch[key] = None
        else:
            warnings.append(f"warning: {what} {key!r} not found")
    return patch, warnings


def change_metadata(api: RestClient, resource: str, name: str, field: str, args: Sequence[str], *,
                    overwrite: bool, dry_run: bool) -> bool:
    """Apply the change to ``metadata.<field>``; True when something changed."""
    what = "label" if field == "labels" else "annotation"
    to_set, to_remove = parse_changes(args, what=what)
    for attempt in range(ATTEMPTS):
        obj = api.get(resource, name)
        meta = obj.get("metadata") or {}
        patch, warnings = plan_changes(meta.get(field) or {}, to_set, to_remove, overwrite=overwrite, what=what)
        for line in warnings if attempt == 0 else []:
            echo(line, err=True)
        if not patch:
            return False
        body: dict[str, Any] = {"metadata": {field: patch, "resourceVersion": meta.get("resourceVersion", "")}}
        try:
            api.patch(resource, name, body, dry_run=dry_run)
            return True
        except Conflict:
            if attempt == ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def _command(field: str, verb: str, done: str) -> click.Command:
    @click.command(verb)
    @click.argument("kind", callback=lambda ctx, param, value: resolve_kind(value), metavar="KIND")
    @click.argument("name")
    @click.argument("changes", nargs=-1, required=True, metavar="KEY=VALUE... KEY-...")
    @click.option("--overwrite", is_flag=True, help="allow changing a value that is set already")
    @dry_run_option
    @connection_options
    def command(kind: str, name: str, changes: tuple[str, ...], overwrite: bool, dry_run: str) -> None:
        parse_changes(changes, what=field[:-1])  # usage errors before any request
        if dry_run == CLIENT:
            echo(f"{ref(kind, name)} {done}{dry_run_suffix(dry_run)}")
            return

        def go(api: RestClient) -> None:
            changed = change_metadata(api, kind, name, field, changes, overwrite=overwrite, dry_run=dry_run != NONE)
            echo(f"{ref(kind, name)} {done if changed else 'not ' + done}{dry_run_suffix(dry_run)}")

        call(go)

    command.help = f"Set (KEY=VALUE) or remove (KEY-) {field} of object NAME of KIND."
    return command


label_command = _command("labels", "label", "labeled")
annotate_command = _command("annotations", "annotate", "annotated")
