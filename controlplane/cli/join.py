"""``cpctl machine join-config NAME``: the cloud-config that makes a new host a machine of the cluster.

It asks the server cpctl talks to for its ``/dist/`` index (the wheels every machine installs,
pinned by sha256) and for a JOIN token (``POST /api/v1/tokens``: role node, machine NAME,
``join: true``, 24 h; the agent trades it for its long-lived node token on first start), reads the
CA certificate cpctl is configured with (--ca, CPCTL_CA, config), and prints the rendered
template (controlplane/joinconfig.py) on stdout. ``--node-token`` writes a given token instead
(for a cluster whose node tokens live only in the server's --token-file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from controlplane.errors import NotFound
from controlplane.joinconfig import (
    DEFAULT_DOCKER,
    JOIN_TTL_SECONDS,
    JoinConfigError,
    JoinRequest,
    check_address,
    check_docker,
    check_machine,
    parse_metadata,
    parse_servers,
    render_join_config,
    wheels_of_index,
)

from .common import CLIError, call
from .config import config_from_context
from .rest import RestClient


def join_token_body(machine: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Token", "metadata": {},
            "spec": {"role": "node", "machine": machine, "ttlSeconds": JOIN_TTL_SECONDS, "join": True,
                     "description": f"join-config for machine {machine}"}}


def create_join_token(api: RestClient, machine: str) -> str:
    try:
        created = api.request("POST", "/api/v1/tokens", body=join_token_body(machine))
    except NotFound as err:
        raise CLIError("the server has no token API (/api/v1/tokens): pass --node-token with the token of "
                       f"a node line for {machine} in its --token-file") from err
    value = created.get("value") if isinstance(created, dict) else None
    if not isinstance(value, str) or not value:
        raise CLIError("the server created a token but sent no value")
    return value


def read_ca(path: str | None) -> str:
    if not path:
        return ""
    try:
        return Path(path).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as err:
        raise CLIError(f"cannot read the CA certificate {path}: {err}") from err


@click.group("machine")
def machine_group() -> None:
    """Machines joining the cluster."""


@machine_group.command("join-config")
@click.argument("name")
@click.option("--metadata", default="", metavar="k=v,...", help="the machine's labels (fleet metadata)")
@click.option("--address", default="", metavar="IP",
              help="where other machines reach its containers (default: its first address at boot)")
@click.option("--docker", default=DEFAULT_DOCKER, show_default=True, metavar="URL",
              help="the Docker the agent drives; ssh://USER@HOST[:PORT] installs no Docker on the machine")
@click.option("--server", "servers", default="", metavar="URL[,URL]",
              help="the API servers the machine joins (default: the one cpctl talks to)")
@click.option("--node-token", default="", metavar="TOKEN",
              help="write this node token instead of creating a join token")
def join_config_command(name: str, metadata: str, address: str, docker: str, servers: str, node_token: str) -> None:
    """Print a complete #cloud-config that joins a new host as machine NAME.

    cpctl reaches the server given before the verb (cpctl --server URL machine join-config ...),
    else CPCTL_SERVER or the config file; --server names what the machine itself uses."""
    config = config_from_context()
    try:
        check_machine(name)
        labels = parse_metadata(metadata)
        ip = check_address(address)
        docker_url = check_docker(docker)
        joined = parse_servers(servers or config.server)
    except JoinConfigError as err:
        raise click.BadParameter(str(err)) from err
    ca_pem = read_ca(config.ca)

    def go(api: RestClient) -> str:
        wheels = wheels_of_index(api.request("GET", "/dist/"), where=f"{config.server}/dist/")
        token = node_token or create_join_token(api, name)
        return render_join_config(JoinRequest(
            machine=name, servers=joined, node_token=token, wheels=wheels, metadata=labels, address=ip,
            docker=docker_url, ca_pem=ca_pem,
        ))

    try:
        text = call(go)
    except JoinConfigError as err:
        raise CLIError(str(err)) from err
    click.echo(text, nl=False)
