"""Readiness probes: an instance serves traffic only once its health check passes.

Three probe kinds, as in the unit spec's `health`: `http` (a GET answered 200-399), `tcp` (a
connection accepted) and `exec` (a command inside the container, through the runtime, exiting 0).
The decision part is pure (`ProbeState.record`): consecutive successes and failures, ready after the
first success, unready after `failureThreshold` failures in a row. `Prober` runs the probes on their
periods and answers `ready(instance)`; the executor hands it targets after each reconcile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

import aiohttp

from agent.runtime.base import Runtime, RuntimeFailure
from controlplane.timeline import mark

log = logging.getLogger(__name__)

ProbeKind = Literal["http", "tcp", "exec"]


@dataclass(frozen=True)
class ProbeSpec:
    kind: ProbeKind
    port: int = 0
    path: str = "/"
    command: tuple[str, ...] = ()
    period: float = 2.0
    timeout: float = 1.0
    failure_threshold: int = 3

    @classmethod
    def from_health(cls, health: Mapping[str, Any]) -> ProbeSpec:
        """From a unit's `health` (wire format)."""
        common = {
            "period": float(health.get("periodSeconds") or 2),
            "timeout": float(health.get("timeoutSeconds") or 1),
            "failure_threshold": int(health.get("failureThreshold") or 3),
        }
        if "http" in health:
            http = health["http"]
            return cls("http", port=int(http["port"]), path=str(http.get("path") or "/"), **common)  # type: ignore[arg-type]
        if "tcp" in health:
            return cls("tcp", port=int(health["tcp"]["port"]), **common)  # type: ignore[arg-type]
        if "exec" in health:
            return cls("exec", command=tuple(str(c) for c in health["exec"]["command"]), **common)  # type: ignore[arg-type]
        raise ValueError(f"health needs one of http, tcp or exec: {dict(health)!r}")


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    message: str = ""


@dataclass(frozen=True)
class ProbeState:
    """Pure readiness state machine of one container."""

    ready: bool = False
    successes: int = 0  # consecutive
    failures: int = 0  # consecutive
    ever_ready: bool = False  # has passed at least once since the container started
    last_message: str = ""

    def record(self, result: ProbeResult, *, failure_threshold: int) -> ProbeState:
        if result.ok:
            return ProbeState(
                ready=True, successes=self.successes + 1, failures=0, ever_ready=True, last_message=result.message
            )
        failures = self.failures + 1
        return ProbeState(
            ready=self.ready and failures < failure_threshold,
            successes=0,
            failures=failures,
            ever_ready=self.ever_ready,
            last_message=result.message,
        )


async def http_probe(host: str, port: int, path: str) -> ProbeResult:
    """A GET answered 200-399 passes. Bound it with `asyncio.timeout` (Prober does)."""
    url = f"http://{host}:{port}{path if path.startswith('/') else '/' + path}"
    try:
        async with aiohttp.ClientSession() as session, session.get(url, allow_redirects=False) as resp:
            await resp.read()
            if 200 <= resp.status < 400:
                return ProbeResult(True, f"GET {url}: {resp.status}")
            return ProbeResult(False, f"GET {url}: HTTP {resp.status}")
    except (aiohttp.ClientError, OSError) as err:
        return ProbeResult(False, f"GET {url}: {err}")


async def tcp_probe(host: str, port: int) -> ProbeResult:
    """An accepted connection passes."""
    try:
        _, writer = await asyncio.open_connection(host, port)
    except OSError as err:
        return ProbeResult(False, f"tcp {host}:{port}: {err.strerror or err}")
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass
    return ProbeResult(True, f"tcp {host}:{port}: connected")


async def exec_probe(runtime: Runtime, container_id: str, command: list[str]) -> ProbeResult:
    """A command inside the container exiting 0 passes."""
    try:
        result = await runtime.exec(container_id, command)
    except RuntimeFailure as err:
        return ProbeResult(False, f"exec {command}: {err}")
    tail = result.output.decode(errors="replace").strip()[-200:]
    if result.exit_code == 0:
        return ProbeResult(True, f"exec {command}: exit 0")
    return ProbeResult(False, f"exec {command}: exit {result.exit_code}: {tail}")


async def run_probe(runtime: Runtime, target: ProbeTarget) -> ProbeResult:
    """One probe of a target, bounded by its timeoutSeconds."""
    spec = target.spec
    try:
        async with asyncio.timeout(spec.timeout):
            if spec.kind == "http":
                return await http_probe(target.host, target.port, spec.path)
            if spec.kind == "tcp":
                return await tcp_probe(target.host, target.port)
            return await exec_probe(runtime, target.container_id, list(spec.command))
    except TimeoutError:
        return ProbeResult(False, f"{spec.kind} probe timed out after {spec.timeout:g}s")


