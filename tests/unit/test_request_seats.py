"""Heartbeats first (api/priority.py): which requests go past the seats, that a heartbeat is
answered while every seat is held by slow requests, which are all served once seats free, and
that a request whose client left while it waited is not run."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import ClientTimeout, web
from aiohttp.test_utils import TestClient, TestServer

from controlplane.api.priority import SEATS, Seats, exempt, seats_middleware


@pytest.mark.parametrize(("method", "path", "query", "expected"), [
    ("POST", "/api/v1/machines/m1/heartbeat", {}, True),
    ("GET", "/api/v1/machines/m1/heartbeat", {}, False),  # not a heartbeat: a wrong method's 405 waits
    ("POST", "/api/v1/machines/m1/heartbeat/x", {}, False),
    ("PUT", "/api/v1/machines/m1/status", {}, False),
    ("PUT", "/api/v1/instances/web-0/status", {}, False),
    ("GET", "/api/v1/instances", {"watch": "1"}, True),
    ("GET", "/api/v1/instances", {"watch": "true"}, True),
    ("GET", "/api/v1/instances", {"watch": "0"}, False),
    ("GET", "/api/v1/instances", {"fieldSelector": "spec.machine=m1"}, False),
    ("POST", "/api/v1/instances", {"watch": "1"}, False),
    ("GET", "/api/v1/instances/web-0/log", {"follow": "1"}, True),
    ("GET", "/api/v1/instances/web-0/log", {}, True),
    ("POST", "/api/v1/instances/web-0/exec", {}, True),
    ("GET", "/metrics", {}, True),
    ("GET", "/healthz", {}, True),
    ("GET", "/dist/controlplane-0.1.whl", {}, True),
    ("GET", "/distx", {}, False),
    ("POST", "/api/v1/units", {}, False),
    ("GET", "/api/v1/units/web", {}, False),
])
def test_exempt(method: str, path: str, query: dict[str, str], expected: bool) -> None:
    assert exempt(method, path, query) is expected


def test_seats_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Seats(0)


class ServerAsDeployed(TestServer):
    """aiohttp's test server, but as cp-apiserver's AppRunner runs: a handler is not cancelled when
    its client leaves (the test server cancels it)."""

    async def _make_runner(self, **kwargs: Any) -> web.BaseRunner:
        kwargs["handler_cancellation"] = False
        return await super()._make_runner(**kwargs)


@pytest.fixture
async def slow_app() -> AsyncIterator[tuple[TestClient, asyncio.Event, list[str]]]:
    release = asyncio.Event()
    order: list[str] = []

    async def slow(request: web.Request) -> web.Response:
        order.append(request.match_info["name"])
        await release.wait()
        return web.Response(text="done")

    async def beat(request: web.Request) -> web.Response:
        return web.Response(text="beat")

    app = web.Application(middlewares=[seats_middleware])
    app[SEATS] = Seats(2)
    app.router.add_put("/api/v1/instances/{name}/status", slow)
    app.router.add_post("/api/v1/machines/{name}/heartbeat", beat)
    client = TestClient(ServerAsDeployed(app, host="127.0.0.1"))
    await client.start_server()
    try:
        yield client, release, order
    finally:
        release.set()
        await client.close()


async def test_heartbeat_is_answered_while_every_seat_is_taken(
        slow_app: tuple[TestClient, asyncio.Event, list[str]]) -> None:
    client, release, order = slow_app
    seats = client.server.app[SEATS]
    writes = [asyncio.create_task(client.put(f"/api/v1/instances/i{n}/status")) for n in range(5)]
    for _ in range(200):
        if seats.in_use == 2 and seats.waiting == 3:
            break
        await asyncio.sleep(0.01)
    assert (seats.in_use, seats.waiting) == (2, 3)
    assert len(order) == 2  # only two handlers started
    resp = await asyncio.wait_for(client.post("/api/v1/machines/m1/heartbeat"), timeout=2)
    assert await resp.text() == "beat"
    assert (seats.in_use, seats.waiting) == (2, 3)  # the beat took no seat
    release.set()
    answers = await asyncio.gather(*writes)
    assert [await r.text() for r in answers] == ["done"] * 5
    assert sorted(order) == [f"i{n}" for n in range(5)]
    assert (seats.in_use, seats.waiting) == (0, 0)


async def test_a_request_whose_client_left_while_it_waited_is_not_run(
        slow_app: tuple[TestClient, asyncio.Event, list[str]]) -> None:
    client, release, order = slow_app
    seats = client.server.app[SEATS]
    abandoned: list[int] = []
    seats.on_abandoned = lambda: abandoned.append(1)
    held = [asyncio.create_task(client.put(f"/api/v1/instances/i{n}/status")) for n in range(2)]
    for _ in range(200):
        if seats.in_use == 2:
            break
        await asyncio.sleep(0.01)
    with pytest.raises(asyncio.TimeoutError):  # the client gives up while its request waits for a seat
        await client.put("/api/v1/instances/gone/status", timeout=ClientTimeout(total=0.2))
    assert seats.waiting == 1
    patient = asyncio.create_task(client.put("/api/v1/instances/patient/status"))
    for _ in range(200):
        if seats.waiting == 2:
            break
        await asyncio.sleep(0.01)
    release.set()
    answers = await asyncio.gather(*held, patient)
    assert [await r.text() for r in answers] == ["done"] * 3
    assert sorted(order) == ["i0", "i1", "patient"]  # "gone" never reached its handler
    assert abandoned == [1]
    assert (seats.in_use, seats.waiting) == (0, 0)
