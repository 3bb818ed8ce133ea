"""What the agent fault tests (and bench/chaos.py) watch while a fault runs: Docker and the edge.

- ``DockerSampler``: a thread that asks the Docker engine (its API, on the unix socket: cheaper
  than ``docker ps``) every 100 ms which of one cluster's containers run, and keeps every sample.
  ``duplicates()`` finds the samples where one instance (``cp.instance`` = ``<unit>-<index>``) had
  two running containers: the invariant is that this never happens, on one machine or across
  machines, whatever the epochs. ``gaps()`` measures, per instance, the time between the last
  sample of a copy on one machine and the first of its copy on another (negative: overlap).
- ``EdgeLoad``: client threads requesting a Host through one edge, without pause; ``failures()``
  and ``window()`` say how many did not answer 200 (in time) and over which span.

Both are plain threads with ``start()`` and ``stop()``; the analyses are pure functions of the
recorded samples, so they are tested by what they find, not by timing.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

LABEL_CLUSTER, LABEL_INSTANCE, LABEL_MACHINE, LABEL_EPOCH = "cp.cluster", "cp.instance", "cp.machine", "cp.epoch"


@dataclass(frozen=True)
class RunningCopy:
    instance: str
    machine: str
    epoch: str
    container: str  # short id


@dataclass(frozen=True)
class Sample:
    at: float  # time.monotonic()
    running: tuple[RunningCopy, ...]


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)


def running_copies(socket_path: str, cluster: str, *, timeout: float = 2.0) -> tuple[RunningCopy, ...]:
    """The cluster's running containers, straight from the engine's API."""
    filters = json.dumps({"label": [f"{LABEL_CLUSTER}={cluster}"], "status": ["running"]})
    conn = _UnixHTTPConnection(socket_path, timeout)
    try:
        conn.request("GET", "/containers/json?filters=" + urllib.parse.quote(filters))
        body = conn.getresponse().read()
    finally:
        conn.close()
    copies = []
    for c in json.loads(body):
        labels = c.get("Labels") or {}
        copies.append(RunningCopy(labels.get(LABEL_INSTANCE, "?"), labels.get(LABEL_MACHINE, "?"),
                                  labels.get(LABEL_EPOCH, "?"), str(c["Id"])[:12]))
    return tuple(sorted(copies, key=lambda r: (r.instance, r.machine)))


def running_by_instance(cluster: str, *, socket_path: str = "/var/run/docker.sock") -> dict[str, str]:
    """Instance -> the short id of its running container (the last one listed, if two run)."""
    return {copy.instance: copy.container for copy in running_copies(socket_path, cluster)}


class DockerSampler(threading.Thread):
    def __init__(self, cluster: str, *, socket_path: str = "/var/run/docker.sock", interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.cluster, self.socket_path, self.interval = cluster, socket_path, interval
        self.samples: list[Sample] = []
        self.errors = 0  # samples the engine did not answer (a restarting dockerd)
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                self.samples.append(Sample(started, running_copies(self.socket_path, self.cluster)))
            except (OSError, ValueError, http.client.HTTPException):
                self.errors += 1
            self.stopping.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def stop(self) -> None:
        self.stopping.set()
        self.join(5)

    def since(self, start: float) -> list[Sample]:
        return [s for s in list(self.samples) if s.at >= start]


def duplicates(samples: list[Sample]) -> list[tuple[float, str, tuple[RunningCopy, ...]]]:
    """Every (time, instance, copies) where one instance had more than one running container."""
    found = []
    for sample in samples:
        by_instance: dict[str, list[RunningCopy]] = {}
        for copy in sample.running:
            by_instance.setdefault(copy.instance, []).append(copy)
        found += [(sample.at, name, tuple(copies)) for name, copies in by_instance.items() if len(copies) > 1]
    return found


def last_running_on(samples: list[Sample], machine: str) -> float | None:
    """The time of the last sample in which ``machine`` ran any container (None: never)."""
    times = [s.at for s in samples if any(c.machine == machine for c in s.running)]
    return times[-1] if times else None


def first_running_elsewhere(samples: list[Sample], instance: str, machine: str) -> tuple[float, str] | None:
    """When (and where) ``instance`` first ran on another machine than ``machine``."""
    for s in samples:
        for c in s.running:
            if c.instance == instance and c.machine != machine:
                return s.at, c.machine
    return None


def gaps(samples: list[Sample], machine: str) -> dict[str, float]:
    """Per instance that ran on ``machine`` and then elsewhere: first sample elsewhere minus last
    sample on ``machine`` (seconds; negative when both ran at once)."""
    result: dict[str, float] = {}
    names = {c.instance for s in samples for c in s.running if c.machine == machine}
    for name in sorted(names):
        on = [s.at for s in samples if any(c.instance == name and c.machine == machine for c in s.running)]
        later = first_running_elsewhere([s for s in samples if s.at > on[0]], name, machine)
        if later is not None:
            result[name] = later[0] - on[-1]
    return result


@dataclass
class EdgeLoad:
    """``threads`` clients requesting ``url`` with ``Host: host`` back to back; each result is
    (start, seconds, HTTP status or 0 for no answer)."""

    url: str
    host: str
    threads: int = 2
    timeout: float = 1.0
    pause: float = 0.01
    results: list[tuple[float, float, int]] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)
    workers: list[threading.Thread] = field(default_factory=list)

    def _work(self) -> None:
        request = urllib.request.Request(self.url, headers={"Host": self.host})
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                    resp.read()
                    status = resp.status
            except urllib.error.HTTPError as err:
                status = err.code
            except (OSError, http.client.HTTPException):  # refused, reset, timed out, cut short
                status = 0
            self.results.append((started, time.monotonic() - started, status))  # list.append is atomic
            self.stopping.wait(self.pause)

    def start(self) -> EdgeLoad:
        self.workers = [threading.Thread(target=self._work, daemon=True) for _ in range(self.threads)]
        for worker in self.workers:
            worker.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        for worker in self.workers:
            worker.join(self.timeout + 5)

    def between(self, start: float, end: float) -> list[tuple[float, float, int]]:
        return [r for r in list(self.results) if start <= r[0] <= end]


def failures(results: list[tuple[float, float, int]]) -> list[tuple[float, float, int]]:
    return [r for r in results if r[2] != 200]


def window(results: list[tuple[float, float, int]]) -> float:
    """Seconds from the start of the first failed request to the end of the last (0: none failed)."""
    failed = failures(results)
    if not failed:
        return 0.0
    return max(r[0] + r[1] for r in failed) - failed[0][0]
