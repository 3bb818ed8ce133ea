"""aetcd's Client with what aetcd 1.0 lacks: TLS channels, and an etcd auth token that is renewed.

aetcd 1.0 (the newest release) opens only insecure gRPC channels and logs in once, at connect;
its token is then used forever. etcd's simple tokens expire after ``--auth-token-ttl`` seconds
without use (300 by default), after which every request fails with "invalid auth token".
``SecureClient`` opens a TLS channel when asked (CA, client certificate and key from an
``EtcdAccess``), logs in with the user's password itself, and ``reauthenticate`` fetches a new
token on the same channel; ``EndpointPool`` calls it when etcd says the token is stale and then
repeats the request.

Every request, watch streams and lease keepalives included, carries the gRPC metadata
``hasleader: true`` (``REQUIRE_LEADER``): etcd then refuses it with "etcdserver: no leader"
(UNAVAILABLE) on a member that has no leader -- one cut off from its peers -- and cancels the
watches of a stream whose member has been without a leader for three election timeouts. Without
it such a member keeps a watch open that never delivers again, and proposals through it only
time out; with it, ``EndpointPool`` moves on to a healthy member at once.

Watches need care: a watch stream carries the token it was opened with, and etcd checks it on
every watch created on the stream. After a new token, new watches go to a new stream (existing
ones keep running on theirs). aetcd also takes a watch that etcd creates and cancels at once
(an expired token, no permission) for a live one that never delivers; ``_Watcher`` turns that
into an error, ``WatchRefused``, carrying etcd's reason; and it may swallow the cancellation of
a task that is creating a watch, which ``watch`` notices and raises again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aetcd
import grpc
from aetcd import rpc, rtypes
from aetcd import watcher as aetcd_watcher

from controlplane.store.etcd_access import EtcdAccess

log = logging.getLogger("controlplane.store.etcd")


# etcd's rpctypes.MetadataRequireLeaderKey / MetadataHasLeader
REQUIRE_LEADER: tuple[tuple[str, str], ...] = (("hasleader", "true"),)


def _cancel_was_swallowed() -> bool:
    """True when this task was cancelled but an ``await`` returned normally all the same.

    aetcd waits for a watch to be created with ``asyncio.wait_for``, which on Python 3.11 returns
    the result instead of raising CancelledError when the cancellation and the answer come
    together; the task would then follow a watch nobody will ever cancel again (a watch cache's
    ``stop()``, and so the server's exit, waited forever).
    """
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class WatchRefused(aetcd.ClientError):
    """etcd created a watch and cancelled it at once; the message is etcd's cancel reason."""


class Batches:
    """A watch callback that takes a whole answer's events at once: the list of etcd's own
    ``mvccpb.Event`` protobufs, in revision order (or, like any callback, an exception). aetcd
    calls a callback once per event, wrapping each in an ``Event`` and two ``KeyValue``s; for
    10,000 bulk creates coming back on the watch cache's stream that was a third of its cost."""

    def __init__(self, deliver: Callable[[Any], Awaitable[None]]) -> None:
        self.deliver = deliver

    async def __call__(self, events_or_error: Any) -> None:
        await self.deliver(events_or_error)


class _Watcher(aetcd_watcher.Watcher):
    """aetcd's Watcher whose refused watches fail (WatchRefused) instead of waiting forever, and
    which hands a ``Batches`` callback each answer's events in one call."""

    async def _handle_response(self, response: Any) -> None:
        if response.created and response.canceled and not response.compact_revision:
            async with self._lock:
                if self._new_callback is not None:
                    self._new_callback.error = WatchRefused(response.cancel_reason or "watch cancelled by etcd")
                    self._new_callback_ready.notify_all()
            return
        if response.compact_revision or not response.events:
            await super()._handle_response(response)
            return
        if response.created:  # etcd answers a create apart from events; should one carry both, register first
            bare = rpc.WatchResponse()
            bare.CopyFrom(response)
            del bare.events[:]
            await super()._handle_response(bare)
        async with self._lock:  # as aetcd reads its callbacks
            callback = self._callbacks.get(response.watch_id)
        if callback is None:  # leftovers of a cancelled watch
            return
        if isinstance(callback.callback, Batches):
            await self._process_callback(callback, list(response.events))
            return
        for event in response.events:  # aetcd's own delivery, one Event per call
            await self._process_callback(
                callback, rtypes.Event(event.type, event.kv, event.prev_kv if callback.prev_kv else None))

    def idle(self) -> bool:
        return not self._callbacks and self._new_callback is None


class SecureClient(aetcd.Client):
    """One etcd endpoint over plain or TLS gRPC, logged in as ``access.user`` when one is given."""

    def __init__(
        self, host: str, port: int, *, access: EtcdAccess, tls: bool, timeout: float, options: dict[str, Any]
    ) -> None:
        super().__init__(host=host, port=port, timeout=timeout, options=options)
        self._access = access
        self._tls = tls
        self._auth_lock = asyncio.Lock()
        self._retired: list[_Watcher] = []
        self._is_connecting: bool = False  # aetcd's flag, typed here for mypy
        self.auth_generation = 0  # how many tokens this client has had; see reauthenticate

    def _open_channel(self) -> grpc.aio.Channel:
        target = f"{self._host}:{self._port}"
        options = list(self._options.items())
        if not self._tls:
            return grpc.aio.insecure_channel(target, options=options)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self._access.ca_cert,
            private_key=self._access.client_key,
            certificate_chain=self._access.client_cert,
        )
        return grpc.aio.secure_channel(target, credentials, options=options)

    async def connect(self) -> None:
        """aetcd's connect on our channel and with our login (same waiting for a concurrent connect)."""
        if self._connected.is_set():
            return
        if self._is_connecting:
            await asyncio.wait_for(self._connected.wait(), self._connect_wait_timeout)
            return
        self._is_connecting = True
        try:
            self.channel = self._open_channel()
            self.metadata = REQUIRE_LEADER
            if self._access.user is not None:
                await self._authenticate()
            self.kvstub = rpc.KVStub(self.channel)
            self.clusterstub = rpc.ClusterStub(self.channel)
            self.leasestub = rpc.LeaseStub(self.channel)
            self.maintenancestub = rpc.MaintenanceStub(self.channel)
            self._watcher = self._new_watcher()
            self._connected.set()
        except BaseException:
            channel = self.channel
            self._init_channel_attrs()
            if channel is not None:
                await channel.close()
            raise
        finally:
            self._is_connecting = False

    async def _authenticate(self) -> None:
        request = rpc.AuthenticateRequest(name=self._access.user, password=self._access.password)
        reply = await rpc.AuthStub(self.channel).Authenticate(request, timeout=self._timeout)
        self.metadata = (("token", reply.token), *REQUIRE_LEADER)
        self.auth_generation += 1

    def _new_watcher(self) -> _Watcher:
        return _Watcher(rpc.WatchStub(self.channel), timeout=self._timeout, metadata=self.metadata)

    async def reauthenticate(self, seen_generation: int) -> None:
        """Log in again for a fresh token, unless one newer than ``seen_generation`` came meanwhile.

        Many requests fail together when a token expires; the first one to get here logs in, the
        others find a newer generation and simply retry. New watches go to a stream with the new
        token; the old stream keeps its running watches and is shut down once it has none.
        """
        async with self._auth_lock:
            if self._access.user is None or self.channel is None or self.auth_generation > seen_generation:
                return
            await self._authenticate()
            log.info("etcd at %s:%d: auth token was stale; logged in again as %r", self._host, self._port,
                     self._access.user)
            old, self._watcher = self._watcher, self._new_watcher()
            if old is not None:
                self._retired.append(old)
            idle = [w for w in self._retired if w.idle()]
            self._retired = [w for w in self._retired if not w.idle()]
            for watcher in idle:
                await watcher.shutdown()

    async def close(self) -> None:
        retired, self._retired = self._retired, []
        for watcher in retired:
            await watcher.shutdown()
        await super().close()

    async def watch(
        self, key: bytes, *, range_end: bytes | None = None, start_revision: int | None = None, prev_kv: bool = False
    ) -> rtypes.Watch:
        """aetcd's watch, except that cancelling goes to the stream the watch lives on (``_watcher``
        may have been replaced by a new-token stream meanwhile, whose watch ids are its own), and
        that it yields each answer's events as one list of etcd's ``mvccpb.Event`` protobufs
        (``Batches``), not one aetcd ``Event`` at a time."""
        await self.connect()
        watcher = self._watcher
        events: asyncio.Queue[Any] = asyncio.Queue()

        async def deliver(batch: Any) -> None:
            await events.put(batch)

        callback = await watcher.add_callback(key, Batches(deliver), range_end=range_end,
                                              start_revision=start_revision, prev_kv=prev_kv)
        if _cancel_was_swallowed():
            await watcher.cancel(callback.watch_id)
            raise asyncio.CancelledError
        canceled = asyncio.Event()

        async def cancel() -> None:
            canceled.set()
            await events.put(None)
            await watcher.cancel(callback.watch_id)

        async def iterator() -> Any:
            while not canceled.is_set():
                batch = await events.get()
                if batch is None:
                    canceled.set()
                elif isinstance(batch, Exception):
                    canceled.set()
                    raise batch
                else:
                    yield batch

        return rtypes.Watch(iterator, cancel, callback.watch_id)


