"""``cpctl dev up | status | down``: a whole local cluster on this machine (controlplane/dev.py does the work)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from controlplane import dev as devlib
from controlplane.model import DEFAULT_PROXY_IMAGE

from .durations import Duration
from .terminal import echo

STATE_DIR_HELP = "state folder [env CPCTL_DEV_STATE_DIR; default ~/.local/state/cpctl-dev]"


def _fail(err: Exception) -> None:
    echo(f"error: {err}", err=True)
    raise SystemExit(1)


@click.group("dev")
def dev() -> None:
    """A local cluster: etcd, cp-apiserver and N agents on this machine (machines m1..mN at 127.0.1.1..N)."""


@dev.command("up")
@click.option("--machines", type=click.IntRange(1, 254), default=4, show_default=True, help="number of agents")
@click.option("--state-dir", type=click.Path(file_okay=False), help=STATE_DIR_HELP)
@click.option("--cluster", default=devlib.DEFAULT_CLUSTER, show_default=True,
              help="name in the cp.cluster label of every container")
@click.option("--api-port", type=click.IntRange(0, 65535), default=devlib.DEFAULT_API_PORT, show_default=True,
              help="API server port on 127.0.0.1 (0: any free port; a taken port falls back to a free one)")
@click.option("--agent-port", type=click.IntRange(0, 65535), default=devlib.DEFAULT_AGENT_PORT, show_default=True,
              help="agents' log port on their machine address (0: any free port)")
@click.option("--machine-ttl", type=Duration(minimum=1, maximum=3600), default=5, show_default=True,
              help="time without heartbeats before a machine is NotReady (whole seconds)")
@click.option("--proxy-image", default=DEFAULT_PROXY_IMAGE, show_default=True)
@click.option("--timeout", type=Duration(minimum=1), default=60, show_default=True)
@click.option("--insecure-http", is_flag=True,
              help="serve the API over plain HTTP (debugging); by default HTTPS with a cluster CA made for it")
def up_command(machines: int, state_dir: str | None, cluster: str, api_port: int, agent_port: int,
               machine_ttl: float, proxy_image: str, timeout: float, insecure_http: bool) -> None:
    """Start the cluster in the background and write the cpctl config (server, token, CA)."""
    options = devlib.UpOptions(machines=machines, state_dir=Path(state_dir) if state_dir else None, cluster=cluster,
                               api_port=api_port, agent_port=agent_port, machine_ttl=round(machine_ttl),
                               proxy_image=proxy_image, timeout=timeout, insecure_http=insecure_http)
    try:
        state = devlib.up(options, echo=echo)
    except devlib.DevError as err:
        _fail(err)
        return
    if state.was_up:
        return
    echo("")
    echo(f"Up: {len(state.machines)} machines; logs in {state.state_dir / 'logs'}.")
    echo("Try:  cpctl list-machines    |  cpctl dev status    |  cpctl dev down (removes everything)")


@dev.command("status")
@click.option("--state-dir", type=click.Path(file_okay=False), help=STATE_DIR_HELP)
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
def status_command(state_dir: str | None, output: str) -> None:
    """Each process (alive or dead, pid, log) and each machine's state. Exit 1 when something is down."""
    try:
        info = devlib.status(state_dir)
    except devlib.DevError as err:
        _fail(err)
        return
    if info is None:
        folder = devlib.resolve_state_dir(state_dir)
        if output == "json":
            echo(json.dumps({"stateDir": str(folder), "up": False}))
        else:
            echo(f"no dev cluster in {folder} (start one with `cpctl dev up`)")
        raise SystemExit(1)
    healthy = all(p["alive"] for p in info["processes"]) and info["apiReachable"]
    if output == "json":
        echo(json.dumps({**info, "up": healthy}, indent=2))
    else:
        echo(f"cluster {info['cluster']}  server {info['server']}  state folder {info['stateDir']}")
        echo("")
        echo(f"{'PROCESS':<14}{'STATE':<7}{'PID':>8}  LOG")
        for p in info["processes"]:
            echo(f"{p['name']:<14}{'alive' if p['alive'] else 'DEAD':<7}{p['pid']:>8}  {p['log']}")
        echo("")
        if not info["apiReachable"]:
            echo("machines: the API server does not answer")
        else:
            echo(f"{'MACHINE':<10}{'STATE':<10}{'ADDRESS':<14}INSTANCES")
            for m in info["machines"]:
                state = m["state"] + (",cordoned" if m["unschedulable"] else "")
                echo(f"{m['name']:<10}{state:<10}{m['address']:<14}{m['instances']}")
        if info["containers"] is not None:
            echo(f"\ncontainers labelled cp.cluster={info['cluster']}: {info['containers']}")
    if not healthy:
        raise SystemExit(1)


@dev.command("down")
@click.option("--state-dir", type=click.Path(file_okay=False), help=STATE_DIR_HELP)
def down_command(state_dir: str | None) -> None:
    """Stop every process `dev up` started, remove the cluster's containers and the state folder."""
    try:
        devlib.down(state_dir, echo=echo)
    except devlib.DevError as err:
        _fail(err)
