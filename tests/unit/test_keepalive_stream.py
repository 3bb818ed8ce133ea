"""KeepaliveStream (store/keepalive.py) over a fake gRPC stream: every refresh shares one stream,
replies go to their lease's waiters in order (a reply to a refresh that timed out is not handed to
a later one), and a stream that ends fails its waiters and is replaced on the next refresh."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from aetcd import exceptions as aetcd_exceptions

from controlplane.store.keepalive import KeepaliveStream


class FakeCall:
    """A LeaseKeepAlive stream: what was written, and replies the test releases."""

    def __init__(self) -> None:
        self.written: list[int] = []
        self.replies: asyncio.Queue[Any] = asyncio.Queue()
        self.cancelled = False

    async def write(self, request: Any) -> None:
        self.written.append(int(request.ID))

    async def read(self) -> Any:
        return await self.replies.get()

    def cancel(self) -> None:
        self.cancelled = True

    def reply(self, lease: int, ttl: int) -> None:
        self.replies.put_nowait(SimpleNamespace(ID=lease, TTL=ttl))


class FakeClient:
    def __init__(self) -> None:
        self.calls: list[FakeCall] = []
        self.metadata = None
        self._timeout = 0.2
        self.leasestub = SimpleNamespace(LeaseKeepAlive=self._open)

    def _open(self, *, metadata: Any) -> FakeCall:
        self.calls.append(FakeCall())
        return self.calls[-1]

    async def connect(self) -> None:
        return None


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_refreshes_share_one_stream_and_get_their_own_replies() -> None:
    async def scenario() -> None:
        client = FakeClient()
        stream = KeepaliveStream(client)  # type: ignore[arg-type]
        first = asyncio.ensure_future(stream.refresh(1))
        second = asyncio.ensure_future(stream.refresh(2))
        third = asyncio.ensure_future(stream.refresh(1))
        await settle()
        call = client.calls[0]
        assert call.written == [1, 2, 1] and len(client.calls) == 1
        call.reply(2, 9)
        call.reply(1, 8)
        call.reply(1, 0)  # the lease went between the two refreshes
        assert (await second).TTL == 9
        assert (await first).TTL == 8
        assert (await third).TTL == 0

    asyncio.run(scenario())


def test_a_late_reply_is_not_given_to_the_next_refresh() -> None:
    async def scenario() -> None:
        client = FakeClient()
        stream = KeepaliveStream(client)  # type: ignore[arg-type]
        with pytest.raises(aetcd_exceptions.ConnectionTimeoutError):
            await stream.refresh(1)  # no answer within the client's 0.2 s: the stream is dropped
        assert client.calls[0].cancelled
        later = asyncio.ensure_future(stream.refresh(1))
        await settle()
        assert len(client.calls) == 2  # a fresh stream
        client.calls[0].reply(1, 5)  # the old stream's late answer reaches nobody
        client.calls[1].reply(1, 7)
        assert (await later).TTL == 7

    asyncio.run(scenario())


def test_an_ended_stream_fails_its_waiters_and_is_replaced() -> None:
    async def scenario() -> None:
        client = FakeClient()
        stream = KeepaliveStream(client)  # type: ignore[arg-type]
        waiting = asyncio.ensure_future(stream.refresh(3))
        await settle()
        client.calls[0].replies.put_nowait(grpc.aio.EOF)
        with pytest.raises(aetcd_exceptions.ConnectionFailedError):
            await waiting
        again = asyncio.ensure_future(stream.refresh(3))
        await settle()
        assert len(client.calls) == 2
        client.calls[1].reply(3, 4)
        assert (await again).TTL == 4

    asyncio.run(scenario())


def test_a_new_auth_token_opens_a_new_stream() -> None:
    async def scenario() -> None:
        client = FakeClient()
        stream = KeepaliveStream(client)  # type: ignore[arg-type]
        first = asyncio.ensure_future(stream.refresh(1))
        await settle()
        client.calls[0].reply(1, 5)
        await first
        client.metadata = (("token", "new"),)
        second = asyncio.ensure_future(stream.refresh(1))
        await settle()
        assert len(client.calls) == 2 and client.calls[0].cancelled
        client.calls[1].reply(1, 5)
        assert (await second).TTL == 5

    asyncio.run(scenario())
