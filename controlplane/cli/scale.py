"""``cpctl scale NAME --replicas N``: the Unit's scale subresource, so only replicas change."""

from __future__ import annotations

import click

from .common import call, ref
from .completion import complete_names_of
from .config import connection_options
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
@connection_options
def scale_command(name: str, replicas: int, wait: bool, timeout: float) -> None:
    """Set the number of copies of unit NAME."""

    def go(api: RestClient) -> None:
        api.put_scale(name, replicas)
        echo(f"{ref('units', name)} scaled to {replicas}")
        if wait:
            wait_for_units(api, [name], timeout=timeout)

    call(go)
