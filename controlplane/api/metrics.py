"""Prometheus metrics of one API server, in a registry of its own.

A registry per app (not prometheus_client's global one) lets tests run several servers in
one process. The controllers' series (``controllers.metrics.ControllerMetrics``) are
registered on the same registry here, whether or not this server ever leads, so every
server exposes the same series. The process and platform collectors (CPU, memory, open files,
the Python version) and ``cp_build_info`` ride on it too. Watch streams last minutes, so they
stay out of the request-latency histogram (they would make its p99 seconds): they are counted by
``cp_apiserver_watch_requests_total`` and the ``cp_apiserver_watches`` gauge instead.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

from controlplane import __version__
from controlplane.api.priority import Seats
from controlplane.controllers.metrics import LATENCY_BUCKETS, ControllerMetrics

__all__ = ["LATENCY_BUCKETS", "ApiMetrics"]


class ApiMetrics:
    def __init__(self) -> None:
        # labelled children looked up once per (route, method, code): .labels() is a measurable
        # share of a cached GET
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.build_info = Gauge("cp_build_info", "The running cp-apiserver's version (always 1)", ["version"],
                                registry=r)
        self.build_info.labels(__version__).set(1)
        self.requests = Counter(
            "cp_apiserver_requests", "API requests by route, method and status code",
            ["route", "method", "code"], registry=r,
        )
        self.request_seconds = Histogram(
            "cp_apiserver_request_duration_seconds", "API request latency by route and method",
            ["route", "method"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.watch_requests = Counter(
            "cp_apiserver_watch_requests", "Watch requests (?watch=1) by route and status code; not timed",
            ["route", "code"], registry=r,
        )
        self.watches = Gauge("cp_apiserver_watches", "Open watch streams by resource", ["resource"], registry=r)
        self.etcd_seconds = Histogram(
            "cp_etcd_request_duration_seconds", "Store (etcd) call latency by operation",
            ["operation"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.controllers = ControllerMetrics(r)

    def watch_seats(self, seats: Seats) -> None:
        """The seats of api/priority.py, read at each scrape."""
        Gauge("cp_apiserver_requests_inflight", "Requests in a seat now (heartbeats and streams take none)",
              registry=self.registry).set_function(lambda: seats.in_use)
        Gauge("cp_apiserver_requests_waiting", "Requests waiting for a seat now",
              registry=self.registry).set_function(lambda: seats.waiting)
        abandoned = Counter("cp_apiserver_requests_abandoned", "Requests not run: their client had gone while they "
                            "waited for a seat", registry=self.registry)
        seats.on_abandoned = abandoned.inc

    def observe_request(self, route: str, method: str, code: int, seconds: float, *, watch: bool = False) -> None:
        if watch:
            self.watch_requests.labels(route, str(code)).inc()
            return
        key = (route, method, code)
        children = self._request_children.get(key)
        if children is None:
            children = (self.requests.labels(route, method, str(code)), self.request_seconds.labels(route, method))
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)
