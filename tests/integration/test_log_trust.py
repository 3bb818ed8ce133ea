"""The log path and node writes, played by an attacker: a real cp-apiserver on real etcd, node tokens
of our own, an aiohttp listener that records everything the API server sends it, and real agent log
apps (agent/logserver.py) - one of them over the real Docker runtime.

What must hold: a user's token (or anything that authenticates at the API) never reaches a machine;
a node's reported address is an IP literal; the API server follows no redirect and relays no error
body; an agent's log endpoint takes only a fresh ticket for itself; a node writes Events only within
its limits, cannot set reserved labels, and gets no labels back after an admin deleted its Machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from agent_apps import ADMIN, VIEWER, bound_instance, call, docker_container, heartbeat, json_or_raw, running
from aiohttp import web
from apiserver_fixture import ApiServer
from etcd_fixture import EtcdServer

from agent.logserver import make_log_app
from controlplane.client import Client

CAP = 64 * 1024 * 1024


@pytest.fixture(scope="module")
def api(etcd: EtcdServer) -> Iterator[ApiServer]:
    with ApiServer(etcd.url, f"/cp-test/logtrust-{uuid.uuid4().hex[:8]}", controllers=False) as server:
        yield server


@dataclass
class Listener:
    """An aiohttp server on 127.0.0.1 that records every request and answers as ``mode`` says."""

    mode: str = "ok"
    redirect_to: str = ""
    seen: list[dict[str, Any]] = field(default_factory=list)
    port: int = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append({"path": request.path, "query": dict(request.query), "body": await request.read(),
                          "headers": list(request.headers.items()), "cookies": dict(request.cookies)})
        if self.mode == "redirect":
            raise web.HTTPFound(self.redirect_to)
        if self.mode == "error":
            return web.json_response({"message": "agent says \x1b[31m" + "no " * 5000, "secret": "s3cr3t"},
                                     status=401)
        if self.mode == "flood":
            response = web.StreamResponse()
            await response.prepare(request)
            chunk = b"x" * (1024 * 1024)
            for _ in range(CAP // len(chunk) + 6):
                await response.write(chunk)
            await response.write_eof()
            return response
        return web.Response(text="listener output\n")


@pytest.fixture
async def listener() -> AsyncIterator[Listener]:
    recorder = Listener()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", recorder.handle)
    async with running(app) as port:
        recorder.port = port
        yield recorder


class CannedLogs:
    """The one Runtime method the log app calls, over fixed lines."""

    def __init__(self, lines: list[bytes]) -> None:
        self.lines = lines

    async def logs(self, container_id: str, *, tail: int | None = None, follow: bool = False) -> AsyncIterator[bytes]:
        for line in self.lines[-tail:] if tail else self.lines:
            yield line


@dataclass
class Agent:
    """A real agent log app for ``machine``, with the keys of that machine's last heartbeat reply."""

    machine: str
    keys: list[object] = field(default_factory=list)
    authorizations: list[str] = field(default_factory=list)  # what reached it, to replay
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextlib.asynccontextmanager
async def agent(api: ApiServer, machine: str, runtime: Any, containers: dict[str, str]) -> AsyncIterator[Agent]:
    """The log app runs; the machine heartbeats its port (and takes the reply's signing keys)."""
    me = Agent(machine)
    app = make_log_app(runtime, machine=machine, containers=lambda: containers, signing_keys=lambda: me.keys)

    async def note(request: web.Request, response: web.StreamResponse) -> None:
        me.authorizations.append(request.headers.get("Authorization", ""))

    app.on_response_prepare.append(note)
    async with running(app) as port:
        me.port = port
        status, reply = await heartbeat(api, machine, port=port)
        assert status == 200, reply
        me.keys = reply["logSigningKeys"]
        assert len(me.keys) == 1
        yield me


async def direct(target: Agent, path: str, authorization: str | None, **params: str) -> tuple[int, Any]:
    """A request straight to an agent's log endpoint, not through the API."""
    headers = {"Authorization": authorization} if authorization is not None else {}
    async with aiohttp.ClientSession() as session, session.get(
            target.url + path, headers=headers, params=params, timeout=aiohttp.ClientTimeout(total=10)) as resp:
        raw = await resp.read()
    return resp.status, json_or_raw(raw)


