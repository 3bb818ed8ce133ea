"""A whole local cluster for end-to-end tests: real etcd, a real cp-apiserver, real cp-agents on Docker.

    with LocalCluster(etcd.url, prefix, machines=2) as cluster:
        cluster.cpctl("run", "web", "--image", "local/web:latest", ...)   # CompletedProcess
        cluster.kill_agent("m1")          # SIGKILL the agent only
        cluster.kill_machine("m1")        # the agent and its containers
        cluster.start_agent("m1")         # again, same state folder
        cluster.api_get("instances")      # parsed JSON

Machine ``mN`` gets address ``127.0.1.N`` (its containers' ports are published there) and the
node token ``node-mN-token``. Containers carry the label ``cp.cluster=<unique cluster name>``, so
teardown removes exactly this cluster's containers.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any

from apiserver_fixture import ApiServer
from docker_fixture import build_local_images, remove_cluster_containers


class LocalCluster:
    def __init__(self, etcd_url: str, prefix: str, *, machines: int = 2, machine_ttl: int = 3,
                 agent_args: list[str] | None = None) -> None:
        self.api = ApiServer(etcd_url, prefix, machine_ttl=machine_ttl)
        self.names = [f"m{i}" for i in range(1, machines + 1)]
        self.cluster = f"t{uuid.uuid4().hex[:8]}"
        self.dir = Path(tempfile.mkdtemp(prefix="cp-cluster-"))
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        self.agent_args = list(agent_args or [])

    def address(self, machine: str) -> str:
        return f"127.0.1.{int(machine[1:])}"

    def start_agent(self, machine: str, *, extra: list[str] | None = None) -> None:
        log = open(self.dir / f"agent-{machine}.log", "ab")  # noqa: SIM115 - the process owns it
        args = [
            sys.executable, "-m", "agent.main", "--server", self.api.url, "--token", f"node-{machine}-token",
            "--machine", machine, "--address", self.address(machine), "--cluster", self.cluster,
            "--agent-port", str(17100 + int(machine[1:])), "--state-dir", str(self.dir / "state"),
            "--cpu", "2", "--memory-mb", "4096", *self.agent_args, *(extra or []),
        ]
        self.agents[machine] = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)

    def kill_agent(self, machine: str) -> None:
        proc = self.agents.get(machine)
        if proc and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)

    def containers(self, machine: str | None = None) -> list[dict[str, Any]]:
        filters = ["--filter", f"label=cp.cluster={self.cluster}"]
        if machine:
            filters += ["--filter", f"label=cp.machine={machine}"]
        out = subprocess.run(["docker", "ps", "-a", "--format", "{{json .}}", *filters],
                             capture_output=True, text=True, check=True).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def kill_machine(self, machine: str) -> None:
        """The machine dies: its agent and every container on it."""
        self.kill_agent(machine)
        ids = [c["ID"] for c in self.containers(machine)]
        if ids:
            subprocess.run(["docker", "rm", "-f", *ids], capture_output=True, check=False)

    def api_get(self, path: str, *, token: str = "admin-token") -> Any:
        url = self.api.url + (path if path.startswith("/") else f"/api/v1/{path}")
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=5) as resp:
            return json.loads(resp.read())

    def instances(self, unit: str | None = None) -> list[dict[str, Any]]:
        query = f"?fieldSelector=spec.unit={unit}" if unit else ""
        return list(self.api_get(f"instances{query}")["items"])

    def cpctl(self, *args: str, timeout: float = 120, token: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "controlplane.cli.main", *args], env=self.api.env(token),
                              capture_output=True, text=True, timeout=timeout)

    def wait_for(self, check: Any, *, timeout: float = 30.0, interval: float = 0.1, what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            last = check()
            if last:
                return last
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}\n{self.logs()}")

    def logs(self, lines: int = 30) -> str:
        parts = [f"--- apiserver\n{self.api.log_tail(lines)}"]
        for machine in self.agents:
            path = self.dir / f"agent-{machine}.log"
            if path.exists():
                tail = "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
                parts.append(f"--- agent {machine}\n{tail}")
        return "\n".join(parts)

    def __enter__(self) -> LocalCluster:
        build_local_images()
        self.api.start()
        for machine in self.names:
            self.start_agent(machine)
        self.wait_for(lambda: len([m for m in self.api_get("machines")["items"]
                                   if m["status"]["state"] == "Ready"]) == len(self.names),
                      what="all machines Ready")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for machine in list(self.agents):
            proc = self.agents[machine]
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
        remove_cluster_containers(self.cluster)
        self.api.__exit__(exc_type, exc, tb)
        shutil.rmtree(self.dir, ignore_errors=True)
