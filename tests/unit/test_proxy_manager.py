"""The proxy manager as a plug-in of the agent, against FakeRuntime and a recording API client:
containers shaped, the container id learnt from the agent's reports (no polling), status fields
laid over the report, and dropped routes reported once per distinct set."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from agent.agent import Agent, AgentConfig
from agent.proxy.manager import NGINX_COMMAND, ProxyManager
from agent.reconcile import DesiredInstance
from agent.runtime.base import ExecResult
from agent.runtime.fake import FakeRuntime
from controlplane.client import Client
from controlplane.model import DEFAULT_PROXY_IMAGE, Instance

EDGE_TEMPLATE = {"proxy": {"kind": "edge", "domain": "mywebsite.com", "port": 80}}


class RecordingClient:
    def __init__(self) -> None:
        self.created: list[tuple[str, dict[str, Any]]] = []
        self.statuses: list[tuple[str, dict[str, Any]]] = []

    async def create(self, resource: str, obj: dict[str, Any]) -> dict[str, Any]:
        self.created.append((resource, obj))
        return obj

    async def put_status(self, resource: str, name: str, obj: dict[str, Any]) -> dict[str, Any]:
        self.statuses.append((name, obj["status"]))
        return obj


def edge_instance() -> Instance:
    return {"metadata": {"name": "edge-0"},
            "spec": {"unit": "edge", "index": 0, "machine": "m1", "epoch": 1, "generation": 1,
                     "template": EDGE_TEMPLATE}}  # type: ignore[typeddict-item]


def exposed(name: str, host: str) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"image": "local/web", "expose": {"host": host}}}


def make_manager(tmp_path: Path, client: RecordingClient, runtime: FakeRuntime) -> ProxyManager:
    return ProxyManager(cast(Client, client), runtime, cluster="c1", machine="m1", address="127.0.0.1",
                        state_dir=tmp_path)


def shape_edge(manager: ProxyManager) -> list[DesiredInstance]:
    inst = edge_instance()
    desired = DesiredInstance.from_instance(inst, {"spec": EDGE_TEMPLATE}, default_image=DEFAULT_PROXY_IMAGE)
    return manager.shape([desired], {"edge-0": inst})


def route_events(client: RecordingClient) -> list[dict[str, Any]]:
    return [obj for resource, obj in client.created if resource == "events" and obj["reason"] == "RouteDropped"]


async def test_dropped_route_is_reported_once_per_distinct_set(tmp_path: Path) -> None:
    client, runtime = RecordingClient(), FakeRuntime()
    manager = make_manager(tmp_path, client, runtime)
    manager.units = {"web": exposed("web", "someapp"), "bad": exposed("bad", "Bad_Host!")}
    [shaped] = shape_edge(manager)
    assert shaped.command == NGINX_COMMAND and shaped.network == "host"
    try:
        for _ in range(3):  # re-renders of the same state: one event
            await manager.apply("edge-0")
        [event] = route_events(client)
        assert event["type"] == "Warning"
        assert event["involvedObject"] == {"kind": "Instance", "name": "edge-0"}
        assert event["message"] == ("1 route(s) dropped: unit 'bad' (host 'Bad_Host!'): "
                                    "expose.host 'Bad_Host!' is not a DNS label")

        # endpoint churn on the dropped route is not a new set
        manager.endpoints = {"bad": {"metadata": {"name": "bad"},
                                     "endpoints": [{"address": "127.0.1.2", "port": 32768}]}}
        await manager.apply("edge-0")
        assert len(route_events(client)) == 1

        # a second dropped route: a new set, one more event naming both
        manager.units["zzz"] = exposed("zzz", "someapp")
        await manager.apply("edge-0")
        await manager.apply("edge-0")
        events = route_events(client)
        assert len(events) == 2
        assert events[1]["message"] == (
            "2 route(s) dropped: unit 'bad' (host 'Bad_Host!'): expose.host 'Bad_Host!' is not a DNS label; "
            "unit 'zzz' (host 'someapp'): host someapp.mywebsite.com already routed to unit 'web'")

        # nothing dropped any more: no event; dropping again later is a new set
        del manager.units["bad"], manager.units["zzz"]
        await manager.apply("edge-0")
        assert len(route_events(client)) == 2
        manager.units["bad"] = exposed("bad", "Bad_Host!")
        await manager.apply("edge-0")
        assert len(route_events(client)) == 3
        assert runtime.calls == []  # no container reported yet: nothing applied into one
    finally:
        manager._close("edge-0")


async def test_agent_tells_the_plugin_of_new_containers_and_lays_its_status_fields_over(tmp_path: Path) -> None:
    client, runtime = RecordingClient(), FakeRuntime(images=[DEFAULT_PROXY_IMAGE])
    manager = make_manager(tmp_path, client, runtime)
    agent = Agent(cast(Client, client), runtime, AgentConfig(machine="m1", address="127.0.0.1", cluster="c1"),
                  plugins=[manager])
    agent.instances = {"edge-0": cast(dict[str, Any], edge_instance())}
    desired = agent.desired()
    assert [d.command for d in desired] == [NGINX_COMMAND]
    proxy = manager.proxies["edge-0"]
    assert proxy.debouncer is not None
    try:
        result = await agent.executor.sync(desired)
        [cid] = runtime.containers
        # a route appears before the report: the apply the report triggers has work to do
        manager.units = {"web": exposed("web", "someapp")}
        url = f"http://127.0.0.1:{proxy.status_port}/__cp/config-hash"
        runtime.exec_results[("wget", "-q", "-O", "-", url)] = ExecResult(
            0, manager.render_for(proxy).config_hash.encode())

        await agent.report(result.statuses)
        assert manager.container_ids == {"edge-0": cid}
        assert proxy.debouncer.pokes == 1
        [(name, status)] = client.statuses
        assert name == "edge-0" and status["containerID"] == cid
        assert status["hostPorts"] == [{"containerPort": 80, "hostPort": proxy.listen_port, "protocol": "tcp"}]
        assert status["address"] == "127.0.0.1"

        await proxy.debouncer.flush()
        assert ("exec", cid) in runtime.calls  # applied into the container the agent reported
        assert proxy.applier is not None and proxy.applier.reloads == 1
        assert manager.metrics.registry.get_sample_value("cp_agent_proxy_reloads_total") == 1
        assert manager.metrics.registry.get_sample_value("cp_agent_proxy_failures_total") == 0
        assert proxy.last_reason == "" and client.created == []

        await agent.report(result.statuses)  # same container, same status: no poke, no write
        assert proxy.debouncer.pokes == 1 and len(client.statuses) == 1
    finally:
        manager._close("edge-0")