def assert_status(payload: Any, code: int) -> None:
    assert isinstance(payload, dict) and payload.get("kind") == "Status" and payload["code"] == code, payload


# ---- (a) the listener never receives a credential of the API --------------------------------------

async def test_user_tokens_never_reach_the_machine(api: ApiServer, listener: Listener) -> None:
    status, reply = await heartbeat(api, "m1", port=listener.port)
    assert status == 200, reply
    await bound_instance(api, "steal-0", "m1")
    for token in (ADMIN, VIEWER):
        status, body = await call(api, "GET", "/api/v1/instances/steal-0/log?follow=1&tail=3", token=token,
                                  headers={"Cookie": f"session={token}", "X-Forwarded-For": token})
        assert status == 200 and body == b"listener output\n", body
    assert len(listener.seen) == 2
    for request in listener.seen:
        assert request["path"] == "/logs/steal-0" and request["query"] == {"follow": "1", "tail": "3"}
        assert request["body"] == b"" and request["cookies"] == {}
        names = {name.lower() for name, _ in request["headers"]}
        assert "cookie" not in names and "x-forwarded-for" not in names
        for name, value in request["headers"]:
            assert ADMIN not in value and VIEWER not in value, (name, value)
            for credential in {value, value.partition(" ")[2]} - {""}:  # as sent, and without its scheme
                for header in (f"Bearer {credential}", credential):
                    code, _ = await call(api, "GET", "/api/v1/units", token=None, headers={"Authorization": header})
                    assert code == 401, (name, value)
    [scheme] = {dict(r["headers"])["Authorization"].split(" ")[0] for r in listener.seen}
    assert scheme == "CP-Ticket"


# ---- (b) node-reported addresses are IP literals ----------------------------------------------------

@pytest.mark.parametrize("address", ["evil.example.com", "localhost", "127.0.0.1/steal", "127.0.0.1:7070",
                                     "admin@127.0.0.1", "[::1]", "fe80::1%lo", "0.0.0.0", "169.254.169.254",
                                     "127.0.0.1#x"])
async def test_heartbeat_refuses_addresses_that_are_not_ip_literals(api: ApiServer, address: str) -> None:
    status, err = await heartbeat(api, "m7", address=address, port=7071)
    assert status == 422, err
    assert [c["field"] for c in err["details"]["causes"]] == ["status.address"]


async def test_heartbeat_bounds(api: ApiServer) -> None:
    for extra, cause in (({"capacity": {"cpu": 5000.0, "memoryMB": 1}}, "status.capacity.cpu"),
                         ({"capacity": {"cpu": 1.0, "memoryMB": 2**40}}, "status.capacity.memoryMB"),
                         ({"agentPort": 65536}, "status.agentPort")):
        body = {"address": "127.0.0.1", **extra}
        status, err = await call(api, "POST", "/api/v1/machines/m7/heartbeat", body, token="node-m7-token")
        assert status == 422 and [c["field"] for c in err["details"]["causes"]] == [cause], err
    status, reply = await heartbeat(api, "m7", address="::1", port=7071)
    assert status == 200 and reply["machine"]["status"]["address"] == "::1"


# ---- (c) an agent's log endpoint takes only a fresh ticket for itself -----------------------------

