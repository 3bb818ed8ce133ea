"""A proxy instance as the agent runs it, on real Docker with local/nginx: the config folder is
mounted read-only (the container can neither change nor plant files in it), the container carries
the hardened defaults, and configs still apply (nginx writes its pid and temp files elsewhere)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from docker_fixture import build_local_images, free_port, remove_cluster_containers  # noqa: E402

from agent.executor import Executor  # noqa: E402
from agent.proxy.manager import ProxyManager  # noqa: E402
from agent.proxy.runners import CONTAINER_DIR  # noqa: E402
from agent.reconcile import DesiredInstance  # noqa: E402
from agent.runtime.docker import DockerRuntime  # noqa: E402
from controlplane.client import Client  # noqa: E402
from controlplane.model import DEFAULT_PROXY_IMAGE, Instance  # noqa: E402

pytestmark = pytest.mark.docker


class EventSink:
    def __init__(self) -> None:
        self.created: list[dict[str, Any]] = []

    async def create(self, resource: str, obj: dict[str, Any]) -> dict[str, Any]:
        self.created.append(obj)
        return obj


@pytest.fixture
async def backend() -> AsyncIterator[int]:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="backend says hi")

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield port
    await runner.cleanup()


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as s, s.get(url) as r:
        return r.status, await r.text()


async def test_proxy_folder_is_read_only_and_configs_still_apply(tmp_path: Path, backend: int) -> None:
    build_local_images()
    cluster = f"test-ro-{uuid.uuid4().hex[:8]}"
    listen = free_port()
    template = {"proxy": {"kind": "loadbalancer", "target": "web", "port": 80},
                "ports": [{"containerPort": 80, "hostPort": listen, "protocol": "tcp"}]}
    inst = cast(Instance, {"metadata": {"name": "lb-0"}, "spec": {"unit": "lb", "index": 0, "machine": "m1",
                                                                   "epoch": 1, "generation": 1, "template": template}})
    runtime = DockerRuntime()
    sink = EventSink()
    manager = ProxyManager(cast(Client, sink), runtime, cluster=cluster, machine="m1", address="127.0.0.1",
                           state_dir=tmp_path)
    executor = Executor(runtime, cluster=cluster, machine="m1", address="127.0.0.1")
    try:
        desired = DesiredInstance.from_instance(inst, {"spec": template}, default_image=DEFAULT_PROXY_IMAGE)
        shaped = manager.shape([desired], {"lb-0": inst})
        result = await executor.sync(shaped)
        status = result.statuses["lb-0"]
        assert status["phase"] == "Running", status
        cid = status["containerID"]
        raw = json.loads((await asyncio.to_thread(subprocess.run, ["docker", "inspect", cid], capture_output=True,
                                                  text=True, check=True)).stdout)[0]
        [mount] = [m for m in raw["Mounts"] if m["Destination"] == CONTAINER_DIR]
        assert mount["RW"] is False and mount["Source"] == str(manager.proxies["lb-0"].conf_dir)
        assert raw["HostConfig"]["SecurityOpt"] == ["no-new-privileges"]
        assert raw["HostConfig"]["CapDrop"] == ["NET_RAW"]

        # the container (root inside) can neither rewrite the config nor plant a symlink in the folder
        for attack in (f"echo evil > {CONTAINER_DIR}/nginx.conf", f"ln -sf /etc/passwd {CONTAINER_DIR}/last-good.conf"):
            assert (await runtime.exec(cid, ["sh", "-c", attack])).exit_code != 0, attack

        manager.units = {"web": {"metadata": {"name": "web"}, "spec": {"image": "x", "ports": [
            {"containerPort": 8080, "hostPort": 0, "protocol": "tcp"}]}}}
        manager.endpoints = {"web": {"metadata": {"name": "web"}, "endpoints": [
            {"address": "127.0.0.1", "port": backend, "containerPort": 8080, "instance": "web-0", "machine": "m1"}]}}
        manager.container_changed("lb-0", cid)
        await manager.apply("lb-0")
        proxy = manager.proxies["lb-0"]
        assert proxy.last_reason == "" and sink.created == [], (proxy.last_reason, sink.created)
        assert proxy.applier is not None and proxy.applier.reloads == 1
        for _ in range(50):
            try:
                if await get(f"http://127.0.0.1:{listen}/") == (200, "backend says hi"):
                    break
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
        else:
            pytest.fail("the proxy never served the backend")
    finally:
        await executor.sync([])
        manager._close("lb-0")
        await runtime.close()
        remove_cluster_containers(cluster)
