"""Real components for integration tests: a Docker engine, the local images, an OpenSSH server.

Plain functions (not fixtures) so every test module can wrap them in fixtures of the scope it
needs. Each starts what is missing, idempotently, and skips the test (rather than failing it) when
the machine lacks the component entirely.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BUILD_LOCAL = REPO / "deploy" / "images" / "build-local"


def _docker_ok() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0


def ensure_dockerd(*, wait: float = 30.0) -> None:
    """Start dockerd when `docker info` fails, and wait until it answers; skip without Docker."""
    if _docker_ok():
        return
    if shutil.which("dockerd") is None:
        pytest.skip("Docker engine not installed (apt-get install -y docker.io)")
    with open("/var/log/dockerd.log", "ab") as log:
        subprocess.Popen(["dockerd"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if _docker_ok():
            return
        time.sleep(0.5)
    pytest.fail(f"dockerd did not answer within {wait}s (see /var/log/dockerd.log)")


def build_local_images() -> None:
    """Run deploy/images/build-local (fast when the images are current)."""
    ensure_dockerd()
    proc = subprocess.run([str(BUILD_LOCAL)], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        pytest.fail(f"build-local failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")


def remove_cluster_containers(cluster: str) -> None:
    """Remove every container labelled with this test cluster."""
    ids = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=cp.cluster={cluster}"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.split()
    if ids:
        subprocess.run(["docker", "rm", "-f", *ids], capture_output=True, timeout=120)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class SSHServer:
    host: str
    port: int
    user: str
    client_key: Path
    known_hosts: Path  # holds the server's real host key
    wrong_known_hosts: Path  # holds another key for the same host

    @property
    def url(self) -> str:
        return f"ssh://{self.user}@{self.host}:{self.port}"


def _keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True, timeout=30)
    return Path(f"{path}.pub").read_text().strip()


@contextmanager
def sshd(folder: Path) -> Iterator[SSHServer]:
    """A real OpenSSH server on 127.0.0.1 and a free port, keys generated in `folder`, logging in
    as the current user with a generated client key."""
    if not Path("/usr/sbin/sshd").exists() or shutil.which("ssh-keygen") is None:
        pytest.skip("openssh-server not installed")
    folder.mkdir(parents=True, exist_ok=True)
    os.makedirs("/run/sshd", exist_ok=True)
    host_key, client_key, other_key = folder / "host_key", folder / "client_key", folder / "other_key"
    host_pub, client_pub, other_pub = _keygen(host_key), _keygen(client_key), _keygen(other_key)
    authorized = folder / "authorized_keys"
    authorized.write_text(client_pub + "\n")
    port = free_port()
    known = folder / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {' '.join(host_pub.split()[:2])}\n")
    wrong = folder / "known_hosts.wrong"
    wrong.write_text(f"[127.0.0.1]:{port} {' '.join(other_pub.split()[:2])}\n")
    pid_file, log_file = folder / "sshd.pid", folder / "sshd.log"
    proc = subprocess.Popen(
        [
            "/usr/sbin/sshd", "-D", "-f", "/dev/null", "-p", str(port), "-h", str(host_key),
            "-o", "ListenAddress=127.0.0.1", "-o", f"AuthorizedKeysFile={authorized}",
            "-o", f"PidFile={pid_file}", "-o", "StrictModes=no", "-o", "PermitRootLogin=prohibit-password",
            "-o", "AllowStreamLocalForwarding=yes", "-E", str(log_file),
        ],
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log = log_file.read_text() if log_file.exists() else ""
                    pytest.fail(f"sshd did not start on 127.0.0.1:{port}: {log}")
                time.sleep(0.05)
        user = os.environ.get("USER") or subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
        yield SSHServer("127.0.0.1", port, user, client_key, known, wrong)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