async def test_agent_takes_only_its_own_fresh_ticket(api: ApiServer, listener: Listener) -> None:
    canned = CannedLogs([b"one\n", b"two\n", b"three\n"])
    async with agent(api, "m2", canned, {"trust-0": "c2"}) as m2, agent(api, "m3", canned, {"trust-0": "c3"}) as m3:
        await bound_instance(api, "trust-0", "m2")
        status, body = await call(api, "GET", "/api/v1/instances/trust-0/log?tail=2", token=VIEWER)
        assert status == 200 and body == b"two\nthree\n"
        [ticket] = m2.authorizations
        assert ticket.startswith("CP-Ticket ")
        # the ticket m2 got is spent, for m2 and for anyone else
        for target, why in ((m2, "replayed"), (m3, "wrong machine")):
            code, err = await direct(target, "/logs/trust-0", ticket, tail="2")
            assert code == 403 and why in err["message"], err
        code, err = await direct(m2, "/logs/trust-0", ticket, tail="3")
        assert code == 403 and "altered params" in err["message"]
        # credentials of the API are nothing here, whoever holds them
        for credential in ("node-m1-token", "node-m2-token", "node-m3-token", ADMIN, VIEWER):
            for header in (f"Bearer {credential}", credential, f"CP-Ticket {credential}"):
                code, err = await direct(m2, "/logs/trust-0", header)
                assert code in (401, 403), (header, code)
                assert_status(err, code)
        code, err = await direct(m2, "/logs/trust-0", None)
        assert code == 401
        assert_status(err, 401)
        # a fresh, never used ticket for machine m1 (caught by m1's listener) is no good at m2
        status, reply = await heartbeat(api, "m1", port=listener.port)
        assert status == 200
        await bound_instance(api, "fresh-0", "m1")
        status, _ = await call(api, "GET", "/api/v1/instances/fresh-0/log")
        fresh = dict(listener.seen[-1]["headers"])["Authorization"]
        for path in ("/logs/fresh-0", "/logs/trust-0"):
            code, err = await direct(m2, path, fresh)
            assert code == 403 and "wrong machine" in err["message"], err


# ---- (d) no redirect is followed, no error body relayed, no flood relayed -------------------------

async def test_redirects_errors_and_floods_stay_at_the_api(api: ApiServer, listener: Listener) -> None:
    target = Listener()
    target_app = web.Application()
    target_app.router.add_route("*", "/{tail:.*}", target.handle)
    async with running(target_app) as target_port:
        status, _ = await heartbeat(api, "m4", port=listener.port)
        assert status == 200
        await bound_instance(api, "redir-0", "m4")
        listener.mode, listener.redirect_to = "redirect", f"http://127.0.0.1:{target_port}/api/v1/units"
        status, err = await call(api, "GET", "/api/v1/instances/redir-0/log")
        assert status == 502 and err["reason"] == "BadGateway" and "redirect" in err["message"], err
        assert target.seen == [] and len(listener.seen) == 1
    listener.mode = "error"
    status, err = await call(api, "GET", "/api/v1/instances/redir-0/log")
    assert status == 502 and "answered 401" in err["message"], err
    assert "s3cr3t" not in json.dumps(err) and "\x1b" not in err["message"] and len(err["message"]) < 400
    listener.mode = "flood"
    status, body = await call(api, "GET", "/api/v1/instances/redir-0/log")
    assert status == 200 and CAP < len(body) < CAP + 200 and body.endswith(b"use --tail]\n")


# ---- (e) a node's Events: reasons, size, objects, rate ----------------------------------------------

def agent_event(kind: str, name: str, *, reason: str = "ProxyConfigRejected", message: str = "nginx -t failed",
                labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": f"{name}-{uuid.uuid4().hex[:8]}", "labels": labels or {}}, "type": "Warning",
            "reason": reason, "involvedObject": {"kind": kind, "name": name}, "message": message}


