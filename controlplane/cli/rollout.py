"""``cpctl rollout status|history|undo UNIT``: a unit's rollouts, as kubectl shows a Deployment's.

A rollout is a change of the unit's template (its spec but for what does not roll: replicas;
model.NOT_TEMPLATE). The server keeps the last templates (api/revisions.py; ``GET
/api/v1/units/NAME/revisions``), numbered from 1:

- ``status`` waits (``--timeout``, exit 3 when missed) until every wanted instance is of the
  unit's current generation, Running and ready (the same goal as ``cpctl run``'s wait);
- ``history`` lists the revisions (``--revision N``: that one's template as YAML);
- ``undo`` puts the previous revision's template (``--to-revision N``: that one's) back, keeping
  the replicas; it is a new rollout, so it becomes the newest revision. It carries the
  resourceVersion it read, so a change made meanwhile is a 409, not overwritten.
"""

from __future__ import annotations

from typing import Any

import click

from controlplane.model import NOT_TEMPLATE

from .common import CLIError, call, ref
from .config import connection_options
from .dryrun import CLIENT, NONE, dry_run_option, dry_run_suffix, print_objects
from .durations import DURATION
from .rest import RestClient
from .run import DEFAULT_TIMEOUT
from .terminal import echo
from .wait import wait_for_units


@click.group("rollout")
def rollout_group() -> None:
    """Watch, list and undo a unit's rollouts (template changes)."""


def history_table(revisions: list[dict[str, Any]]) -> str:
    """Pure: the ``rollout history`` table, oldest first."""
    from .printers import format_table

    rows = [[str(r.get("revision", "")), str(r.get("generation", "")), str(r.get("timestamp") or "<unknown>"),
             str(r.get("changeCause") or "<none>")] for r in revisions]
    return format_table(["REVISION", "GENERATION", "CREATED", "CHANGE-CAUSE"], rows)


def pick_revision(revisions: list[dict[str, Any]], to_revision: int | None) -> dict[str, Any]:
    """Pure: the revision ``undo`` returns to: ``to_revision``, or the one before the newest."""
    if to_revision:
        for revision in revisions:
            if revision.get("revision") == to_revision:
                return revision
        known = ", ".join(str(r.get("revision")) for r in revisions)
        raise CLIError(f"revision {to_revision} not found; the history has {known}")
    if len(revisions) < 2:
        raise CLIError("no earlier revision to undo to (the unit has run one template only)")
    return revisions[-2]


def rolled_back(unit: dict[str, Any], template: dict[str, Any]) -> dict[str, Any]:
    """Pure: ``unit`` with ``template`` as its spec, keeping what does not roll (replicas) and the
    resourceVersion it was read at."""
    spec = unit.get("spec") or {}
    kept = {key: spec[key] for key in NOT_TEMPLATE if key in spec}
    body = {k: v for k, v in unit.items() if k != "status"}
    body["spec"] = {**template, **kept}
    return body


@rollout_group.command("status")
@click.argument("unit")
@click.option("--timeout", type=DURATION, default=DEFAULT_TIMEOUT, show_default=True,
              help="how long to wait: 30s, 2m, 1h30m or seconds")
@connection_options
def status_command(unit: str, timeout: float) -> None:
    """Wait until UNIT's newest template runs on every wanted instance, ready."""

    def go(api: RestClient) -> None:
        api.get("units", unit)  # a 404 is an error, not a wait
        wait_for_units(api, [unit], timeout=timeout)
        echo(f"{ref('units', unit)} successfully rolled out")

    call(go)


@rollout_group.command("history")
@click.argument("unit")
@click.option("--revision", type=click.IntRange(min=1), help="show this revision's template")
@connection_options
def history_command(unit: str, revision: int | None) -> None:
    """List UNIT's revisions (the templates it ran), oldest first."""

    def go(api: RestClient) -> None:
        revisions = api.revisions(unit).get("items") or []
        if revision is None:
            echo(history_table(revisions))
            return
        print_objects([pick_revision(revisions, revision)["template"]])

    call(go)


@rollout_group.command("undo")
@click.argument("unit")
@click.option("--to-revision", type=click.IntRange(min=1), help="the revision to go back to (default: the previous)")
@dry_run_option
@connection_options
def undo_command(unit: str, to_revision: int | None, dry_run: str) -> None:
    """Roll UNIT back to its previous template (or --to-revision N)."""

    def go(api: RestClient) -> None:
        revisions = api.revisions(unit).get("items") or []
        target = pick_revision(revisions, to_revision)
        if revisions and target is revisions[-1]:
            echo(f"{ref('units', unit)} skipped rollback (revision {target['revision']} is the current one)")
            return
        body = rolled_back(api.get("units", unit), target["template"])
        if dry_run == CLIENT:
            print_objects([body])
            return
        api.replace("units", unit, body, dry_run=dry_run != NONE)
        echo(f"{ref('units', unit)} rolled back to revision {target['revision']}{dry_run_suffix(dry_run)}")

    call(go)
