"""Prometheus metrics of one API server, in a registry of its own.

A registry per app (not prometheus_client's global one) lets tests run several servers in
one process. Controllers add their own series to the same registry.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ApiMetrics:
    def __init__(self) -> None:
        # labelled children looked up once per (route, method, code): .labels() is a measurable
        # share of a cached GET
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "cp_apiserver_requests", "API requests by route, method and status code",
            ["route", "method", "code"], registry=r,
        )
        self.request_seconds = Histogram(
            "cp_apiserver_request_duration_seconds", "API request latency by route and method",
            ["route", "method"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.watches = Gauge("cp_apiserver_watches", "Open watch streams by resource", ["resource"], registry=r)
        self.etcd_seconds = Histogram(
            "cp_etcd_request_duration_seconds", "Store (etcd) call latency by operation",
            ["operation"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.is_leader = Gauge("cp_leader", "1 when this server runs the scheduler and controllers", registry=r)
        self.leader_changes = Counter("cp_leader_changes", "Times this server gained or lost leadership", registry=r)
        self.schedule_attempts = Counter(
            "cp_scheduler_attempts", "Scheduling attempts by result (scheduled, unschedulable)", ["result"], registry=r
        )
        self.schedule_seconds = Histogram(
            "cp_scheduler_attempt_duration_seconds", "Latency of one scheduling pass", buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.pending = Gauge("cp_scheduler_pending_instances", "Pending instances by reason", ["reason"], registry=r)
        self.machines = Gauge("cp_machines", "Machines by state", ["state"], registry=r)
        self.reschedules = Counter(
            "cp_reschedules", "Instances unbound from a machine that went away, to be placed elsewhere", registry=r
        )

    def observe_request(self, route: str, method: str, code: int, seconds: float) -> None:
        key = (route, method, code)
        children = self._request_children.get(key)
        if children is None:
            children = (self.requests.labels(route, method, str(code)), self.request_seconds.labels(route, method))
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)
