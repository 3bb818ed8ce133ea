"""The agent's metrics (agent/metrics.py): pure helpers, and the series moving on a registry of
their own; and the heartbeat's per-server timeout fitting several servers into a third of the TTL."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from agent.agent import Agent, AgentConfig
from agent.metrics import DEFAULT_METRICS_PORT, AgentMetrics, containers_by_state, parse_metrics_listen
from agent.runtime.fake import FakeRuntime
from controlplane import __version__
from controlplane.client import Client
from controlplane.errors import Conflict, ServiceUnavailable


def test_containers_by_state_names_every_known_state() -> None:
    assert containers_by_state([]) == {"created": 0, "running": 0, "exited": 0}
    assert containers_by_state(["running", "running", "exited"]) == {"created": 0, "running": 2, "exited": 1}
    assert containers_by_state(["odd"])["odd"] == 1


@pytest.mark.parametrize(("value", "expected"), [
    ("", ("127.0.1.4", DEFAULT_METRICS_PORT)),
    ("off", None),
    ("OFF", None),
    ("0.0.0.0:9200", ("0.0.0.0", 9200)),
    (":9300", ("127.0.1.4", 9300)),
    ("[::1]:9400", ("::1", 9400)),
])
def test_parse_metrics_listen(value: str, expected: tuple[str, int] | None) -> None:
    assert parse_metrics_listen(value, address="127.0.1.4") == expected


@pytest.mark.parametrize("value", ["9102", "host:", "host:port", "h:70000"])
def test_parse_metrics_listen_refuses(value: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_metrics_listen(value, address="127.0.0.1")


def value(metrics: AgentMetrics, name: str, **labels: str) -> float:
    got = metrics.registry.get_sample_value(name, labels)
    assert got is not None, f"no sample {name}{labels}:\n{generate_latest(metrics.registry).decode()[:2000]}"
    return got


def test_series_move_on_their_own_registry() -> None:
    registry = CollectorRegistry()
    metrics = AgentMetrics(registry)
    assert metrics.registry is registry
    assert value(metrics, "cp_agent_build_info", version=__version__) == 1
    metrics.observe_containers(["running", "exited", "running"])
    assert value(metrics, "cp_agent_containers", state="running") == 2
    metrics.observe_containers([])
    assert value(metrics, "cp_agent_containers", state="running") == 0
    metrics.observe_probe("http", ok=True, seconds=0.01)
    metrics.observe_probe("http", ok=False, seconds=0.5)
    assert value(metrics, "cp_agent_probes_total", kind="http", result="failure") == 1
    assert value(metrics, "cp_agent_probe_duration_seconds_count", kind="http") == 2
    metrics.api_error(ServiceUnavailable("down"))
    metrics.api_error(Conflict("stale"))
    metrics.api_error(ServiceUnavailable("down"))
    assert value(metrics, "cp_agent_api_errors_total", reason="ServiceUnavailable") == 2
    metrics.set_fenced(True)
    assert value(metrics, "cp_agent_fenced") == 1
    metrics.observe_proxy_apply(reloads=2, failed=True)
    metrics.observe_proxy_apply(reloads=0, failed=False)
    assert value(metrics, "cp_agent_proxy_reloads_total") == 2
    assert value(metrics, "cp_agent_proxy_failures_total") == 1
    assert AgentMetrics().registry.get_sample_value("cp_agent_fenced") == 0  # a fresh one starts afresh
    assert "process_cpu_seconds_total" in generate_latest(registry).decode()


@pytest.mark.parametrize(("servers", "ttl", "expected"), [
    ("http://a:1", 3.0, 1.0),
    ("http://a:1,http://b:2", 3.0, 0.5),
    ("http://a:1,http://b:2", 6.0, 1.0),
    ("http://a:1,http://b:2,http://c:3", 1.0, 0.5),  # floor: a server gets half a second at least
])
def test_a_heartbeat_round_over_every_server_fits_a_third_of_the_ttl(servers: str, ttl: float,
                                                                     expected: float) -> None:
    agent = Agent(Client(servers), FakeRuntime(), AgentConfig(machine="m1", address="127.0.0.1"))
    agent.ttl = ttl
    assert agent.heartbeat_timeout() == pytest.approx(expected)
