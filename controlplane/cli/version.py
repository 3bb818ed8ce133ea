"""``cpctl version``: this client's version and, when it answers, the server's."""

from __future__ import annotations

import json

import click

from controlplane import __version__
from controlplane.errors import CPError

from .common import error_line, make_client
from .config import connection_options
from .printers import dump_yaml
from .terminal import echo


@click.command("version")
@click.option("-o", "--output", type=click.Choice(["text", "json", "yaml"]), default="text", show_default=True)
@connection_options
def version_command(output: str) -> None:
    """Print the client and server versions (the server's only when reachable)."""
    server: dict[str, str] = {}
    with make_client() as api:
        try:
            server["version"] = str((api.version() or {}).get("version") or "unknown")
        except CPError as err:
            server["error"] = error_line(err)
        server = {"server": api.server, **server}  # the one that answered
    data = {"client": {"version": __version__}, "server": server}
    if output == "json":
        echo(json.dumps(data, indent=2))
    elif output == "yaml":
        echo(dump_yaml(data).rstrip("\n"))
    else:
        echo(f"Client Version: {__version__}")
        if "version" in server:
            echo(f"Server Version: {server['version']} ({server['server']})")
        else:
            echo(f"Server Version: unknown ({server['error']})")
