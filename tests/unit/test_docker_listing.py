"""The Docker runtime's listing (agent/runtime/docker.py ``list_containers``): every container is
inspected at once rather than one after the other, in the engine's order, and one removed between
the list and its inspect is left out."""

from __future__ import annotations

import asyncio
from typing import Any

from agent.runtime.base import Container, ContainerNotFound
from agent.runtime.docker import DockerRuntime


class ScriptedEngine(DockerRuntime):
    def __init__(self, ids: list[str], *, gone: set[str]) -> None:
        super().__init__("unix:///nowhere.sock")
        self.ids, self.gone = ids, gone
        self.in_flight = self.most_in_flight = 0
        self.queries: list[tuple[str, Any]] = []

    async def _json(self, path: str, method: str = "GET", **kwargs: Any) -> Any:
        self.queries.append((path, kwargs.get("params")))
        return [{"Id": cid} for cid in self.ids]

    async def inspect(self, container_id: str) -> Container:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.01)
            if container_id in self.gone:
                raise ContainerNotFound(container_id)
            return Container(id=container_id, name=container_id, labels={}, state="running")
        finally:
            self.in_flight -= 1


async def test_containers_are_inspected_at_once_in_the_engines_order() -> None:
    engine = ScriptedEngine(["c3", "c1", "c2", "c4"], gone={"c2"})
    listed = await engine.list_containers(cluster="k", machine="m1")
    assert [c.id for c in listed] == ["c3", "c1", "c4"]
    assert engine.most_in_flight == 4
    [(path, params)] = engine.queries
    assert path == "containers/json" and params["all"] == "1"
    assert '"cp.cluster=k"' in params["filters"] and '"cp.machine=m1"' in params["filters"]
