"""The agent's API connections come from its machine address when they can (agent/main.py), so a
firewall rule by source address cuts off one machine alone; otherwise the kernel picks."""

from __future__ import annotations

import pytest
from aiohttp import web

from agent.main import source_address, source_problem
from controlplane.client import Client


@pytest.mark.parametrize(
    ("address", "servers", "local", "problem"),
    [
        ("127.0.1.3", "http://127.0.0.1:7070", True, None),
        ("127.0.1.3", "http://localhost:7070,http://127.0.0.2:7071", True, None),
        ("10.0.0.5", "http://10.0.0.1:7070", True, None),
        ("10.0.0.5", "https://api.example.com", True, None),
        ("10.0.0.9", "http://10.0.0.1:7070", False, "not an address of this host"),
        ("127.0.0.1", "http://10.0.0.1:7070", True, "a loopback address cannot reach the server http://10.0.0.1:7070"),
        ("127.0.1.3", "http://127.0.0.1:7070,https://api.example.com", True,
         "a loopback address cannot reach the server https://api.example.com"),
        ("10.0.0.5", "http://[fd00::1]:7070", True, "the server http://[fd00::1]:7070 is IPv6"),
    ],
)
def test_source_problem(address: str, servers: str, local: bool, problem: str | None) -> None:
    assert source_problem(address, servers, local=local) == problem


def test_source_address_falls_back_for_an_address_not_of_this_host(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="cp-agent")
    assert source_address("198.51.100.77", "http://127.0.0.1:7070") is None  # TEST-NET-2: nobody's
    assert "not 198.51.100.77: not an address of this host" in caplog.text
    assert source_address("127.0.1.7", "http://127.0.0.1:7070") == "127.0.1.7"


async def test_client_connects_from_its_local_address() -> None:
    seen: list[str | None] = []

    async def version(request: web.Request) -> web.Response:
        seen.append(request.remote)
        return web.json_response({"version": "x"})

    app = web.Application()
    app.router.add_get("/version", version)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with Client(f"http://127.0.0.1:{port}", local_address="127.0.1.9") as api:
            await api.version()
        async with Client(f"http://127.0.0.1:{port}") as api:
            await api.version()
    finally:
        await runner.cleanup()
    assert seen == ["127.0.1.9", "127.0.0.1"]
