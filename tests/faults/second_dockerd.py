"""A Docker engine of a test's own, to restart and break without touching the host's dockerd.

The host's dockerd serves every other test running at the same time, so a test that restarts the
engine under an agent gets one of its own: ``dockerd`` on its own socket, data-root, exec-root and
pidfile, its containers on a bridge of its own (``--iptables=false``: published ports go through
docker-proxy, so nothing is added to the host's firewall). The images a test needs are copied in
from the host's engine (``docker save | docker -H ... load``).

    with SecondDockerd() as engine:          # engine.url: "unix:///tmp/cpf-docker-.../docker.sock"
        engine.load_images("local/web:latest")
        engine.restart()                     # SIGTERM, wait for the exit, start, wait for `docker info`
        engine.docker("ps", "-a")            # CompletedProcess
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType

import pytest


def _free_subnet() -> str:
    """A /24 in 172.31.0.0/16 that no interface of this host uses."""
    used = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True).stdout
    for third in range(200, 255):
        net = ipaddress.ip_network(f"172.31.{third}.0/24")
        if f"172.31.{third}." not in used:
            return str(net)
    raise RuntimeError("no free 172.31.x.0/24 for the test bridge")


class SecondDockerd:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="cpf-docker-", dir="/tmp"))
        self.socket = self.dir / "docker.sock"
        self.url = f"unix://{self.socket}"
        self.bridge = f"cpf{uuid.uuid4().hex[:8]}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.dir / "dockerd.log"

    def docker(self, *args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["docker", "-H", self.url, *args], capture_output=True, text=True, timeout=timeout,
                              check=check)

    def _make_bridge(self) -> None:
        net = ipaddress.ip_network(_free_subnet())
        gateway = f"{next(net.hosts())}/{net.prefixlen}"
        for command in (["ip", "link", "add", self.bridge, "type", "bridge"],
                        ["ip", "addr", "add", gateway, "dev", self.bridge],
                        ["ip", "link", "set", self.bridge, "up"]):
            subprocess.run(command, check=True, capture_output=True)

    def start_daemon(self, *, wait: float = 60.0) -> None:
        args = ["dockerd", "--host", self.url, "--data-root", str(self.dir / "data"),
                "--exec-root", str(self.dir / "exec"), "--pidfile", str(self.dir / "docker.pid"),
                "--bridge", self.bridge, "--iptables=false", "--ip6tables=false", "--ip-masq=false"]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the test dockerd exited {self.proc.returncode}:\n{self.log_tail()}")
            if self.docker("info", "--format", "{{.ServerVersion}}", check=False, timeout=10).returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError(f"the test dockerd did not answer within {wait:g}s:\n{self.log_tail()}")

    def stop_daemon(self, *, timeout: float = 60.0) -> None:
        """SIGTERM (as ``systemctl restart docker`` does): it stops its containers and exits."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def restart(self) -> None:
        self.stop_daemon()
        self.start_daemon()

    def load_images(self, *images: str) -> None:
        saved = subprocess.run(["docker", "save", *images], capture_output=True, check=True, timeout=120)
        subprocess.run(["docker", "-H", self.url, "load"], input=saved.stdout, capture_output=True, check=True,
                       timeout=120)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> SecondDockerd:
        if shutil.which("dockerd") is None or shutil.which("ip") is None:
            pytest.skip("a second Docker engine needs dockerd and ip")
        try:
            self._make_bridge()
            self.start_daemon()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            ids = self.docker("ps", "-aq", check=False).stdout.split()
            if ids:
                self.docker("rm", "-f", *ids, check=False, timeout=120)
        self.stop_daemon()
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, check=False)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
