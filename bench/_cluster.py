"""Shared by the agent benchmarks: a throwaway etcd + LocalCluster (tests/cluster_fixture.py)
outside pytest, and small timing helpers."""

from __future__ import annotations

import statistics
import sys
import time
import urllib.request
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

import _env  # noqa: E402,F401  (on import: SIGTERM tears the servers down)
from cluster_fixture import LocalCluster  # noqa: E402,F401
from etcd_fixture import EtcdServer  # noqa: E402,F401


def answers(url: str, timeout: float = 0.5) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status == 200
    except OSError:
        return False


def wait(check, timeout: float = 60.0, interval: float = 0.02):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(interval)
    raise TimeoutError("benchmark condition not reached")


def summary(values: list[float]) -> str:
    v = sorted(values)
    return (f"median {statistics.median(v):.3f}s  min {v[0]:.3f}s  max {v[-1]:.3f}s  "
            f"p90 {v[min(len(v) - 1, int(0.9 * len(v)))]:.3f}s  (n={len(v)})")
