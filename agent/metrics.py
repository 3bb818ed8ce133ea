"""Prometheus metrics of one cp-agent, and the small HTTP server that serves them at ``/metrics``.

Why: an operator sees from the API server where instances are, but not how a machine's agent is
doing (containers by state, failing probes, slow reconcile passes, API errors, fencing, proxy
reloads). Every series lives on a registry of its own (``AgentMetrics(registry)``), never on
prometheus_client's global one, so tests can run several agents in one process and start afresh.
The agent's code calls the ``AgentMetrics`` methods; nothing here decides anything for the agent.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterable
from typing import get_args

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

from agent.runtime.base import ContainerState
from controlplane import __version__
from controlplane.errors import CPError

DEFAULT_METRICS_PORT = 9102
PROBE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SYNC_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
CONTAINER_STATES: tuple[str, ...] = get_args(ContainerState)


def containers_by_state(states: Iterable[str]) -> dict[str, int]:
    """Pure: how many containers are in each state, every known state present (0 when none)."""
    counts = Tally(states)
    return {state: counts.get(state, 0) for state in (*CONTAINER_STATES, *sorted(set(counts) - set(CONTAINER_STATES)))}


class AgentMetrics:
    """The agent's series on ``registry`` (a fresh one when not given)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.build_info = Gauge("cp_agent_build_info", "The running cp-agent's version (always 1)", ["version"],
                                registry=r)
        self.build_info.labels(__version__).set(1)
        self.containers = Gauge("cp_agent_containers", "This machine's containers of the cluster, by state",
                                ["state"], registry=r)
        self.probes = Counter("cp_agent_probes", "Health probes run, by kind and result", ["kind", "result"],
                              registry=r)
        self.probe_seconds = Histogram("cp_agent_probe_duration_seconds", "Health probe latency, by kind", ["kind"],
                                       buckets=PROBE_BUCKETS, registry=r)
        self.sync_seconds = Histogram("cp_agent_sync_duration_seconds",
                                      "Reconcile pass duration: list containers, plan, act, report",
                                      buckets=SYNC_BUCKETS, registry=r)
        self.api_errors = Counter("cp_agent_api_errors", "Errors met talking to the API, one per server tried, by reason",
                                  ["reason"], registry=r)
        self.heartbeats = Counter("cp_agent_heartbeats", "Heartbeat rounds, by result", ["result"], registry=r)
        self.fenced = Gauge("cp_agent_fenced", "1 while the agent has stopped its instances for want of the API",
                            registry=r)
        self.proxy_reloads = Counter("cp_agent_proxy_reloads", "nginx reloads the proxy plug-in asked for "
                                     "(roll-backs included)", registry=r)
        self.proxy_failures = Counter("cp_agent_proxy_failures", "Proxy configs that did not take (the last good "
                                      "one stayed live), once per distinct reason in a row", registry=r)
        for state in CONTAINER_STATES:
            self.containers.labels(state).set(0)
        for result in ("ok", "failed"):
            self.heartbeats.labels(result)

    def observe_containers(self, states: Iterable[str]) -> None:
        for state, count in containers_by_state(states).items():
            self.containers.labels(state).set(count)

    def observe_probe(self, kind: str, *, ok: bool, seconds: float) -> None:
        self.probes.labels(kind, "success" if ok else "failure").inc()
        self.probe_seconds.labels(kind).observe(seconds)

    def api_error(self, err: CPError) -> None:
        self.api_errors.labels(err.reason or "Unknown").inc()

    def observe_heartbeat(self, *, ok: bool) -> None:
        self.heartbeats.labels("ok" if ok else "failed").inc()

    def set_fenced(self, fenced: bool) -> None:
        self.fenced.set(1 if fenced else 0)

    def observe_proxy_apply(self, *, reloads: int, failed: bool) -> None:
        if reloads > 0:
            self.proxy_reloads.inc(reloads)
        if failed:
            self.proxy_failures.inc()


def make_metrics_app(metrics: AgentMetrics) -> web.Application:
    """``GET /metrics``: the text exposition of ``metrics.registry`` (no token: bind it where only
    your Prometheus reaches, as with node_exporter)."""

    async def serve(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", serve)
    return app


def parse_metrics_listen(value: str, *, address: str) -> tuple[str, int] | None:
    """``--metrics-listen``: ``off`` -> None; ``""`` -> (address, 9102); ``HOST:PORT`` or ``:PORT``."""
    text = value.strip()
    if text.lower() == "off":
        return None
    if not text:
        return address, DEFAULT_METRICS_PORT
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, :PORT or off, got {value!r}")
    return (host.strip("[]") or address), int(port)
