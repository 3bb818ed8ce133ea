"""An instance whose probe turns it ready is reported at once, from the container the last sync
saw (agent/agent.py ``report_readiness``, agent/executor.py ``readiness_statuses``), before the
containers are listed again; never for a container the sync did not see or a spec that changed."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, cast

from agent.agent import Agent, AgentConfig
from agent.health import ProbeState
from agent.runtime.fake import FakeRuntime
from controlplane.client import Client

IMG = "local/web:latest"
READY = ProbeState(ready=True, successes=1, ever_ready=True, last_message="GET /: 200")


class Recorder:
    """The agent's client (status writes) and its runtime's listings, in one log."""

    def __init__(self) -> None:
        self.log: list[tuple[Any, ...]] = []

    async def put_status(self, resource: str, name: str, obj: dict[str, Any]) -> dict[str, Any]:
        self.log.append(("put", name, obj["status"]["phase"], obj["status"]["ready"]))
        return obj


def instance(name: str = "web-0", *, generation: int = 1) -> dict[str, Any]:
    template = {"image": IMG, "ports": [{"containerPort": 8080, "hostPort": 0, "protocol": "tcp"}],
                "health": {"http": {"path": "/", "port": 8080}}}
    return {"metadata": {"name": name},
            "spec": {"unit": "web", "index": 0, "machine": "m1", "epoch": 1, "generation": generation,
                     "template": template},
            "status": {}}


def agent_with(recorder: Recorder) -> tuple[Agent, FakeRuntime]:
    runtime = FakeRuntime(images=[IMG])
    listing = runtime.list_containers

    async def list_containers(**kw: Any) -> Any:
        recorder.log.append(("list",))
        return await listing(**kw)

    runtime.list_containers = list_containers  # type: ignore[method-assign]
    agent = Agent(cast(Client, recorder), runtime, AgentConfig(machine="m1", address="127.0.1.1", cluster="c1"))
    agent.instances = {"web-0": instance()}
    return agent, runtime


async def _until(check: Any) -> None:
    async with asyncio.timeout(5):
        while not check():  # noqa: ASYNC110 -- polling what the loop under test changes
            await asyncio.sleep(0.005)


async def test_a_probe_turning_ready_is_reported_before_the_next_listing() -> None:
    recorder = Recorder()
    agent, _ = agent_with(recorder)
    agent.listed.set()
    loop = asyncio.create_task(agent.sync_loop())
    try:
        await _until(lambda: ("put", "web-0", "Starting", False) in recorder.log)
        before = len(recorder.log)
        agent.prober.set_state("web-0", READY)
        agent._readiness_flipped(["web-0"])
        await _until(lambda: len(recorder.log) >= before + 2)
        assert recorder.log[before:before + 2] == [("put", "web-0", "Running", True), ("list",)]
        await asyncio.sleep(0.05)  # the full sync that follows agrees: it writes nothing more
        assert [e for e in recorder.log[before:] if e[0] == "put"] == [("put", "web-0", "Running", True)]
    finally:
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop


async def test_no_early_report_for_a_changed_spec_or_an_unseen_container() -> None:
    recorder = Recorder()
    agent, _ = agent_with(recorder)
    agent.synced_specs = {"web-0": agent.instances["web-0"]["spec"]}
    result = await agent.executor.sync(agent.desired())
    await agent.report(result.statuses)
    agent.prober.set_state("web-0", READY)
    before = len(recorder.log)

    agent.instances["web-0"] = instance(generation=2)  # a new spec: the sync decides what runs
    agent._readiness_flipped(["web-0"])
    await agent.report_readiness()
    assert recorder.log[before:] == [] and agent.ready_changed == set()

    agent.instances["web-0"] = instance()
    agent.executor.last_running = {}  # the container was not seen running by the last sync
    agent._readiness_flipped(["web-0", "gone-0"])
    await agent.report_readiness()
    assert recorder.log[before:] == []


async def test_readiness_statuses_are_the_sync_s_own() -> None:
    recorder = Recorder()
    agent, _ = agent_with(recorder)
    desired = agent.desired()
    await agent.executor.sync(desired)
    agent.prober.set_state("web-0", READY)
    early = agent.executor.readiness_statuses(["web-0", "other-0"])
    assert list(early) == ["web-0"]
    assert early == (await agent.executor.sync(desired)).statuses  # what the full sync says next
    assert agent.executor.ready_told == {"web-0": early["web-0"]["containerID"]}  # the Ready Event, once
