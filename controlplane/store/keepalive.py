"""Lease keepalives over long-lived gRPC streams per etcd client, not one stream per refresh.

aetcd's ``refresh_lease`` opens a ``LeaseKeepAlive`` stream, sends one request, reads one reply
and drops the stream: at 2,000 machine heartbeats a second that is 2,000 stream set-ups and
tear-downs a second in the API server (a third of a heartbeat's CPU, and the garbage that made
Python's full collections run every second or two). ``KeepaliveStream`` keeps one stream open and
sends every refresh on it; etcd answers a stream's requests in order, each reply naming its lease,
so replies are matched to waiters first in, first out per lease id. ``KeepaliveStreams`` keeps a
few of them side by side per client for the bulk of machine presence (see why there).

A refresh that gets no answer within ``timeout`` raises aetcd's ``ConnectionTimeoutError`` and
drops the stream; a stream that ends or fails fails every waiter with aetcd's error for it. Either
way the next refresh opens a new stream, so the store's fail-over and re-login (etcd_failover.py)
see the same errors as from aetcd's own call. A new channel or a new auth token (re-login) also
opens a new stream. Nothing is retried here.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from typing import Any

import aetcd
import grpc
from aetcd import exceptions as aetcd_exceptions
from aetcd import rpc

DEFAULT_TIMEOUT = 5.0


def aetcd_error(error: BaseException) -> BaseException:
    """The aetcd exception aetcd's own calls raise for ``error`` (a gRPC error or anything else)."""
    if isinstance(error, rpc.AioRpcError):
        try:
            aetcd_exceptions._handle_exception(error)
        except Exception as translated:  # it always raises
            return translated
    return error


class KeepaliveStream:
    """One ``LeaseKeepAlive`` stream on one aetcd client, shared by every refresh made through it."""

    def __init__(self, client: aetcd.Client) -> None:
        self.client = client
        self._call: Any = None
        self._opened_for: tuple[Any, Any] = (None, None)  # (lease stub, auth metadata) of _call
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[int, collections.deque[asyncio.Future[Any]]] = {}
        self._write_lock = asyncio.Lock()

    def _stream(self) -> Any:
        opened_for = (self.client.leasestub, self.client.metadata)
        if self._call is None or opened_for != self._opened_for:
            self._drop(aetcd_exceptions.ConnectionFailedError("the keepalive stream was reopened"))
            self._call = self.client.leasestub.LeaseKeepAlive(metadata=self.client.metadata)
            self._opened_for = opened_for
            self._reader = asyncio.get_running_loop().create_task(self._read(self._call), name="lease-keepalive")
        return self._call

    async def _read(self, call: Any) -> None:
        try:
            while True:
                reply = await call.read()
                if reply is grpc.aio.EOF:
                    raise aetcd_exceptions.ConnectionFailedError("etcd ended the keepalive stream")
                waiters = self._pending.get(int(reply.ID))
                if waiters:
                    waiter = waiters.popleft()
                    if not waiters:
                        del self._pending[int(reply.ID)]
                    if not waiter.done():
                        waiter.set_result(reply)
        except asyncio.CancelledError:
            raise
        except BaseException as error:  # noqa: BLE001 -- every waiter hears it, as aetcd's error
            if self._call is call:
                self._drop(aetcd_error(error))

    def _drop(self, error: BaseException) -> None:
        """Forget the stream; fail whoever waits on it."""
        call, self._call = self._call, None
        if call is not None:
            call.cancel()
        reader, self._reader = self._reader, None
        if reader is not None and reader is not asyncio.current_task():
            reader.cancel()
        pending, self._pending = self._pending, {}
        for waiters in pending.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(error)

    async def refresh(self, lease_id: int, *, timeout: float | None = None) -> Any:
        """Keep ``lease_id`` alive once; etcd's reply (``TTL`` <= 0: the lease is gone).

        Refreshes queue for the stream's one writer; each takes the stream that is live when its
        turn comes (one dropped while it queued is opened again), so a stream dropped under load
        does not fail every refresh queued behind it. Running out of time while queued fails only
        this refresh; only a written refresh that etcd leaves unanswered drops the stream."""
        await self.client.connect()
        waiter: asyncio.Future[Any] | None = None
        call: Any = None
        try:
            async with asyncio.timeout(timeout or getattr(self.client, "_timeout", None) or DEFAULT_TIMEOUT):
                async with self._write_lock:
                    call = self._stream()
                    waiter = asyncio.get_running_loop().create_future()
                    # stays queued if we stop waiting: its reply, when it comes, must not go to a later waiter
                    self._pending.setdefault(lease_id, collections.deque()).append(waiter)
                    await call.write(rpc.LeaseKeepAliveRequest(ID=lease_id))
                return await asyncio.shield(waiter)
        except TimeoutError:
            if waiter is not None and self._call is call:  # written, never answered: the stream is stuck
                self._drop(aetcd_exceptions.ConnectionTimeoutError("no keepalive answer from etcd"))
            raise aetcd_exceptions.ConnectionTimeoutError(f"no keepalive answer for lease {lease_id:x}") from None
        except (rpc.AioRpcError, asyncio.InvalidStateError) as error:
            # InvalidStateError: the stream finished (etcd ended it) between our taking it and writing
            translated = aetcd_error(error) if isinstance(error, rpc.AioRpcError) else \
                aetcd_exceptions.ConnectionFailedError("the keepalive stream had ended")
            if self._call is call:
                self._drop(translated)
            raise translated from error
        finally:
            if waiter is not None:
                if not waiter.done():
                    waiter.cancel()
                elif not waiter.cancelled():
                    waiter.exception()  # retrieved: failed with its stream after we stopped waiting

    def close(self) -> None:
        self._drop(aetcd_exceptions.ConnectionFailedError("the store is closed"))


def least_busy(in_flight: list[int]) -> int:
    """Pure: the index of the stream with the fewest refreshes in flight (the first of equals)."""
    return min(range(len(in_flight)), key=in_flight.__getitem__)


class KeepaliveStreams:
    """``width`` ``KeepaliveStream``s per aetcd client (one client per etcd endpoint), made on first
    use; a refresh goes to the one with the fewest in flight.

    etcd serves one stream's requests one after the other, and (since 3.4.20) a leader answers a
    renewal only once it has applied every committed entry: while a burst of writes keeps its apply
    behind, each renewal on a stream waits its turn and then for the apply. At 1,000 hollow machines
    one stream carried 800 renewals a second until 2,000 instances were created at once; then it
    answered a few dozen a second, every heartbeat timed out and every machine's lease lapsed.
    Several streams wait for the apply side by side (each is a goroutine of etcd's)."""

    def __init__(self, *, width: int = 1) -> None:
        if width < 1:
            raise ValueError(f"width must be at least 1, got {width}")
        self.width = width
        self._streams: dict[int, list[KeepaliveStream]] = {}
        self._in_flight: dict[int, list[int]] = {}

    async def refresh(self, client: aetcd.Client, lease_id: int) -> Any:
        key = id(client)
        streams = self._streams.get(key)
        if streams is None or streams[0].client is not client:
            streams = self._streams[key] = [KeepaliveStream(client) for _ in range(self.width)]
            self._in_flight[key] = [0] * self.width
        counts = self._in_flight[key]
        index = least_busy(counts)
        counts[index] += 1
        try:
            return await streams[index].refresh(lease_id)
        finally:
            counts[index] -= 1

    def close(self) -> None:
        for streams in self._streams.values():
            for stream in streams:
                with contextlib.suppress(Exception):
                    stream.close()
        self._streams.clear()
        self._in_flight.clear()
