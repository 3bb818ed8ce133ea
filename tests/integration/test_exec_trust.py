"""``exec`` under the trust rules of logs, played by an attacker: a real cp-apiserver on real etcd, real
agent apps (agent/logserver.py + agent/execserver.py) over a canned runtime and over the real Docker
runtime, an aiohttp listener that records what the API server sends a machine, and cpctl itself.

What must hold: only admins exec (a viewer and a node token are refused); no user token reaches a
machine; the agent takes only a fresh exec ticket for itself, this instance and this very command
(a log ticket cannot exec, an exec ticket cannot read logs, a spent ticket is spent); what the API
relays is always a well-formed stream; cpctl prints stdout and stderr apart and exits with the
command's exit code.
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
from agent_apps import (
    ADMIN,
    VIEWER,
    bound_instance,
    call,
    docker_container,
    json_or_raw,
    running,
    signing_keys,
)
from aiohttp import web
from apiserver_fixture import ApiServer
from etcd_fixture import EtcdServer

from agent.logserver import make_log_app
from agent.runtime.base import ExecOutput
from controlplane.execstream import EXIT, STDERR, STDOUT, FrameReader, exit_result

CPCTL = ["-m", "controlplane.cli.main"]


@pytest.fixture(scope="module")
def api(etcd: EtcdServer) -> Iterator[ApiServer]:
    with ApiServer(etcd.url, f"/cp-test/exectrust-{uuid.uuid4().hex[:8]}", controllers=False) as server:
        yield server


def frames(raw: bytes) -> list[tuple[int, bytes]]:
    reader = FrameReader()
    found = list(reader.feed(raw))
    assert not reader.pending and found and found[-1][0] == EXIT, raw
    return found


class CannedExec:
    """The runtime calls the agent's apps make: ``exec_stream`` echoes its command, then exits with
    the number after ``exit`` (if any); ``logs`` gives one line."""

    def __init__(self) -> None:
        self.commands: list[list[str]] = []

    async def exec_stream(self, container_id: str, command: list[str]) -> AsyncIterator[ExecOutput]:
        self.commands.append(command)
        yield ExecOutput("stdout", f"ran {' '.join(command)} in {container_id}\n".encode())
        yield ExecOutput("stderr", b"a warning\n")
        yield ExecOutput("exit", exit_code=int(command[1]) if command[0] == "exit" else 0)

    async def logs(self, container_id: str, *, tail: int | None = None, follow: bool = False) -> AsyncIterator[bytes]:
        yield b"a log line\n"


@dataclass
class Machine:
    """What listens at a machine's agent port: the real agent app, or a recorder that answers 200."""

    name: str
    keys: list[object] = field(default_factory=list)
    seen: list[dict[str, Any]] = field(default_factory=list)
    port: int = 0

    async def direct(self, path: str, authorization: str | None, *, body: Any = None) -> tuple[int, Any]:
        headers = {"Authorization": authorization} if authorization is not None else {}
        async with aiohttp.ClientSession() as session, session.request(
                "POST" if body is not None else "GET", f"http://127.0.0.1:{self.port}{path}", json=body,
                headers=headers, timeout=aiohttp.ClientTimeout(total=10)) as resp:
            raw = await resp.read()
        return resp.status, json_or_raw(raw)


@contextlib.asynccontextmanager
async def agent(api: ApiServer, machine: str, runtime: Any, containers: dict[str, str]) -> AsyncIterator[Machine]:
    me = Machine(machine)
    app = make_log_app(runtime, machine=machine, containers=lambda: containers, signing_keys=lambda: me.keys)
    async with running(app) as port:
        me.port = port
        me.keys = await signing_keys(api, machine, port)
        yield me


@contextlib.asynccontextmanager
async def recorder(api: ApiServer, machine: str, *, answer: bytes = b"") -> AsyncIterator[Machine]:
    """Plays ``machine``'s agent: keeps every request (its ticket unspent) and answers ``answer``."""
    me = Machine(machine)

    async def handle(request: web.Request) -> web.Response:
        me.seen.append({"path": request.path, "headers": dict(request.headers), "body": await request.read()})
        return web.Response(body=answer)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    async with running(app) as port:
        me.port = port
        await signing_keys(api, machine, port)
        yield me


