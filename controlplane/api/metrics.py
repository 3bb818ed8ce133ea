"""Prometheus metrics of one API server, in a registry of its own.

A registry per app (not prometheus_client's global one) lets tests run several servers in
one process. The controllers' series (``controllers.metrics.ControllerMetrics``) are
registered on the same registry here, whether or not this server ever leads, so every
server exposes the same series.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from controlplane.controllers.metrics import LATENCY_BUCKETS, ControllerMetrics

__all__ = ["LATENCY_BUCKETS", "ApiMetrics"]


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
        self.controllers = ControllerMetrics(r)

    def observe_request(self, route: str, method: str, code: int, seconds: float) -> None:
        key = (route, method, code)
        children = self._request_children.get(key)
        if children is None:
            children = (self.requests.labels(route, method, str(code)), self.request_seconds.labels(route, method))
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)
