"""Machines played through the API, without agents or Docker: register and heartbeat with node
tokens from a background thread, stop and resume one machine's heartbeats.

    with FakeMachines(api.url, ["m1", "m2", "m3", "m4"], interval=0.5) as machines:
        machines.pause("m2")             # returns once no heartbeat of m2 is in flight
        machines.last_beat["m2"]         # time.monotonic() of its last acknowledged heartbeat
        machines.resume("m2")

Machine ``mN`` reports address ``127.0.1.N`` and uses the token ``node-mN-token`` (the tokens of
tests/apiserver_fixture.py). ``labels`` are sent with every heartbeat; the server applies them
when it creates the Machine. Also a tiny JSON client, ``call``, for the tests' own requests.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

ADMIN = "admin-token"


def call(base: str, method: str, path: str, body: Any = None, *, token: str = ADMIN,
         content_type: str = "application/json", timeout: float = 5.0) -> tuple[int, Any]:
    """One request; returns (status, parsed JSON body or text). Never raises on HTTP errors."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read()
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")


def wait_for(predicate: Callable[[], Any], *, timeout: float, interval: float = 0.05, what: str = "condition") -> Any:
    """Poll until ``predicate()`` is truthy and return it; AssertionError naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {value!r}")
        time.sleep(interval)


class FakeMachines:
    def __init__(self, url: str, names: Iterable[str], *, interval: float = 0.5,
                 labels: dict[str, dict[str, str]] | None = None, cpu: float = 2, memory_mb: int = 4096) -> None:
        self.url = url
        self.names = list(names)
        self.interval = interval
        self.labels = labels or {}
        self.capacity = {"cpu": cpu, "memoryMB": memory_mb}
        self.last_beat: dict[str, float] = {}
        self.failures: dict[str, int] = {n: 0 for n in self.names}
        self._paused: set[str] = set()
        self._locks = {n: threading.Lock() for n in self.names}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self, name: str) -> int:
        """One heartbeat of ``name`` now (unless paused); the HTTP status, 0 when skipped."""
        with self._locks[name]:
            if name in self._paused:
                return 0
            body = {"address": f"127.0.1.{name[1:]}" if name[1:].isdigit() else "127.0.0.1",
                    "capacity": self.capacity, "agentVersion": "test", "labels": self.labels.get(name, {})}
            try:
                status, _ = call(self.url, "POST", f"/api/v1/machines/{name}/heartbeat", body,
                                 token=f"node-{name}-token", timeout=2.0)
            except OSError:
                status = 0
            if status == 200:
                self.last_beat[name] = time.monotonic()
            else:
                self.failures[name] += 1
            return status

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            for name in self.names:
                self.beat(name)
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def start(self) -> FakeMachines:
        for name in self.names:  # registered before start() returns
            status = self.beat(name)
            assert status == 200, f"heartbeat of {name} answered {status}"
        self._thread = threading.Thread(target=self._run, name="fake-machines", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(5)

    def pause(self, name: str) -> float:
        """Stop heartbeating ``name``; returns the time of its last acknowledged heartbeat."""
        with self._locks[name]:
            self._paused.add(name)
        return self.last_beat.get(name, time.monotonic())

    def resume(self, name: str) -> None:
        with self._locks[name]:
            self._paused.discard(name)
        self.beat(name)

    def __enter__(self) -> FakeMachines:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