# ---- who may exec -----------------------------------------------------------------------------------

async def test_admins_exec_viewers_and_nodes_cannot(api: ApiServer) -> None:
    runtime = CannedExec()
    async with agent(api, "m1", runtime, {"ex-0": "c1"}):
        await bound_instance(api, "ex-0", "m1")
        status, raw = await call(api, "POST", "/api/v1/instances/ex-0/exec", {"command": ["exit", "7"]})
        assert status == 200, raw
        got = frames(raw)
        assert got[:2] == [(STDOUT, b"ran exit 7 in c1\n"), (STDERR, b"a warning\n")]
        assert exit_result(got[-1][1]) == (7, "")
        status, raw = await call(api, "POST", "/api/v1/instances/ex-0/exec", {"command": ["id"], "container": "ex"})
        assert status == 200 and exit_result(frames(raw)[-1][1]) == (0, "")
        for token, code in ((VIEWER, 403), ("node-m1-token", 403), (None, 401)):
            status, err = await call(api, "POST", "/api/v1/instances/ex-0/exec", {"command": ["id"]}, token=token)
            assert status == code and err["kind"] == "Status", (token, err)
        for body, why in (({"command": []}, "command must be"), ({"command": ["id"], "x": 1}, "nothing else"),
                          ({"command": ["a\x00b"]}, "without NUL")):
            status, err = await call(api, "POST", "/api/v1/instances/ex-0/exec", body)
            assert status == 400 and why in err["message"], err
        status, _ = await call(api, "POST", "/api/v1/instances/nope-0/exec", {"command": ["id"]})
        assert status == 404
        status, err = await call(api, "POST", "/api/v1/instances/ex-0/exec", {"command": ["id"], "container": "db"})
        assert status == 404 and 'has no container "db": its one container is "ex"' in err["message"], err
        assert runtime.commands == [["exit", "7"], ["id"]]  # nothing refused reached the runtime


# ---- tickets: bound to the machine, the instance, the action and the command ---------------------

async def test_exec_and_log_tickets_cannot_stand_in_for_each_other(api: ApiServer) -> None:
    runtime = CannedExec()
    await bound_instance(api, "tk-0", "m2")
    # the API server's requests to m2, caught before any agent spends their tickets
    async with recorder(api, "m2") as fake:
        assert (await call(api, "POST", "/api/v1/instances/tk-0/exec", {"command": ["ls", "/"]}))[0] == 200
        assert (await call(api, "GET", "/api/v1/instances/tk-0/log?tail=1"))[0] == 200
    exec_request, log_request = fake.seen
    assert exec_request["path"] == "/exec/tk-0" and json.loads(exec_request["body"]) == {"command": ["ls", "/"]}
    for request in fake.seen:
        assert all(ADMIN not in value for value in request["headers"].values())
    exec_ticket, log_ticket = exec_request["headers"]["Authorization"], log_request["headers"]["Authorization"]
    assert exec_ticket.startswith("CP-Ticket ") and log_ticket.startswith("CP-Ticket ")
    async with agent(api, "m2", runtime, {"tk-0": "c2"}) as m2:
        # a log ticket does not exec; an exec ticket reads no log, nor runs another command
        code, err = await m2.direct("/exec/tk-0", log_ticket, body={"command": ["ls", "/"]})
        assert code == 403 and "wrong action" in err["message"], err
        code, err = await m2.direct("/logs/tk-0?tail=1", exec_ticket)
        assert code == 403 and "wrong action" in err["message"], err
        code, err = await m2.direct("/exec/tk-0", exec_ticket, body={"command": ["rm", "-rf", "/"]})
        assert code == 403 and "altered command" in err["message"], err
        assert runtime.commands == []
        # each was good for what it was issued for, once
        code, raw = await m2.direct("/exec/tk-0", exec_ticket, body={"command": ["ls", "/"]})
        assert code == 200 and exit_result(frames(raw)[-1][1]) == (0, "")
        code, err = await m2.direct("/exec/tk-0", exec_ticket, body={"command": ["ls", "/"]})
        assert code == 403 and "replayed" in err["message"], err
        code, body = await m2.direct("/logs/tk-0?tail=1", log_ticket)
        assert code == 200 and body == b"a log line\n"
        assert runtime.commands == [["ls", "/"]]
        # credentials of the API are nothing at the agent, a node's own included
        for credential in ("node-m2-token", ADMIN, VIEWER):
            for header in (f"Bearer {credential}", credential, f"CP-Ticket {credential}", None):
                code, err = await m2.direct("/exec/tk-0", header, body={"command": ["id"]})
                assert code in (401, 403) and err["kind"] == "Status", (header, err)
        assert runtime.commands == [["ls", "/"]]


