"""``cpctl scale NAME --replicas N``: the Unit's scale subresource, so only replicas change."""

from __future__ import annotations

import click

from .common import call, ref
from .completion import complete_names_of
from .config import connection_options
from .dryrun import CLIENT, NONE, dry_run_option, dry_run_suffix
from .durations import DURATION
from .rest import RestClient
from .run import DEFAULT_TIMEOUT
from .terminal import echo
from .wait import wait_for_units


@click.command("scale")
@click.argument("name", shell_complete=complete_names_of("units"))
@click.option("--replicas", type=click.IntRange(min=0), required=True, help="the new number of copies")
@click.option("--wait/--no-wait", default=False, show_default=True, help="wait until every instance is ready")
@click.option("--timeout", type=DURATION, default=DEFAULT_TIMEOUT, show_default=True)
@dry_run_option
@connection_options
def scale_command(name: str, replicas: int, wait: bool, timeout: float, dry_run: str) -> None:
    """Set the number of copies of unit NAME."""
    if dry_run == CLIENT:
        echo(f"{ref('units', name)} scaled to {replicas}{dry_run_suffix(dry_run)}")
        return

    def go(api: RestClient) -> None:
        api.put_scale(name, replicas, dry_run=dry_run != NONE)
        echo(f"{ref('units', name)} scaled to {replicas}{dry_run_suffix(dry_run)}")
        if wait and dry_run == NONE:
            wait_for_units(api, [name], timeout=timeout)

    call(go)
