"""Shared by the API benchmarks: a throwaway etcd and cp-apiserver (tests' fixtures), small helpers."""

from __future__ import annotations

import contextlib
import resource
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from apiserver_fixture import ApiServer  # noqa: E402
from etcd_fixture import EtcdServer  # noqa: E402

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
