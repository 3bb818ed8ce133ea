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

TLS and auth: ``EtcdServer(tls=pki)`` (a tests/tls_helper.Pki) serves https:// with
``--client-cert-auth`` (clients need a certificate signed by ``pki.ca``); ``extra_args`` go to
every member's command line (``["--auth-token-ttl", "2"]``); ``etcdctl(...)`` runs etcdctl
against the members (as ``user`` when given, e.g. "root:PW"). ``run_as={0: uid}`` runs member 0
as that uid (setpriv), so a fault test can cut its own connections off (tests/faults/partition.py).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from types import TracebackType

from tls_helper import Pki

ETCD_BINARY = os.environ.get("CP_TEST_ETCD", shutil.which("etcd") or "/usr/bin/etcd")
TUNING = ["--heartbeat-interval", "50", "--election-timeout", "500"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def client_ssl_context(pki: Pki) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    return context


def healthy(client_url: str, *, timeout: float = 0.5, pki: Pki | None = None) -> bool:
    """True when the member answers /health with a leader known."""
    context = client_ssl_context(pki) if pki is not None else None
    try:
        with urllib.request.urlopen(client_url + "/health", timeout=timeout, context=context) as resp:
            return bool(json.loads(resp.read()).get("health") == "true")
    except (OSError, ValueError):
        return False


class _Member:
    """One etcd process: its name, ports, data dir and log file."""

    def __init__(self, name: str, base: Path, *, tls: Pki | None = None, extra_args: list[str] | None = None) -> None:
        self.name = name
        self.tls = tls
        self.extra_args = list(extra_args or [])
        self.client_port = free_port()
        self.peer_port = free_port()
        self.data_dir = base / name
        self.log_path = base / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.run_as: int | None = None  # a uid: fault tests cut this member off by it (tests/faults)

    @property
    def client_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.client_port}"

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
            *self.tls_args(),
            *self.extra_args,
        ]
        log = open(self.log_path, "ab")  # noqa: SIM115 -- handed to the child process
        try:
            self.process = subprocess.Popen([*self.as_user(), *args], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            log.close()

    def as_user(self) -> list[str]:
        """The setpriv prefix that runs this member as ``run_as``, with a data dir it owns; [] for root."""
        if self.run_as is None:
            return []
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        os.chown(self.data_dir, self.run_as, self.run_as)
        os.chmod(self.data_dir.parent, 0o711)
        return ["setpriv", f"--reuid={self.run_as}", f"--regid={self.run_as}", "--clear-groups"]

    def tls_args(self) -> list[str]:
        if self.tls is None:
            return []
        return ["--cert-file", str(self.tls.server_cert), "--key-file", str(self.tls.server_key),
                "--client-cert-auth", "--trusted-ca-file", str(self.tls.ca)]

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

    def __init__(
        self, n: int = 3, *, startup_timeout: float = 20.0, tls: Pki | None = None,
        extra_args: list[str] | None = None, run_as: dict[int, int] | None = None,
    ) -> None:
        self.n = n
        self.startup_timeout = startup_timeout
        self.tls = tls
        self._tmp = Path(tempfile.mkdtemp(prefix="cp-etcd-"))
        self._token = f"cp-test-{os.getpid()}-{time.monotonic_ns()}"
        self.members = [_Member(f"m{i}", self._tmp, tls=tls, extra_args=extra_args) for i in range(n)]
        for index, uid in (run_as or {}).items():  # member index -> the uid it runs as
            self.members[index].run_as = uid
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
            pending = [m for m in wanted if not healthy(m.client_url, pki=self.tls)]
            if not pending:
                return
            for member in pending:
                if member.process is not None and member.process.poll() is not None:
                    raise RuntimeError(f"etcd {member.name} exited:\n{member.log_tail()}")
            if time.monotonic() > deadline:
                names = ", ".join(m.name for m in pending)
                raise TimeoutError(f"etcd {names} not healthy:\n{pending[0].log_tail()}")
            time.sleep(0.05)

    def etcdctl(self, *args: str, user: str | None = None) -> str:
        """Run ``etcdctl`` against every member (with the client certificate under TLS); its stdout."""
        command = [shutil.which("etcdctl") or "/usr/bin/etcdctl", "--endpoints", self.url]
        if self.tls is not None:
            command += ["--cacert", str(self.tls.ca), "--cert", str(self.tls.client_cert),
                        "--key", str(self.tls.client_key)]
        if user is not None:
            command += ["--user", user]
        done = subprocess.run([*command, *args], capture_output=True, text=True, timeout=30,
                              env={**os.environ, "ETCDCTL_API": "3"})
        if done.returncode != 0:
            raise RuntimeError(f"etcdctl {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout

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

    def __init__(
        self, *, startup_timeout: float = 20.0, tls: Pki | None = None, extra_args: list[str] | None = None
    ) -> None:
        super().__init__(1, startup_timeout=startup_timeout, tls=tls, extra_args=extra_args)

    @property
    def url(self) -> str:
        return self.members[0].client_url

    def __enter__(self) -> EtcdServer:
        super().__enter__()
        return self
