"""One real cp-agent process for integration tests, on the real Docker engine.

    with AgentProcess([a.url, b.url], "m1", tmp_path) as agent:   # --server A,B
        agent.metrics_url                  # its /metrics (on a free port of 127.0.0.1)
        agent.log_tail()

The agent uses the node token ``node-<machine>-token`` (tests/apiserver_fixture.py), the address
``127.0.1.N`` for machine ``mN``, free ports for its log endpoint and metrics, and a cluster label
of its own: leaving the block stops it (SIGTERM) and removes exactly its containers.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from docker_fixture import free_port, remove_cluster_containers


class AgentProcess:
    def __init__(self, servers: Sequence[str], machine: str, folder: Path, *, extra: Sequence[str] = ()) -> None:
        self.servers = list(servers)
        self.machine = machine
        self.folder = folder
        self.address = f"127.0.1.{int(machine[1:])}"
        self.cluster = f"t{uuid.uuid4().hex[:8]}"
        self.metrics_port = free_port()
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        self.extra = list(extra)
        self.log_path = folder / f"agent-{machine}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> AgentProcess:
        self.folder.mkdir(parents=True, exist_ok=True)
        args = [
            sys.executable, "-m", "agent.main", "--server", ",".join(self.servers),
            "--token", f"node-{self.machine}-token", "--machine", self.machine, "--address", self.address,
            "--cluster", self.cluster, "--agent-port", str(free_port()), "--state-dir", str(self.folder / "state"),
            "--metrics-listen", f"127.0.0.1:{self.metrics_port}", "--cpu", "2", "--memory-mb", "4096", *self.extra,
        ]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        remove_cluster_containers(self.cluster)

    def __enter__(self) -> AgentProcess:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
