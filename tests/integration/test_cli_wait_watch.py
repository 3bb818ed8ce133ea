"""cpctl's wait, woken by a watch on the units' instances (controlplane/cli/changes.py), against a
real cp-apiserver (controllers included) on a real etcd: it sees an instance turn ready as soon as
the API holds it, not a poll later; and a watch that cannot serve leaves it to its polls, with no
error shown. The test plays the machine's agent through its node token; no Docker."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import pytest
from apiserver_fixture import ApiServer
from etcd_fixture import EtcdServer

from controlplane.cli import changes, wait
from controlplane.cli.rest import RestClient
from controlplane.client import Client

LONG_POLL = 30.0  # longer than any test here: only a watch can wake the wait in time


@pytest.fixture(scope="module")
def server(etcd: EtcdServer) -> Iterator[ApiServer]:
    with ApiServer(etcd.url, f"/cp-test/cli-wait-{uuid.uuid4().hex[:8]}") as api:
        yield api


class Lines:
    """A display that keeps the summaries it was shown, with when."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, str]] = []

    def update(self, progress: list[wait.UnitProgress]) -> None:
        for item in progress:
            if not self.seen or self.seen[-1][1] != item.summary():
                self.seen.append((time.monotonic(), item.summary()))

    def close(self) -> None:
        pass


async def play_agent(server: ApiServer, machine: str, unit: str, *, after: float) -> float:
    """Heartbeat ``machine``, wait ``after`` seconds once the instance is bound, report it Running
    and ready; returns when the API held that."""
    async with Client(server.url, token=f"node-{machine}-token") as node:
        bound_at = None
        while True:
            await node.heartbeat(machine, {"address": "127.0.1.7", "labels": {"role": unit},
                                           "capacity": {"cpu": 4, "memoryMB": 4096}})
            items, _ = await node.list_all("instances", field_selector=f"spec.unit={unit},spec.machine={machine}")
            if items:
                bound_at = bound_at or time.monotonic()
                if time.monotonic() - bound_at >= after:
                    inst = items[0]
                    inst["status"].update({"phase": "Running", "ready": True, "address": "127.0.1.7"})
                    await node.put_status("instances", inst["metadata"]["name"], inst)
                    return time.monotonic()
            await asyncio.sleep(0.05)


async def run_wait(server: ApiServer, unit: str, machine: str, *, after: float,
                   timeout: float = 20.0) -> tuple[float, Lines]:
    """Create ``unit`` for ``machine``, wait for it in a thread while playing the agent; returns how
    long after the API held the instance ready the wait returned."""
    lines = Lines()
    with RestClient(server.url, token="admin-token") as api:
        api.create("units", {"apiVersion": "v1", "kind": "Unit", "metadata": {"name": unit},
                             "spec": {"image": "x", "replicas": 1, "placement": {"machineMetadata": {"role": [unit]}}}})
        waited = asyncio.ensure_future(asyncio.to_thread(wait.wait_for_units, api, [unit], timeout=timeout,
                                                         display=lines))
        held = await play_agent(server, machine, unit, after=after)
        await waited
    return time.monotonic() - held, lines


async def test_the_wait_is_woken_by_the_instance_turning_ready(server: ApiServer,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wait, "poll_interval", lambda elapsed, units: LONG_POLL)
    late, lines = await run_wait(server, "woken", "m7", after=0.3)
    assert late < 2.0  # a poll would have come LONG_POLL seconds after the first
    assert lines.seen[0][1] == "unit/woken: 0/1 ready" and lines.seen[-1][1] == "unit/woken: 1/1 ready"


async def test_without_a_watch_the_polls_still_see_it(server: ApiServer, monkeypatch: pytest.MonkeyPatch,
                                                     capfd: pytest.CaptureFixture[str]) -> None:
    # no watch can be opened (its server cannot be reached): the thread ends without a word and
    # the polls find the instance ready
    follow = changes.InstanceChanges.follow
    made: list[changes.InstanceChanges] = []

    def unreachable(self: changes.InstanceChanges, api: RestClient, unit: str, revision: str, *,
                    seconds: float) -> None:
        made.append(self)
        follow(self, RestClient("http://127.0.0.1:9", token="admin-token"), unit, revision, seconds=seconds)

    monkeypatch.setattr(changes.InstanceChanges, "follow", unreachable)
    late, lines = await run_wait(server, "polled", "m8", after=0.5)
    assert late < 2.0
    assert lines.seen[-1][1] == "unit/polled: 1/1 ready"
    [watching] = made
    assert not watching.changed.is_set() and not any(t.is_alive() for t in watching.threads)
    assert "Traceback" not in capfd.readouterr().err


async def test_the_timeout_and_its_message_stand(server: ApiServer) -> None:
    with RestClient(server.url, token="admin-token") as api:
        api.create("units", {"apiVersion": "v1", "kind": "Unit", "metadata": {"name": "nowhere"},
                             "spec": {"image": "x", "placement": {"machineMetadata": {"role": ["none"]}}}})
        started = time.monotonic()
        with pytest.raises(wait.WaitTimeout) as err:
            await asyncio.to_thread(wait.wait_for_units, api, ["nowhere"], timeout=1.0, display=Lines())
    assert 1.0 <= time.monotonic() - started < 3.0
    assert "timed out after 1s waiting for unit/nowhere" in str(err.value.format_message())
    assert any("nowhere-0: Pending" in line for line in err.value.details)
