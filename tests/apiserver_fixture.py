"""A real cp-apiserver process for tests: on a free port, against a real etcd, with tokens.

    with ApiServer(etcd_url, prefix) as api:     # api.url, api.admin_token, api.env(...)
        ...

Tokens: ``admin-token`` (admin), ``viewer-token`` (viewer), ``node-<m>-token`` (node bound to
machine ``m``) for m in m1..m8, in a file of mode 0600. ``kill()`` sends SIGKILL (leader
failover tests); ``reload_tokens()`` sends SIGHUP.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import TracebackType

from etcd_fixture import free_port

MACHINES = [f"m{i}" for i in range(1, 9)]


def write_private(path: Path, text: str) -> None:
    """Write ``text`` with mode 0600 from the first byte (cp-apiserver refuses a token file others can read)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(path, 0o600)  # an existing file keeps its mode through O_CREAT


def write_tokens(path: Path) -> None:
    lines = ["admin-token,admin,admin", "viewer-token,viewer,viewer"]
    lines += [f"node-{m}-token,node-{m},node,{m}" for m in MACHINES]
    write_private(path, "\n".join(lines) + "\n")


class ApiServer:
    def __init__(
        self,
        etcd_url: str,
        prefix: str,
        *,
        machine_ttl: int = 5,
        controllers: bool = True,
        extra_args: list[str] | None = None,
    ) -> None:
        self.etcd_url = etcd_url
        self.prefix = prefix
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.machine_ttl = machine_ttl
        self.controllers = controllers
        self.extra_args = list(extra_args or [])
        self.dir = Path(tempfile.mkdtemp(prefix="cp-apiserver-"))
        self.token_file = self.dir / "tokens.csv"
        write_tokens(self.token_file)
        self.admin_token = "admin-token"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.dir / "apiserver.log"

    def start(self) -> ApiServer:
        args = [
            sys.executable, "-m", "controlplane.api.server",
            "--etcd", self.etcd_url, "--etcd-prefix", self.prefix,
            "--listen", f"127.0.0.1:{self.port}", "--token-file", str(self.token_file),
            "--machine-ttl", str(self.machine_ttl), *self.extra_args,
        ]
        if not self.controllers:
            args.append("--no-controllers")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"cp-apiserver exited {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=0.5) as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"cp-apiserver did not become ready:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def reload_tokens(self, text: str) -> None:
        """Rewrite the token file (mode 0600) and send SIGHUP, which makes the server read it again."""
        write_private(self.token_file, text)
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def env(self, token: str | None = None) -> dict[str, str]:
        """Environment for a cpctl subprocess talking to this server."""
        env = dict(os.environ)
        env.update({"CPCTL_SERVER": self.url, "CPCTL_TOKEN": token or self.admin_token, "HOME": str(self.dir)})
        return env

    def __enter__(self) -> ApiServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
        import shutil

        shutil.rmtree(self.dir, ignore_errors=True)
