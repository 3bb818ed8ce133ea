"""Shared by bench_scale.py: API latency probes and a process's CPU and RSS from /proc.

``ApiProbe.run(seconds)`` alternates ``GET /api/v1/machines/h1`` and ``LIST /api/v1/units``
(one keep-alive connection, 20 requests a second in all, a client's view of a busy server) and
returns the latencies of each. ``ProcSampler`` reads a pid's user+system CPU seconds and RSS.
"""

from __future__ import annotations

import http.client
import math
import os
import time
from urllib.parse import urlsplit

TICKS = os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (NaN for no values)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(pct / 100 * len(ordered)) - 1))]


class ApiProbe:
    PATHS = {"get": "/api/v1/machines/h1", "list": "/api/v1/units"}

    def __init__(self, url: str, token: str, *, rate: float = 20.0) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        self.pause = 1.0 / rate

    def run(self, seconds: float) -> dict[str, list[float]]:
        seen: dict[str, list[float]] = {kind: [] for kind in self.PATHS}
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        deadline = time.monotonic() + seconds
        try:
            while time.monotonic() < deadline:
                for kind, path in self.PATHS.items():
                    started = time.perf_counter()
                    try:
                        conn.request("GET", path, headers=self.headers)
                        resp = conn.getresponse()
                        resp.read()
                    except (OSError, http.client.HTTPException):
                        conn.close()
                        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
                        continue
                    seen[kind].append(time.perf_counter() - started)
                    time.sleep(self.pause)
        finally:
            conn.close()
        return seen


class ProcSampler:
    """CPU seconds and RSS of one process since this sampler was made."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.started = time.monotonic()
        self.cpu_at_start = self._cpu()

    def _cpu(self) -> float:
        try:
            with open(f"/proc/{self.pid}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def cpu_seconds(self) -> float:
        return self._cpu() - self.cpu_at_start

    def rss_mb(self) -> float:
        try:
            with open(f"/proc/{self.pid}/status") as handle:
                for line in handle:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        return 0.0