async def txn_request(client: aetcd.Client, request: rpc.TxnRequest) -> Any:
    """Send a prebuilt TxnRequest as ``aetcd.Client.transaction`` sends its own (connected first,
    its timeout and metadata, gRPC errors mapped to aetcd's exceptions, which failover reads)."""
    await client.connect()
    try:
        return await client.kvstub.Txn(request, timeout=client._timeout, metadata=client.metadata)
    except rpc.AioRpcError as exc:
        aetcd.exceptions._handle_exception(exc)  # raises the aetcd error for this gRPC status
        raise


def create_all_request(items: list[tuple[bytes, bytes]]) -> rpc.TxnRequest:
    """Pure: the transaction that puts every (key, value) if no key exists (create_revision == 0),
    with no failure ops (the rare refusal reads the keys after). Built as protobufs in place: aetcd's
    per-op wrappers, or a message per op passed to the constructor, cost three times as much in
    Python (the leader's bulk path, 10,000 ops at a time)."""
    request = rpc.TxnRequest()
    compare, success = request.compare.add, request.success.add
    for key, value in items:
        cmp = compare()
        cmp.result, cmp.target, cmp.key = rpc.Compare.EQUAL, rpc.Compare.CREATE, key
        cmp.create_revision = 0  # set, not left unset: it is the target_union oneof's member
        put = success().request_put
        put.key, put.value = key, value
    return request
