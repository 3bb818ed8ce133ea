"""DockerRuntime, reconcile and executor against a real Docker engine and the local images.

Every container carries a unique test cluster label and is removed afterwards; ports are published
on 127.0.1.50 only.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from docker_fixture import build_local_images, remove_cluster_containers  # noqa: E402

from agent.executor import Executor  # noqa: E402
from agent.health import Prober  # noqa: E402
from agent.reconcile import DesiredInstance  # noqa: E402
from agent.runtime.base import ContainerSpec, PortMapping  # noqa: E402
from agent.runtime.docker import DockerRuntime  # noqa: E402
from controlplane.model import DEFAULT_PIDS_LIMIT  # noqa: E402

pytestmark = pytest.mark.docker

ADDRESS = "127.0.1.50"
WEB = "local/web:latest"
T = TypeVar("T")


@pytest.fixture(scope="session")
def local_images() -> None:
    build_local_images()


@pytest.fixture(scope="session")
def cluster(local_images: None) -> Iterator[str]:
    name = f"test-{uuid.uuid4().hex[:8]}"
    yield name
    remove_cluster_containers(name)


@pytest.fixture
async def runtime(cluster: str) -> AsyncIterator[DockerRuntime]:
    rt = DockerRuntime()
    yield rt
    await rt.close()


def spec(cluster: str, name: str, **kw: object) -> ContainerSpec:
    labels = {"cp.cluster": cluster, "cp.machine": "m1", "cp.instance": name}
    return ContainerSpec(name=f"{cluster}-{name}", image=WEB, labels=labels, host_ip=ADDRESS, **kw)  # type: ignore[arg-type]


def desired(name: str, **kw: object) -> DesiredInstance:
    options: dict[str, object] = {
        "unit": name.rpartition("-")[0],
        "index": int(name.rpartition("-")[2]),
        "machine": "m1",
        "image": WEB,
        "generation": 1,
        "epoch": 1,
        "ports": (PortMapping(8080, 0),),
    }
    options.update(kw)
    return DesiredInstance(name=name, **options)  # type: ignore[arg-type]


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.get(url, timeout=aiohttp.ClientTimeout(total=5)) as r:
        return r.status, await r.text()


async def until(predicate: Callable[[], Awaitable[T]], within: float = 10.0) -> T:
    """Poll `predicate` until it returns something truthy or `within` seconds pass."""
    deadline = time.monotonic() + within
    while True:
        value = await predicate()
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.1)


async def test_create_inspect_publishes_on_host_ip(runtime: DockerRuntime, cluster: str) -> None:
    c = await runtime.create_and_start(
        spec(cluster, "web-0", env={"CP_INSTANCE": "web-0", "CP_MACHINE": "m1"}, ports=(PortMapping(8080, 0),))
    )
    try:
        assert c.state == "running"
        [port] = c.host_ports
        assert port.container_port == 8080 and port.host_port > 0
        again = await runtime.inspect(c.id)
        assert again.host_ports == c.host_ports and again.started_at is not None
        assert again.labels["cp.cluster"] == cluster
        listed = await runtime.list_containers(cluster=cluster, machine="m1")
        assert c.id in {x.id for x in listed}

        async def answered() -> str | None:
            try:
                status, body = await get(f"http://{ADDRESS}:{port.host_port}/")
            except aiohttp.ClientError:
                return None
            return body if status == 200 else None

        body = await until(answered)
        assert body is not None and "web-0" in body and "m1" in body
    finally:
        await runtime.remove(c.id)
    assert c.id not in {x.id for x in await runtime.list_containers(cluster=cluster)}


async def test_exec_and_logs(runtime: DockerRuntime, cluster: str) -> None:
    c = await runtime.create_and_start(
        spec(cluster, "logs-0", command=("sh", "-c", "echo one; echo two >&2; sleep 1; echo three; sleep 60"))
    )
    try:
        result = await runtime.exec(c.id, ["sh", "-c", "echo hi; exit 3"])
        assert result.exit_code == 3 and result.output == b"hi\n"

        async def followed() -> bytes:
            out = b""
            async for chunk in runtime.logs(c.id, follow=True):
                out += chunk
                if b"three" in out:
                    return out
            return out

        out = await asyncio.wait_for(followed(), 10)
        assert b"one\n" in out and b"two\n" in out and b"three\n" in out
        tail = b"".join([chunk async for chunk in runtime.logs(c.id, tail=1)])
        assert tail == b"three\n"
        await runtime.stop(c.id, grace=5)
        stopped = await runtime.inspect(c.id)
        assert stopped.state == "exited" and stopped.exit_code is not None and stopped.finished_at is not None
    finally:
        await runtime.remove(c.id)


async def test_events_report_our_containers(runtime: DockerRuntime, cluster: str) -> None:
    seen: list[str] = []

    async def watch() -> None:
        async for event in runtime.events(cluster=cluster):
            seen.append(event.action)
            if event.action == "destroy":
                return

    task = asyncio.create_task(watch())
    await asyncio.sleep(0.3)
    c = await runtime.create_and_start(spec(cluster, "events-0", command=("sh", "-c", "exit 0")))
    await runtime.remove(c.id)
    await asyncio.wait_for(task, 10)
    assert "start" in seen and "destroy" in seen


async def test_missing_image_fails_to_pull_cleanly(runtime: DockerRuntime, cluster: str) -> None:
    # A registry on loopback port 1: refused at once, no traffic leaves the machine.
    image = "127.0.0.1:1/cp-missing:1"
    assert not await runtime.image_present(image)
    executor = Executor(runtime, cluster=cluster, machine="m-pull", address=ADDRESS)
    result = await executor.sync([desired("pull-0", machine="m-pull", image=image)])
    status = result.statuses["pull-0"]
    assert status["phase"] == "Failed" and status["reason"] == "ImagePullFailed"
    assert image in status["message"]


async def test_adopt_after_agent_restart_and_recreate_when_removed(runtime: DockerRuntime, cluster: str) -> None:
    machine = "m-adopt"
    want = [desired("web-0", machine=machine, env={"GREETING": "hi"}, health={"http": {"path": "/", "port": 8080}})]
    prober = Prober(runtime)
    first = Executor(runtime, cluster=cluster, machine=machine, address=ADDRESS, prober=prober)
    result = await first.sync(want)
    assert [a.kind for a in result.actions] == ["create"]
    status = result.statuses["web-0"]
    assert status["phase"] == "Starting" and status["containerID"]
    created_id = status["containerID"]
    [hp] = status["hostPorts"]
    assert hp["containerPort"] == 8080 and hp["hostPort"] > 0 and status["address"] == ADDRESS

    async def probed_ready() -> bool:
        await prober.tick()
        return prober.ready("web-0") is True

    assert await until(probed_ready)
    status = (await first.sync(want)).statuses["web-0"]
    assert status["phase"] == "Running" and status["ready"] is True
    c = await runtime.inspect(created_id)
    env_check = await runtime.exec(created_id, ["sh", "-c", 'echo "$CP_UNIT $CP_INSTANCE $CP_MACHINE $GREETING"'])
    assert env_check.output == f"web web-0 {machine} hi\n".encode()
    assert c.labels["cp.generation"] == "1" and c.labels["cp.epoch"] == "1"

    # A restarted agent (fresh executor, empty memory) adopts the container instead of duplicating it.
    second = Executor(runtime, cluster=cluster, machine=machine, address=ADDRESS)
    result = await second.sync(want)
    assert [(a.kind, a.container_id) for a in result.actions] == [("adopt", created_id)]
    assert [x.id for x in await runtime.list_containers(cluster=cluster, machine=machine)] == [created_id]

    # Removed behind our back: the next sync creates a new one.
    await runtime.remove(created_id)
    result = await second.sync(want)
    assert [a.kind for a in result.actions] == ["create"]
    new_id = result.statuses["web-0"]["containerID"]
    assert new_id and new_id != created_id

    # A new generation replaces it; nothing desired removes it.
    result = await second.sync([desired("web-0", machine=machine, generation=2)])
    assert [a.kind for a in result.actions] == ["stop", "remove", "create"]
    result = await second.sync([])
    assert [a.kind for a in result.actions] == ["stop", "remove"]
    assert await runtime.list_containers(cluster=cluster, machine=machine) == []


async def test_crash_loop_backs_off(runtime: DockerRuntime, cluster: str) -> None:
    machine = "m-crash"
    want = [desired("crash-0", machine=machine, command=("sh", "-c", "exit 7"), ports=())]
    executor = Executor(runtime, cluster=cluster, machine=machine, address=ADDRESS)
    await executor.sync(want)
    reasons: list[str] = []
    restart_times: list[float] = []
    deadline = time.monotonic() + 20
    while len(restart_times) < 3 and time.monotonic() < deadline:
        result = await executor.sync(want)
        [action] = result.actions
        status = result.statuses["crash-0"]
        if action.kind == "restart" and action.delay == 0:
            restart_times.append(time.monotonic())
        elif action.kind == "restart":
            reasons.append(status["reason"])
            assert result.requeue_after is not None and 0 < result.requeue_after <= 60
        await asyncio.sleep(0.1)
    assert len(restart_times) == 3
    assert "CrashLoopBackOff" in reasons
    # Delays grow: 1 s, 2 s, 4 s (measured between restarts: at least 2 s then 4 s, minus slack).
    assert restart_times[2] - restart_times[1] > restart_times[1] - restart_times[0] + 1.0
    status = (await executor.sync(want)).statuses["crash-0"]
    assert status["restarts"] == 3 and status["exitCode"] in (7, None)
    await executor.sync([])


def inspect_raw(container_id: str) -> dict[str, Any]:
    out = subprocess.run(["docker", "inspect", container_id], capture_output=True, text=True, check=True).stdout
    return dict(json.loads(out)[0])


async def test_containers_are_hardened_and_run_as_the_units_user(runtime: DockerRuntime, cluster: str) -> None:
    machine = "m-secure"
    executor = Executor(runtime, cluster=cluster, machine=machine, address=ADDRESS)
    want = [desired("plain-0", machine=machine, command=("sleep", "60"), ports=()),
            desired("nobody-0", machine=machine, command=("sleep", "60"), ports=(), user="65534", pids_limit=64)]
    result = await executor.sync(want)
    try:
        plain, nobody = (result.statuses[n]["containerID"] for n in ("plain-0", "nobody-0"))
        host = inspect_raw(plain)["HostConfig"]
        assert host["SecurityOpt"] == ["no-new-privileges"] and host["CapDrop"] == ["NET_RAW"]
        assert host["PidsLimit"] == DEFAULT_PIDS_LIMIT
        assert (await runtime.exec(plain, ["id", "-u"])).output == b"0\n"  # the image's user
        raw = inspect_raw(nobody)
        assert raw["Config"]["User"] == "65534" and raw["HostConfig"]["PidsLimit"] == 64
        assert (await runtime.exec(nobody, ["id", "-u"])).output == b"65534\n"
        # what the kernel enforces: no privilege gain through exec, and CAP_NET_RAW (bit 13) gone
        status = (await runtime.exec(plain, ["cat", "/proc/self/status"])).output.decode()
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        assert fields["NoNewPrivs"].strip() == "1"
        assert not int(fields["CapBnd"], 16) & (1 << 13) and int(fields["CapBnd"], 16) & (1 << 10)  # 10: NET_BIND
    finally:
        await executor.sync([])
