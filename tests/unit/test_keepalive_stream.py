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

from controlplane.store.keepalive import KeepaliveStream, KeepaliveStreams, least_busy


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


class SlowCall(FakeCall):
    """A stream whose writes take ``delay`` each and fail like grpc once it has finished."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    async def write(self, request: Any) -> None:
        if self.cancelled:
            raise asyncio.InvalidStateError("RPC already finished.")
        await asyncio.sleep(self.delay)
        await super().write(request)


def test_refreshes_queued_behind_a_dropped_stream_go_on_the_new_one() -> None:
    """Under load, refreshes queue for the writer; one of them times out unanswered and drops the
    stream. Those still queued must write on a new stream (not on the finished RPC, which grpc
    refuses with InvalidStateError: seen as 500s and a fence storm at 1,000 hollow machines)."""
    async def scenario() -> None:
        client = FakeClient()
        client.leasestub = SimpleNamespace(LeaseKeepAlive=lambda *, metadata: _opened(client, SlowCall(0.01)))
        stream = KeepaliveStream(client)  # type: ignore[arg-type]
        stuck = asyncio.ensure_future(stream.refresh(1))  # never answered: times out after 0.2 s
        queued = [asyncio.ensure_future(stream.refresh(n, timeout=2)) for n in range(2, 40)]
        with pytest.raises(aetcd_exceptions.ConnectionTimeoutError):
            await stuck
        for _ in range(100):
            if len(client.calls) == 2 and len(client.calls[1].written) + len(client.calls[0].written) == 39:
                break
            await asyncio.sleep(0.01)
        # those written on the first stream before it was dropped fail with it; the rest are on the new one
        first, second = client.calls
        assert first.cancelled and second.written
        for lease in second.written:
            second.reply(lease, 5)
        results = await asyncio.gather(*queued, return_exceptions=True)
        on_second = [r for r in results if not isinstance(r, BaseException)]
        failed = [r for r in results if isinstance(r, BaseException)]
        assert len(on_second) == len(second.written)
        assert all(isinstance(e, aetcd_exceptions.ConnectionFailedError | aetcd_exceptions.ConnectionTimeoutError)
                   for e in failed)
        assert not any(isinstance(e, asyncio.InvalidStateError) for e in failed)

    asyncio.run(scenario())


def test_a_refresh_out_of_time_in_the_queue_does_not_drop_the_stream() -> None:
    async def scenario() -> None:
        client = FakeClient()
        client.leasestub = SimpleNamespace(LeaseKeepAlive=lambda *, metadata: _opened(client, SlowCall(0.3)))
        stream = KeepaliveStream(client)  # type: ignore[arg-type]
        writing = asyncio.ensure_future(stream.refresh(1, timeout=2))
        await asyncio.sleep(0.01)
        with pytest.raises(aetcd_exceptions.ConnectionTimeoutError):
            await stream.refresh(2, timeout=0.1)  # still waiting for the writer when its time is up
        await asyncio.sleep(0.3)
        client.calls[0].reply(1, 5)
        assert (await writing).TTL == 5
        assert len(client.calls) == 1 and not client.calls[0].cancelled

    asyncio.run(scenario())


def test_a_stream_finished_under_a_write_is_a_connection_failure() -> None:
    async def scenario() -> None:
        client = FakeClient()
        stream = KeepaliveStream(client)  # type: ignore[arg-type]
        first = asyncio.ensure_future(stream.refresh(1))
        await settle()
        call = client.calls[0]

        async def finished(request: Any) -> None:
            raise asyncio.InvalidStateError("RPC already finished.")

        call.write = finished  # type: ignore[method-assign]
        with pytest.raises(aetcd_exceptions.ConnectionFailedError):
            await stream.refresh(2)
        assert call.cancelled  # dropped: the next refresh opens a new stream
        with pytest.raises(aetcd_exceptions.ConnectionFailedError):
            await first  # it waited on the dropped stream

    asyncio.run(scenario())


def _opened(client: FakeClient, call: FakeCall) -> FakeCall:
    client.calls.append(call)
    return call


@pytest.mark.parametrize(("in_flight", "chosen"), [
    ([0], 0), ([0, 0, 0], 0), ([2, 0, 1], 1), ([1, 1, 0], 2), ([3, 1, 1], 1),
])
def test_least_busy(in_flight: list[int], chosen: int) -> None:
    assert least_busy(in_flight) == chosen


def test_streams_side_by_side_take_the_refreshes_in_turn_and_a_stuck_one_gets_no_more() -> None:
    """What etcd answers one renewal at a time per stream (a leader waits for its apply before each),
    several streams wait for side by side; one that does not answer is not given the next refresh."""
    async def scenario() -> None:
        client = FakeClient()
        streams = KeepaliveStreams(width=3)
        waiting = [asyncio.ensure_future(streams.refresh(client, lease)) for lease in (1, 2, 3)]  # type: ignore[arg-type]
        await settle()
        assert [call.written for call in client.calls] == [[1], [2], [3]]
        client.calls[0].reply(1, 9)
        client.calls[2].reply(3, 9)
        assert (await waiting[0]).TTL == 9 and (await waiting[2]).TTL == 9
        more = [asyncio.ensure_future(streams.refresh(client, lease)) for lease in (4, 5)]  # type: ignore[arg-type]
        await settle()
        assert [call.written for call in client.calls] == [[1, 4], [2], [3, 5]]  # the second still waits
        client.calls[1].reply(2, 9)
        client.calls[0].reply(4, 9)
        client.calls[2].reply(5, 9)
        assert [(await w).TTL for w in (waiting[1], *more)] == [9, 9, 9]
        streams.close()

    asyncio.run(scenario())
