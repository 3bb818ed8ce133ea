"""http and tcp probes against real local servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from agent.health import ProbeSpec, ProbeTarget, http_probe, run_probe, tcp_probe
from agent.runtime.fake import FakeRuntime


@pytest.fixture
async def server() -> AsyncIterator[int]:
    async def ok(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def broken(_: web.Request) -> web.Response:
        return web.Response(status=503)

    async def slow(_: web.Request) -> web.Response:
        await asyncio.sleep(1)
        return web.Response(text="late")

    app = web.Application()
    app.add_routes([web.get("/", ok), web.get("/broken", broken), web.get("/slow", slow)])
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield int(port)
    await runner.cleanup()


async def test_http_probe(server: int) -> None:
    assert (await http_probe("127.0.0.1", server, "/")).ok
    result = await http_probe("127.0.0.1", server, "/broken")
    assert not result.ok and "503" in result.message


async def test_http_probe_times_out(server: int) -> None:
    spec = ProbeSpec("http", port=server, path="/slow", timeout=0.2)
    result = await run_probe(FakeRuntime(), ProbeTarget("x", "c", None, spec, "127.0.0.1", server))
    assert not result.ok and "timed out" in result.message


async def test_tcp_probe(server: int) -> None:
    assert (await tcp_probe("127.0.0.1", server)).ok
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    result = await tcp_probe("127.0.0.1", closed_port)
    assert not result.ok and "tcp 127.0.0.1" in result.message