async def test_node_events_are_bounded(api: ApiServer) -> None:
    for machine in ("m5", "m6"):
        assert (await heartbeat(api, machine))[0] == 200
    await bound_instance(api, "ev5-0", "m5")
    await bound_instance(api, "ev6-0", "m6")
    node = "node-m5-token"
    cases = [
        (agent_event("Instance", "ev5-0"), 201),
        (agent_event("Machine", "m5", message="m" * 1000), 201),
        (agent_event("Instance", "ev5-0", reason="MachineLost"), 422),
        (agent_event("Instance", "ev5-0", message="m" * 1001), 422),
        (agent_event("Instance", "ev5-0", labels={"controlplane.io/x": "y"}), 422),
        (agent_event("Machine", "m6"), 403),
        (agent_event("Instance", "ev6-0"), 403),
        (agent_event("Unit", "ev5"), 403),
    ]
    for obj, expected in cases:
        status, body = await call(api, "POST", "/api/v1/events", obj, token=node)
        assert status == expected, (obj, body)
    status, _ = await call(api, "POST", "/api/v1/events", agent_event("Unit", "ev5", reason="Anything"))
    assert status == 201  # admins are not held to the agent's reasons
    loop = asyncio.get_running_loop()
    started, codes = loop.time(), []
    for _ in range(40):
        codes.append((await call(api, "POST", "/api/v1/events", agent_event("Instance", "ev6-0"),
                                 token="node-m6-token"))[0])
    elapsed = loop.time() - started
    assert set(codes) == {201, 429} and codes[:20] == [201] * 20
    assert codes.count(201) <= 20 + 5 * elapsed + 1
    status, err = await call(api, "POST", "/api/v1/events", agent_event("Instance", "ev6-0"), token="node-m6-token")
    assert status == 429 and err["reason"] == "TooManyRequests"


# ---- (f) reserved labels, tombstones, instance addresses --------------------------------------------

async def test_reserved_labels_and_tombstones(api: ApiServer) -> None:
    status, err = await heartbeat(api, "m8", labels={"controlplane.io/trusted": "yes"})
    assert status == 422 and err["details"]["causes"][0]["field"] == "metadata.labels.controlplane.io/trusted"
    status, reply = await heartbeat(api, "m8", labels={"role": "db"})
    assert status == 200 and reply["machine"]["metadata"]["labels"] == {"role": "db"}
    status, _ = await call(api, "DELETE", "/api/v1/machines/m8")
    assert status == 200
    status, reply = await heartbeat(api, "m8", labels={"role": "db", "zone": "trusted"})
    assert status == 200 and reply["machine"]["metadata"]["labels"] == {}
    status, patched = await call(api, "PATCH", "/api/v1/machines/m8",
                                 {"metadata": {"labels": {"controlplane.io/trusted": "yes"}}},
                                 headers={"Content-Type": "application/merge-patch+json"})
    assert status == 200 and patched["metadata"]["labels"] == {"controlplane.io/trusted": "yes"}
    status, _ = await call(api, "DELETE", "/api/v1/machines/never-was")
    assert status == 404


async def test_node_instance_address_is_its_machines(api: ApiServer) -> None:
    assert (await heartbeat(api, "m3", address="127.0.1.3"))[0] == 200
    await bound_instance(api, "addr-0", "m3")
    for address, expected in (("10.9.9.9", 422), ("127.0.1.4", 422), ("127.0.1.3", 200), ("", 200)):
        status, body = await call(api, "PUT", "/api/v1/instances/addr-0/status",
                                  {"metadata": {"name": "addr-0"}, "status": {"phase": "Running", "address": address}},
                                  token="node-m3-token")
        assert status == expected, (address, body)
    status, _ = await call(api, "PUT", "/api/v1/instances/addr-0/status",
                           {"metadata": {"name": "addr-0"}, "status": {"address": "10.9.9.9"}})
    assert status == 200  # an admin may


# ---- the real thing: agent log app over Docker, behind the API's log proxy --------------------------

@pytest.mark.docker
async def test_logs_of_a_docker_container_through_the_api(api: ApiServer) -> None:
    command = ("sh", "-c", "echo one; echo two; sleep 1; echo three; sleep 60")
    async with docker_container("m1", "dock-0", command) as (runtime, container_id), \
            agent(api, "m1", runtime, {"dock-0": container_id}):
        await bound_instance(api, "dock-0", "m1")
        async with Client(api.url, token=VIEWER) as viewer:
            out = b""
            async with asyncio.timeout(15), contextlib.aclosing(viewer.logs("dock-0", follow=True)) as stream:
                async for chunk in stream:
                    out += chunk
                    if b"three" in out:
                        break
            assert out.splitlines()[:3] == [b"one", b"two", b"three"]
            tail = b"".join([chunk async for chunk in viewer.logs("dock-0", tail=1)])
            assert tail == b"three\n"
