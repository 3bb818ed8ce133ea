"""Prometheus series of the leader's loops: scheduling, machines, leadership and refused writes.

The API server builds one ``CollectorRegistry`` per app (``api.metrics.ApiMetrics``) and
registers these series on it, so ``/metrics`` shows them beside the request metrics; the
controllers only ever see this class, never the API's.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# seconds; the API's request and etcd histograms use the same buckets (api.metrics imports them)
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ControllerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = self.registry = registry
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
        self.refused_writes = Counter(
            "cp_controller_refused_writes",
            "Writes of a reconcile pass that failed, by write op and error reason (NotFound, Conflict, ...)",
            ["op", "reason"], registry=r,
        )
