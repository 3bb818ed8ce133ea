"""Several API servers for every client (``--server A,B``): the client fails over, watches follow,
and an agent whose API server (the leader too) is killed keeps its machine Ready.

- The client against small in-process servers: a closed port, a 503, a connection that breaks after
  the request was sent (a POST is not sent twice; the idempotent heartbeat is), a watch that breaks.
- ``mirror`` (what the agent and its proxy plug-in follow resources with) over two real
  cp-apiservers: after ``kill -9`` of the one it watched, it re-lists and watches on the other.
- A real cp-agent on the real Docker engine, ``--server A,B``, with one running instance; A serves
  its heartbeats and leads. ``kill -9`` A: for 3 TTLs (``--machine-ttl 3``) the Machine, sampled
  from B every 100 ms and watched on B, never turns NotReady, and the instance keeps its binding,
  epoch and container. Then cpctl with the dead server first in its list still works.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from agent_process import AgentProcess
from aiohttp import web
from apiserver_fixture import ApiServer
from docker_fixture import build_local_images, free_port
from machine_helper import call, wait_for

from controlplane.client import Client
from controlplane.errors import CPError, ServiceUnavailable
from controlplane.mirror import mirror

TTL = 3
UNIT = {"metadata": {"name": "web"},
        "spec": {"image": "local/web:latest", "replicas": 1,
                 "ports": [{"containerPort": 8080, "hostPort": 0, "protocol": "tcp"}],
                 "health": {"http": {"port": 8080, "path": "/"}}}}
HEARTBEAT_ROUTE = "/api/v1/machines/{name}/heartbeat"


# ---- the client against in-process servers --------------------------------------------------

class FakeApi:
    """A server that answers lists, creates and heartbeats (or 503s every call), counting them."""

    def __init__(self, *, unavailable: bool = False, break_watch: bool = False) -> None:
        self.unavailable = unavailable
        self.break_watch = break_watch
        self.calls: list[str] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.calls.append(f"{request.method} {request.path}")
        if self.unavailable:
            return web.json_response({"kind": "Status", "code": 503, "reason": "ServiceUnavailable",
                                      "message": "the store is unavailable"}, status=503)
        if request.query.get("watch") == "1":
            response = web.StreamResponse()
            await response.prepare(request)
            await response.write(json.dumps({"type": "ADDED", "object": {"metadata": {"name": "u1"}}}).encode()
                                 + b"\n")
            if self.break_watch:
                assert request.transport is not None
                request.transport.abort()  # mid-stream, as a killed server
                return response
            await asyncio.sleep(0.2)
            return response
        if request.method == "POST":
            return web.json_response({"metadata": {"name": "created"}}, status=201)
        return web.json_response({"kind": "UnitList", "items": [], "metadata": {"resourceVersion": "7"}})

    async def start(self) -> FakeApi:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


class SwallowingServer:
    """Accepts a connection, reads the request and closes without an answer (a server that died
    after the request reached it), or with ``hang`` never answers at all (a hung server)."""

    def __init__(self, *, hang: bool = False) -> None:
        self.hang = hang
        self.requests = 0
        self.server: asyncio.Server | None = None
        self.url = ""

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        self.requests += 1
        if self.hang:
            await asyncio.sleep(30)
        writer.close()

    async def start(self) -> SwallowingServer:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
async def good() -> AsyncIterator[FakeApi]:
    api = await FakeApi().start()
    yield api
    await api.stop()


def closed_port_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


async def test_a_server_that_is_down_or_answers_503_hands_the_call_to_the_next(good: FakeApi) -> None:
    unavailable = await FakeApi(unavailable=True).start()
    errors: list[CPError] = []
    down = closed_port_url()
    try:
        async with Client([down, unavailable.url, good.url], timeout=2, on_error=errors.append) as api:
            listed = await api.list("units")
            assert listed["kind"] == "UnitList"
            assert api.server == good.url  # asked first from now on
            await api.list("units")
            assert unavailable.calls == ["GET /api/v1/units"]  # not asked again
            assert [e.code for e in errors] == [503, 503]
            assert "cannot reach the server at " + down in str(errors[0].message)
    finally:
        await unavailable.stop()


async def test_every_server_failing_names_each_of_them() -> None:
    first, second = closed_port_url(), closed_port_url()
    async with Client(f"{first},{second}", timeout=2) as api:
        with pytest.raises(ServiceUnavailable) as err:
            await api.get("units", "web")
    message = str(err.value.message)
    assert message.startswith("every API server failed: ")
    assert f"cannot reach the server at {first}" in message and f"cannot reach the server at {second}" in message
    async with Client(first, timeout=2) as one:  # one server: the message it always had
        with pytest.raises(ServiceUnavailable, match=f"^cannot reach the server at {first}: "):
            await one.get("units", "web")


async def test_a_post_that_may_have_been_applied_is_not_sent_again_but_a_heartbeat_is(good: FakeApi) -> None:
    swallowing = await SwallowingServer().start()
    try:
        async with Client([swallowing.url, good.url], timeout=2) as api:
            with pytest.raises(ServiceUnavailable, match=re.escape(swallowing.url)):
                await api.create("units", {"metadata": {"name": "web"}})
            assert swallowing.requests == 1 and good.calls == []  # never sent twice
            api.servers.answered(swallowing.url)
            await api.heartbeat("m1", {}, timeout=1)
            assert swallowing.requests == 2
            assert good.calls == ["POST /api/v1/machines/m1/heartbeat"]
    finally:
        await swallowing.stop()


async def test_a_hung_server_costs_a_heartbeat_only_its_share_of_the_timeout(good: FakeApi) -> None:
    hung = await SwallowingServer(hang=True).start()
    try:
        async with Client([hung.url, good.url], timeout=10) as api:
            started = time.monotonic()
            await api.heartbeat("m1", {}, timeout=0.3)
            assert time.monotonic() - started < 1.5
            assert hung.requests == 1 and good.calls == ["POST /api/v1/machines/m1/heartbeat"]
            assert api.server == good.url
    finally:
        await hung.stop()


async def test_a_watch_that_breaks_moves_the_client_to_the_next_server(good: FakeApi) -> None:
    breaking = await FakeApi(break_watch=True).start()
    try:
        async with Client([closed_port_url(), breaking.url, good.url], timeout=2) as api:
            events = []
            with pytest.raises(ServiceUnavailable, match=re.escape(breaking.url)):
                async for event in api.watch("units", resource_version="7"):
                    events.append(event)
            assert [e["object"]["metadata"]["name"] for e in events] == ["u1"]
            assert api.server == good.url
            again = [e async for e in api.watch("units", resource_version="7", timeout_seconds=1)]
            assert len(again) == 1 and good.calls == ["GET /api/v1/units"]
    finally:
        await breaking.stop()


# ---- mirror over two real API servers ---------------------------------------------------------

async def test_mirror_re_lists_and_watches_on_the_next_server_after_a_kill(etcd: Any, unique_prefix: str) -> None:
    with ApiServer(etcd.url, unique_prefix, controllers=False) as a, \
            ApiServer(etcd.url, unique_prefix, controllers=False) as b:
        items: dict[str, dict[str, Any]] = {}
        changed = asyncio.Event()
        async with Client([a.url, b.url], token="admin-token", timeout=2) as api:
            task = asyncio.create_task(mirror(api, "units", items, on_change=changed.set))
            try:
                assert call(a.url, "POST", "/api/v1/units", {"metadata": {"name": "u1"},
                                                             "spec": {"image": "local/web:1"}})[0] == 201
                await asyncio.wait_for(_until(lambda: "u1" in items, changed), timeout=10)
                assert api.server == a.url
                killed = time.monotonic()
                a.kill()
                assert call(b.url, "POST", "/api/v1/units", {"metadata": {"name": "u2"},
                                                             "spec": {"image": "local/web:1"}})[0] == 201
                await asyncio.wait_for(_until(lambda: "u2" in items, changed), timeout=10)
                assert api.server == b.url
                print(f"u2 seen {time.monotonic() - killed:.2f} s after the kill")
                assert time.monotonic() - killed < 5  # the break, not the 30 s silence, moved it
                assert set(items) == {"u1", "u2"}
            finally:
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task


async def _until(predicate: Any, changed: asyncio.Event) -> None:
    while not predicate():
        changed.clear()
        await changed.wait()


# ---- a real agent, its server and the leader killed --------------------------------------------

def scrape(url: str, token: str | None = "admin-token") -> str:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=2) as resp:
        return str(resp.read().decode())


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample of an exposition (0 when absent)."""
    for line in text.splitlines():
        if not line.startswith(name) or line[len(name):len(name) + 1] not in ("{", " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line[: line.rfind("}") + 1]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def is_leader(api: ApiServer) -> bool:
    try:
        return sample(scrape(api.url + "/metrics"), "cp_leader") == 1.0
    except OSError:
        return False