async def test_an_agent_that_garbles_the_stream_is_cut_off(api: ApiServer) -> None:
    await bound_instance(api, "gb-0", "m3")
    async with recorder(api, "m3", answer=b"\x01\x00\x00\x00\x05hello" + b"not a frame at all"):
        status, raw = await call(api, "POST", "/api/v1/instances/gb-0/exec", {"command": ["id"]})
    assert status == 200
    got = frames(raw)
    assert got[0] == (STDOUT, b"hello") and len(got) == 2
    assert exit_result(got[-1][1]) == (None, 'the agent of machine "m3" sent something that is not an exec stream')
    async with recorder(api, "m3", answer=b"\x02\x00\x00\x00\x03err"):
        status, raw = await call(api, "POST", "/api/v1/instances/gb-0/exec", {"command": ["id"]})
    assert exit_result(frames(raw)[-1][1])[1].endswith("ended the stream before the exit code")


# ---- cpctl exec ---------------------------------------------------------------------------------------

async def cpctl(api: ApiServer, *args: str, token: str = ADMIN) -> tuple[int, str, str]:
    """cpctl in a subprocess, awaited (the agents of this test run on this event loop)."""
    import sys

    proc = await asyncio.create_subprocess_exec(sys.executable, *CPCTL, *args, env=api.env(token),
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_cpctl_exec_exit_code_and_streams(api: ApiServer) -> None:
    async with agent(api, "m4", CannedExec(), {"cx-0": "c4"}):
        await bound_instance(api, "cx-0", "m4")
        assert await cpctl(api, "exec", "cx-0", "--", "exit", "42") == (42, "ran exit 42 in c4\n", "a warning\n")
        assert await cpctl(api, "exec", "cx-0", "-c", "cx", "--", "ls", "-la") == (0, "ran ls -la in c4\n",
                                                                                  "a warning\n")
        code, out, err = await cpctl(api, "exec", "cx-0", "--", "id", token=VIEWER)
        assert code == 1 and out == "" and err.strip().splitlines() == [
            'error: user "viewer" (viewer) cannot create instances/cx-0/exec']
        code, _, err = await cpctl(api, "exec", "cx-0", "-c", "db", "--", "id")
        assert code == 1 and err.startswith('error: instance "cx-0" has no container "db"')
    code, _, err = await cpctl(api, "exec", "cx-0", "--", "id")  # the agent is gone
    assert code == 1 and err.startswith('error: the agent of machine "m4" is unreachable'), err


@pytest.mark.docker
async def test_cpctl_exec_in_a_docker_container(api: ApiServer) -> None:
    async with docker_container("m5", "dx-0", ("sleep", "60")) as (runtime, container_id), \
            agent(api, "m5", runtime, {"dx-0": container_id}):
        await bound_instance(api, "dx-0", "m5")
        script = "echo to-stdout; echo to-stderr >&2; echo \"$0 $1\"; exit 3"
        assert await cpctl(api, "exec", "dx-0", "--", "sh", "-c", script, "a b", "c") == (
            3, "to-stdout\na b c\n", "to-stderr\n")
        code, out, err = await cpctl(api, "exec", "dx-0", "--", "no-such-binary")
        assert code == 126 and "executable file not found" in out + err, (code, out, err)  # Docker's own
