"""Shared by the API benchmarks: a throwaway etcd and cp-apiserver (tests' fixtures), small helpers."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from apiserver_fixture import ApiServer  # noqa: E402
from etcd_fixture import EtcdServer  # noqa: E402


def tear_down_on_sigterm() -> None:
    """SIGTERM (``timeout``'s default, a CI runner's stop) exits through the ``with`` blocks.

    Python's default for SIGTERM kills the bench at once: the etcd and cp-apiserver it started
    stay behind, spinning beside the next run and spoiling its figures. Called on import, so every
    bench that imports this module tears its servers down."""
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


tear_down_on_sigterm()

TOKEN = "admin-token"
HEADERS = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}


@contextlib.contextmanager
def cluster(prefix: str = "/bench") -> Iterator[tuple[EtcdServer, ApiServer]]:
    """One etcd member and one cp-apiserver (API only, no controllers) on it."""
    with EtcdServer() as etcd, ApiServer(etcd.url, prefix, controllers=False) as api:
        yield etcd, api


def raise_fd_limit(wanted: int = 8192) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(max(soft, wanted), hard) if hard != resource.RLIM_INFINITY else max(soft, wanted)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def unit_body(name: str) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "Unit", "metadata": {"name": name, "labels": {"app": "bench"}},
            "spec": {"image": "local/web:1", "replicas": 2, "ports": [{"containerPort": 8080}],
                     "health": {"http": {"path": "/", "port": 8080}}}}


SERVER = "API server"


def cpu_seconds(pid: int, *, children: bool = False) -> float:
    """User + system CPU of ``pid`` (and of its live children: the API server's workers)."""
    ticks = os.sysconf("SC_CLK_TCK")
    pids = [pid]
    if children:
        with contextlib.suppress(OSError):
            pids += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    total = 0.0
    for one in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{one}/stat").read_text().rpartition(")")[2].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


class CpuMeter:
    """CPU seconds spent by the API server, etcd and this process between start() and stop()."""

    def __init__(self, **pids: int) -> None:
        self.pids = {"this client": os.getpid(), **pids}
        self.before: dict[str, float] = {}
        self.spent: dict[str, float] = {}
        self.started = 0.0

    def start(self) -> None:
        self.before = {name: cpu_seconds(pid, children=name == SERVER) for name, pid in self.pids.items()}
        self.started = time.perf_counter()

    def stop(self) -> None:
        self.spent = {name: cpu_seconds(pid, children=name == SERVER) - self.before[name]
                      for name, pid in self.pids.items()}
        self.spent["wall clock"] = time.perf_counter() - self.started

    def per_thousand(self, count: int) -> str:
        return ", ".join(f"{name} {1000 * spent / count:.2f} s" for name, spent in self.spent.items())