def heartbeats_served(api: ApiServer) -> float:
    return sample(scrape(api.url + "/metrics"), "cp_apiserver_requests_total", route=HEARTBEAT_ROUTE,
                  method="POST", code="200")


class MachineSampler:
    """From one server: GET the Machine every 100 ms, and watch machines, recording every state seen."""

    def __init__(self, api: ApiServer, machine: str) -> None:
        self.api = api
        self.machine = machine
        self.polled: list[str] = []
        self.watched: list[str] = []
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._poll, daemon=True),
                        threading.Thread(target=self._watch, daemon=True)]

    def _poll(self) -> None:
        while not self.stop.is_set():
            status, obj = call(self.api.url, "GET", f"/api/v1/machines/{self.machine}", timeout=2)
            if status == 200:
                self.polled.append(obj["status"]["state"])
            else:
                self.errors.append(f"GET machine: {status} {obj}")
            self.stop.wait(0.1)

    def _watch(self) -> None:
        url = f"{self.api.url}/api/v1/machines?watch=1&timeoutSeconds=60"
        req = urllib.request.Request(url, headers={"Authorization": "Bearer admin-token"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            while not self.stop.is_set():
                line = resp.readline()
                if not line:
                    return
                event = json.loads(line)
                obj = event.get("object") or {}
                if event["type"] != "BOOKMARK" and obj.get("metadata", {}).get("name") == self.machine:
                    self.watched.append(f"{event['type']}:{obj['status']['state']}")

    def __enter__(self) -> MachineSampler:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(15)


def web_instance(api: ApiServer) -> dict[str, Any] | None:
    status, obj = call(api.url, "GET", "/api/v1/instances")
    if status != 200:
        return None
    items = [i for i in obj["items"] if i["spec"]["unit"] == "web"]
    if len(items) != 1:
        return None
    inst = items[0]
    running = inst["status"].get("phase") == "Running" and inst["status"].get("ready")
    return inst if running and inst["spec"].get("machine") == "m1" else None


def cpctl(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "controlplane.cli.main", *args], env=env, capture_output=True,
                          text=True, timeout=60)


@pytest.fixture
def two_servers(etcd: Any, unique_prefix: str) -> Iterator[tuple[ApiServer, ApiServer]]:
    """A (the leader) and B, on one etcd prefix, machine TTL 3 s."""
    with ApiServer(etcd.url, unique_prefix, machine_ttl=TTL) as a:
        wait_for(lambda: is_leader(a), timeout=15, what="A to lead")
        with ApiServer(etcd.url, unique_prefix, machine_ttl=TTL) as b:
            yield a, b


@pytest.mark.docker
@pytest.mark.slow
def test_killing_the_agents_server_and_the_leader_never_lets_the_machine_go_not_ready(
    two_servers: tuple[ApiServer, ApiServer], tmp_path: Path
) -> None:
    build_local_images()
    a, b = two_servers
    assert call(a.url, "POST", "/api/v1/units", UNIT)[0] == 201
    with AgentProcess([a.url, b.url], "m1", tmp_path) as agent:
        try:
            before = wait_for(lambda: web_instance(b), timeout=60, what="web-0 Running and ready on m1")
            wait_for(lambda: heartbeats_served(a) >= 3, timeout=10, what="heartbeats through A")
            assert heartbeats_served(b) == 0, "the agent should use the first server while it answers"
            assert is_leader(a) and not is_leader(b)
            with MachineSampler(b, "m1") as sampler:
                time.sleep(0.5)
                killed = time.monotonic()
                a.kill()
                takeover = wait_for(lambda: is_leader(b) and time.monotonic() - killed, timeout=3 * TTL,
                                    interval=0.1, what="B to lead")
                time.sleep(max(0.0, killed + 3 * TTL - time.monotonic()))
            print(f"B leads {takeover:.1f} s after the kill; {len(sampler.polled)} samples, watch saw "
                  f"{sampler.watched}")
            assert not sampler.errors, sampler.errors[:5]
            assert len(sampler.polled) >= 3 * TTL * 5, "sampled every 100 ms (allowing for a slow machine)"
            assert set(sampler.polled) == {"Ready"}, sampler.polled
            assert all(seen.endswith(":Ready") for seen in sampler.watched), sampler.watched
            assert heartbeats_served(b) >= 3, "the heartbeats moved to B"
            after = web_instance(b)
            assert after is not None, "web-0 is no longer running on m1"
            assert after["metadata"]["uid"] == before["metadata"]["uid"]
            assert after["spec"]["epoch"] == before["spec"]["epoch"]
            assert after["status"]["containerID"] == before["status"]["containerID"]
            assert agent.alive()
            text = scrape(agent.metrics_url, token=None)
            assert sample(text, "cp_agent_fenced") == 0
            assert sample(text, "cp_agent_api_errors_total", reason="ServiceUnavailable") >= 1

            # cpctl with the dead server first: flag, then environment
            env = {**b.env(), "CPCTL_SERVER": f"{a.url},{b.url}"}
            listed = cpctl("get", "machines", env=env)
            assert listed.returncode == 0 and "m1" in listed.stdout, listed.stderr
            flagged = cpctl("--server", f"{a.url},{b.url}", "get", "instances", env=b.env())
            assert flagged.returncode == 0 and "web-0" in flagged.stdout, flagged.stderr
        except BaseException:
            print(f"--- agent\n{agent.log_tail()}\n--- B\n{b.log_tail()}")
            raise
