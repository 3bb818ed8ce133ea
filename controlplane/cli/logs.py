"""``cpctl logs INSTANCE [-f] [--tail N]``: a container's output, proxied by the API server
from the agent of the instance's machine. Into a pipe or a file the bytes pass undecoded (as
with ``kubectl logs``); on a terminal they go through ``terminal.LogFilter``, so a container
cannot send the terminal escape sequences (pipe through ``cat`` for the raw bytes)."""

from __future__ import annotations

import sys

import click

from .common import call
from .completion import complete_names_of
from .config import connection_options
from .rest import RestClient
from .terminal import LogFilter


@click.command("logs")
@click.argument("instance", shell_complete=complete_names_of("instances"))
@click.option("-f", "--follow", is_flag=True, help="keep printing new output")
@click.option("--tail", type=click.IntRange(min=0), help="only the last N lines")
@connection_options
def logs_command(instance: str, follow: bool, tail: int | None) -> None:
    """Print the output of INSTANCE's container."""

    def go(api: RestClient) -> None:
        out = sys.stdout.buffer
        screen = LogFilter() if sys.stdout.isatty() else None
        for chunk in api.logs(instance, follow=follow, tail=tail):
            out.write(chunk if screen is None else screen.feed(chunk).encode())
            out.flush()
        if screen is not None:
            out.write(screen.feed(b"", final=True).encode())
            out.flush()

    call(go)
