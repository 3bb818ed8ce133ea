"""``cpctl logs INSTANCE [-f] [--tail N]``: a container's output, proxied by the API server
from the agent of the instance's machine; bytes are passed through undecoded."""

from __future__ import annotations

import sys

import click

from controlplane.client import Client

from .common import call
from .config import connection_options


@click.command("logs")
@click.argument("instance")
@click.option("-f", "--follow", is_flag=True, help="keep printing new output")
@click.option("--tail", type=click.IntRange(min=0), help="only the last N lines")
@connection_options
def logs_command(instance: str, follow: bool, tail: int | None) -> None:
    """Print the output of INSTANCE's container."""

    async def go(api: Client) -> None:
        out = sys.stdout.buffer
        async for chunk in api.logs(instance, follow=follow, tail=tail):
            out.write(chunk)
            out.flush()

    call(go)
