"""Talking to a live cp-apiserver as its machines' agents do, for the trust tests of the paths the
API server proxies to an agent (test_log_trust.py: logs; test_exec_trust.py: exec).

``call`` is one request to the API, ``heartbeat`` a machine's (with its node token),
``bound_instance`` an Instance already bound to a machine, ``running`` serves an aiohttp app
on 127.0.0.1 and a free port for a block (the agent's own log/exec app, or a recorder), and
``docker_container`` runs a real container labelled as an instance for a block.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web
from apiserver_fixture import ApiServer
from docker_fixture import build_local_images, remove_cluster_containers

ADMIN, VIEWER = "admin-token", "viewer-token"


def json_or_raw(raw: bytes) -> Any:
    """A Status or object when the body is JSON, else the bytes as they came."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw


async def call(api: ApiServer, method: str, path: str, body: Any = None, *, token: str | None = ADMIN,
               headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """One request to the API (async: the agents' apps of a test share this event loop)."""
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    async with aiohttp.ClientSession() as session, session.request(
            method, api.url + path, json=body, headers=sent, timeout=aiohttp.ClientTimeout(total=60)) as resp:
        raw = await resp.read()
    return resp.status, json_or_raw(raw)


async def heartbeat(api: ApiServer, machine: str, *, address: str = "127.0.0.1", port: int = 0,
                    labels: dict[str, str] | None = None, **extra: Any) -> tuple[int, Any]:
    body = {"address": address, "agentPort": port, "capacity": {"cpu": 2.0, "memoryMB": 1024},
            "agentVersion": "test", "labels": labels or {}, **extra}
    return await call(api, "POST", f"/api/v1/machines/{machine}/heartbeat", body, token=f"node-{machine}-token")


async def signing_keys(api: ApiServer, machine: str, port: int) -> list[object]:
    """Heartbeat ``machine`` at agent port ``port``; the log-signing keys of the reply."""
    status, reply = await heartbeat(api, machine, port=port)
    assert status == 200, reply
    return list(reply["logSigningKeys"])


async def bound_instance(api: ApiServer, name: str, machine: str) -> None:
    status, obj = await call(api, "POST", "/api/v1/instances", {
        "metadata": {"name": name}, "spec": {"unit": name.rpartition("-")[0], "index": 0, "machine": machine}})
    assert status == 201, obj


@contextlib.asynccontextmanager
async def running(app: web.Application) -> AsyncIterator[int]:
    """Serve ``app`` on 127.0.0.1 and a free port for the block; yields the port. A followed stream
    still open at the end (its container sleeps) is cut after a second."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def docker_container(machine: str, instance: str, command: tuple[str, ...]) -> AsyncIterator[tuple[Any, str]]:
    """A real ``local/web`` container running ``command``, labelled as ``instance`` on ``machine`` of
    a throwaway cluster, for the block; yields the DockerRuntime that made it and the container's
    id. The container (and the rest of the cluster's) is removed after."""
    from agent.runtime.base import ContainerSpec
    from agent.runtime.docker import DockerRuntime

    build_local_images()
    cluster = f"test-{uuid.uuid4().hex[:8]}"
    runtime = DockerRuntime()
    try:
        container = await runtime.create_and_start(ContainerSpec(
            name=f"{cluster}-{instance}", image="local/web:latest", host_ip="127.0.0.1",
            labels={"cp.cluster": cluster, "cp.machine": machine, "cp.instance": instance}, command=command))
        yield runtime, container.id
    finally:
        await runtime.close()
        remove_cluster_containers(cluster)
