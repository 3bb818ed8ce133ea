"""``cpctl version``: this client's version and, when it answers, the server's."""

from __future__ import annotations

import json

import click

from controlplane import __version__
from controlplane.client import Client
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
    import asyncio

    client = make_client()
    server: dict[str, str] = {"server": client.server}

    async def go(api: Client) -> None:
        async with api:
            try:
                server["version"] = str((await api.version()).get("version") or "unknown")
            except CPError as err:
                server["error"] = error_line(err)

    asyncio.run(go(client))
    data = {"client": {"version": __version__}, "server": server}
    if output == "json":
        echo(json.dumps(data, indent=2))
    elif output == "yaml":
        echo(dump_yaml(data).rstrip("\n"))
    else:
        echo(f"Client Version: {__version__}")
        if "version" in server:
            echo(f"Server Version: {server['version']} ({client.server})")
        else:
            echo(f"Server Version: unknown ({server['error']})")