@dataclass(frozen=True)
class ProbeTarget:
    """What to probe for one instance: its container (as last started) and where to reach it."""

    instance: str
    container_id: str
    started_at: float | None
    spec: ProbeSpec
    host: str  # the address the probed port is published on (or the container's own address)
    port: int  # the port to connect to on `host`


# Until a new container first passes, it is probed every STARTUP_PERIOD (for at most
# STARTUP_WINDOW seconds) rather than every periodSeconds: a probe that fires a few ms before the
# server listens would otherwise hold a ready instance back a whole period (2 s by default).
STARTUP_PERIOD = 0.05
STARTUP_WINDOW = 10.0


class Prober:
    """Runs each target's probe every `period` and keeps its `ProbeState`.

    A target whose container or start time changes starts over unready. `tick()` probes whatever
    is due (tests call it directly with an injected clock); `run()` loops on it. `on_result` hears
    each probe's kind, outcome and seconds (the agent's metrics)."""

    def __init__(self, runtime: Runtime, *, clock: Callable[[], float] = time.monotonic,
                 on_result: Callable[[ProbeKind, bool, float], None] | None = None) -> None:
        self.runtime = runtime
        self.clock = clock
        self.on_result = on_result
        self.targets: dict[str, ProbeTarget] = {}
        self.states: dict[str, ProbeState] = {}
        self._due: dict[str, float] = {}
        self._added: dict[str, float] = {}
        self._changed = asyncio.Event()

    def update(self, targets: Mapping[str, ProbeTarget]) -> None:
        """Replace the set of targets (instance name -> target)."""
        for name in list(self.targets):
            if name not in targets:
                self.targets.pop(name)
                self.states.pop(name, None)
                self._due.pop(name, None)
                self._added.pop(name, None)
        for name, target in targets.items():
            old = self.targets.get(name)
            if old == target:
                continue  # keep the same object: a probe in flight for it still counts when it ends
            if old is None or (old.container_id, old.started_at) != (target.container_id, target.started_at):
                self.states[name] = ProbeState()
                self._due[name] = self._added[name] = self.clock()
            self.targets[name] = target
        self._changed.set()

    def ready(self, instance: str) -> bool | None:
        """True/False for a probed instance, None when it has no probe."""
        state = self.states.get(instance)
        return None if state is None else state.ready

    def state(self, instance: str) -> ProbeState | None:
        return self.states.get(instance)

    async def probe(self, target: ProbeTarget) -> ProbeResult:
        started = time.perf_counter()
        result = await run_probe(self.runtime, target)
        if self.on_result is not None:
            self.on_result(target.spec.kind, result.ok, time.perf_counter() - started)
        return result

    async def tick(self) -> list[str]:
        """Probe every due target once; returns the instances whose readiness changed."""
        now = self.clock()
        due = [t for name, t in self.targets.items() if self._due.get(name, now) <= now]
        results = await asyncio.gather(*(self.probe(t) for t in due))
        changed: list[str] = []
        for target, result in zip(due, results, strict=True):
            name = target.instance
            if self.targets.get(name) is not target:
                continue  # replaced while probing
            before = self.states.get(name, ProbeState())
            after = before.record(result, failure_threshold=target.spec.failure_threshold)
            self.states[name] = after
            mark("agent.probe", name, "ok" if result.ok else "fail")
            period = target.spec.period
            if not after.ever_ready and now - self._added.get(name, now) < STARTUP_WINDOW:
                period = min(period, STARTUP_PERIOD)
            self._due[name] = now + period
            if before.ready != after.ready:
                changed.append(name)
                log.info("instance %s is %s: %s", name, "ready" if after.ready else "not ready", result.message)
        return changed

    def next_due(self) -> float | None:
        return min(self._due.values(), default=None)

    async def run(self, on_change: Callable[[list[str]], Any] | None = None) -> None:
        """Probe forever; `on_change` gets the instances whose readiness flipped."""
        while True:
            changed = await self.tick()
            if changed and on_change is not None:
                outcome = on_change(changed)
                if asyncio.iscoroutine(outcome):
                    await outcome
            next_due = self.next_due()
            wait = 1.0 if next_due is None else max(0.05, next_due - self.clock())
            self._changed.clear()
            try:
                async with asyncio.timeout(wait):
                    await self._changed.wait()
            except TimeoutError:
                pass

    def set_state(self, instance: str, state: ProbeState) -> None:
        """For tests and simulations."""
        self.states[instance] = replace(state)
