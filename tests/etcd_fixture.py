"""Real etcd servers for tests: one throwaway member, or a 3-member cluster to kill members of.

Tests of the etcd store run against Debian's etcd (``/usr/bin/etcd``, 3.4), never a fake.
Each server listens on free loopback ports with its data in a temp dir; ``stop()`` kills
it and removes the dir. Timers are shortened (heartbeat 50 ms, election 500 ms) so a
killed leader is replaced in about a second, and leases may be as short as 1 s.

    with EtcdServer() as etcd:            # etcd.url -> "http://127.0.0.1:PORT"
        ...
    with EtcdCluster(n=3) as cluster:     # cluster.urls -> three client URLs
        cluster.kill(0)                   # SIGKILL member 0
        cluster.restart(0)                # same data dir, rejoins
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from types import TracebackType

ETCD_BINARY = os.environ.get("CP_TEST_ETCD", shutil.which("etcd") or "/usr/bin/etcd")
TUNING = ["--heartbeat-interval", "50", "--election-timeout", "500"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def healthy(client_url: str, *, timeout: float = 0.5) -> bool:
    """True when the member answers /health with a leader known."""
    try:
        with urllib.request.urlopen(client_url + "/health", timeout=timeout) as resp:
            return bool(json.loads(resp.read()).get("health") == "true")
    except (OSError, ValueError):
        return False


class _Member:
    """One etcd process: its name, ports, data dir and log file."""

    def __init__(self, name: str, base: Path) -> None:
        self.name = name
        self.client_port = free_port()
        self.peer_port = free_port()
        self.data_dir = base / name
        self.log_path = base / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def start(self, initial_cluster: str, token: str) -> None:
        args = [
            ETCD_BINARY,
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.client_url,
            "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", initial_cluster,
            "--initial-cluster-token", token,
            "--initial-cluster-state", "new",
            "--logger", "zap",
            "--log-level", "warn",
            *TUNING,
        ]
        log = open(self.log_path, "ab")  # noqa: SIM115 -- handed to the child process
        try:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            log.close()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class EtcdCluster:
    """``n`` etcd members on loopback in one temp dir; members can be killed and restarted."""

    def __init__(self, n: int = 3, *, startup_timeout: float = 20.0) -> None:
        self.n = n
        self.startup_timeout = startup_timeout
        self._tmp = Path(tempfile.mkdtemp(prefix="cp-etcd-"))
        self._token = f"cp-test-{os.getpid()}-{time.monotonic_ns()}"
        self.members = [_Member(f"m{i}", self._tmp) for i in range(n)]
        self._initial_cluster = ",".join(f"{m.name}={m.peer_url}" for m in self.members)

    @property
    def urls(self) -> list[str]:
        return [m.client_url for m in self.members]

    @property
    def url(self) -> str:
        """The client URLs, comma-separated (the ``--etcd`` flag's form)."""
        return ",".join(self.urls)

    def index_of(self, endpoint: str) -> int:
        """The member serving ``host:port`` or ``http://host:port``."""
        port = int(endpoint.rstrip("/").rsplit(":", 1)[1])
        for i, member in enumerate(self.members):
            if member.client_port == port:
                return i
        raise KeyError(endpoint)

    def start(self) -> EtcdCluster:
        for member in self.members:
            member.start(self._initial_cluster, self._token)
        self.wait_healthy()
        return self

    def wait_healthy(self, members: list[int] | None = None) -> None:
        wanted = [self.members[i] for i in (members if members is not None else range(self.n))]
        deadline = time.monotonic() + self.startup_timeout
        while True:
            pending = [m for m in wanted if not healthy(m.client_url)]
            if not pending:
                return
            for member in pending:
                if member.process is not None and member.process.poll() is not None:
                    raise RuntimeError(f"etcd {member.name} exited:\n{member.log_tail()}")
            if time.monotonic() > deadline:
                names = ", ".join(m.name for m in pending)
                raise TimeoutError(f"etcd {names} not healthy:\n{pending[0].log_tail()}")
            time.sleep(0.05)

    def kill(self, index: int) -> None:
        """SIGKILL one member (no clean shutdown)."""
        self.members[index].kill()

    def restart(self, index: int, *, wait: bool = True) -> None:
        """Start a killed member again on its data dir and ports."""
        member = self.members[index]
        if member.running():
            return
        member.start(self._initial_cluster, self._token)
        if wait:
            self.wait_healthy([index])

    def stop(self) -> None:
        for member in self.members:
            member.kill()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> EtcdCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class EtcdServer(EtcdCluster):
    """A single throwaway etcd member."""

    def __init__(self, *, startup_timeout: float = 20.0) -> None:
        super().__init__(1, startup_timeout=startup_timeout)

    @property
    def url(self) -> str:
        return self.members[0].client_url

    def __enter__(self) -> EtcdServer:
        super().__enter__()
        return self
