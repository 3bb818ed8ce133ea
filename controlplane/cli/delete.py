"""``cpctl delete KIND NAME``: remove an object; ``--wait`` until it (and a unit's instances,
which the controllers stop and remove) are gone."""

from __future__ import annotations

import click

from .common import call, ref
from .completion import complete_kind, complete_name
from .config import connection_options
from .dryrun import CLIENT, NONE, dry_run_option, dry_run_suffix
from .durations import DURATION
from .get import kind_argument
from .rest import RestClient
from .terminal import echo
from .wait import wait_for_deletion


@click.command("delete")
@click.argument("kind", callback=kind_argument, metavar="KIND", shell_complete=complete_kind)
@click.argument("name", shell_complete=complete_name)
@click.option("--wait/--no-wait", default=False, show_default=True,
              help="wait until the object and a unit's instances are gone")
@click.option("--timeout", type=DURATION, default=60.0, show_default=True)
@dry_run_option
@connection_options
def delete_command(kind: str, name: str, wait: bool, timeout: float, dry_run: str) -> None:
    """Delete object NAME of KIND."""
    resource = kind
    if dry_run == CLIENT:
        echo(f"{ref(resource, name)} deleted{dry_run_suffix(dry_run)}")
        return

    def go(api: RestClient) -> None:
        api.delete(resource, name, dry_run=dry_run != NONE)
        echo(f"{ref(resource, name)} deleted{dry_run_suffix(dry_run)}")
        if wait and dry_run == NONE:
            wait_for_deletion(api, resource, name, timeout=timeout)

    call(go)
