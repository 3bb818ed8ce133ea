"""Failover between etcd endpoints, which aetcd (one host per client) lacks.

``EndpointPool`` keeps one aetcd client per endpoint and the index of the one in use. When
that endpoint stops answering (gRPC UNAVAILABLE / DEADLINE_EXCEEDED / CANCELLED, aetcd's
connection errors, or etcd saying the member has no leader: "no leader", "request timed out"),
``call`` moves to the next one and runs the operation again, telling it
that it is a retry (``EtcdStore`` uses that to recognise its own earlier write); once every
endpoint has been tried and ``timeout`` seconds have passed, it raises ``StoreUnavailable``.
``watch`` does the same for a stream: it resumes from the last delivered revision + 1 on the
next endpoint, so a failover neither loses nor repeats events.

Secured etcd (etcd_access, etcd_client): endpoints are all ``http://`` or all ``https://``; the
clients are ``SecureClient``s with the pool's ``EtcdAccess``. When etcd says our auth token is
stale, ``call`` and ``watch`` log in again and repeat the request (transparently, a few times at
most). A TLS handshake failure still moves to the next endpoint, but once every endpoint has
failed that way the pool gives up at once (no retry cures a wrong CA); a refusal (wrong password,
permission denied) is ``EtcdAccessDenied`` right away. etcd's NOSPACE alarm ("mvcc: database space
exceeded") holds on every member, so it is ``InsufficientStorage`` (507) at once, saying what to do. Every message names the endpoint and what
to check, on one line, and never holds the password.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aetcd
import grpc

from controlplane.errors import Gone, InsufficientStorage, RequestEntityTooLarge, StoreUnavailable
from controlplane.store.etcd_access import (
    EtcdAccess,
    StoreConfigError,
    endpoint_scheme,
    explain_refusal,
    explain_transport,
    is_misconfigured,
    needs_new_token,
)
from controlplane.store.etcd_client import SecureClient

log = logging.getLogger("controlplane.store.etcd")  # the store's logger: one name for its messages

T = TypeVar("T")

_RETRYABLE_CODES = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
}

# What a member without a leader (cut off from its peers, or amid an election) answers, under any
# gRPC code: the request did not go through there, another member may take it. A write refused
# so may still have been applied; create/update recognise their own earlier attempt (etcd.py).
_NO_LEADER_MESSAGES = (
    "etcdserver: no leader",
    "etcdserver: request timed out",
    "etcdserver: leader changed",
    "context deadline exceeded",
)

# Keepalive pings notice a silently dead peer; short reconnect backoff lets a restarted
# member serve again soon. etcd refuses pings more often than every 5 s.
_CHANNEL_OPTIONS: dict[str, Any] = {
    "grpc.keepalive_time_ms": 10_000,
    "grpc.keepalive_timeout_ms": 5_000,
    "grpc.keepalive_permit_without_calls": 1,
    "grpc.initial_reconnect_backoff_ms": 100,
    "grpc.min_reconnect_backoff_ms": 100,
    "grpc.max_reconnect_backoff_ms": 1_000,
    # a watch that catches up (after a stall or a resume) gets up to 1,000 revisions in one message,
    # and a bulk create puts 128 keys in each: far over gRPC's default 4 MiB receive limit, which
    # killed the shared watch stream over and over (every resume asked for the same batch again)
    "grpc.max_receive_message_length": -1,
}

_MAX_TOKEN_RENEWALS = 3  # per request: a fresh token that is refused again is not a stale token


class EtcdAccessDenied(StoreUnavailable):
    """etcd refused us (wrong password, no permission on the prefix): 503, and cp-apiserver stops."""


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """``http(s)://host:port``, ``host:port`` or ``host`` -> (host, port); port defaults to 2379."""
    endpoint = endpoint.strip()
    if "//" not in endpoint:
        endpoint = "http://" + endpoint
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https"):
        raise StoreConfigError(f"unsupported etcd endpoint scheme {parts.scheme!r} in {endpoint!r}")
    try:
        host, port = parts.hostname, parts.port or 2379
    except ValueError:
        raise StoreConfigError(f"bad port in etcd endpoint {endpoint!r}") from None
    if not host:
        raise StoreConfigError(f"no host in etcd endpoint {endpoint!r}")
    return host, port


def rpc_error(exc: BaseException) -> grpc.aio.AioRpcError | None:
    """The gRPC error behind an aetcd error, if any."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, grpc.aio.AioRpcError):
            return seen
        seen = seen.__cause__
    return None


def is_retryable(exc: BaseException) -> bool:
    """True for errors that say "this endpoint does not answer" (try the next), not "no"."""
    if isinstance(exc, aetcd.ConnectionFailedError | aetcd.ConnectionTimeoutError | asyncio.TimeoutError):
        return True
    if isinstance(exc, aetcd.WatchTimeoutError):
        return True
    err = rpc_error(exc)
    if err is not None:
        return err.code() in _RETRYABLE_CODES or is_leaderless(err.details() or "")
    if is_leaderless(str(exc)):
        return True
    # aetcd wraps a raw AioRpcError delivered to a watch as ClientError(str(error)).
    return isinstance(exc, aetcd.ClientError) and any(
        code.name in str(exc) for code in _RETRYABLE_CODES
    )


def is_leaderless(text: str) -> bool:
    """etcd's answer says the member had no leader or timed out waiting for one (see _NO_LEADER_MESSAGES)."""
    return any(message in text for message in _NO_LEADER_MESSAGES)


def is_not_found(exc: BaseException) -> bool:
    err = rpc_error(exc)
    if err is not None and err.code() == grpc.StatusCode.NOT_FOUND:
        return True
    return "not found" in str(exc)


def is_too_large(exc: BaseException) -> bool:
    """etcd (or gRPC before it) refused a request for its size: no other endpoint takes it either."""
    text = str(exc)
    return "request is too large" in text or "larger than max" in text


def is_no_space(exc: BaseException) -> bool:
    """etcd's NOSPACE alarm is raised: every member refuses writes ("mvcc: database space exceeded")."""
    return "database space exceeded" in str(exc) or "database space exceeded" in _details(exc)[1]


NO_SPACE_HELP = ("etcd's space quota is exhausted, so it refuses writes (reads still work): "
                 "compact and defragment etcd, then clear its NOSPACE alarm with `etcdctl alarm disarm`")


def describe(exc: BaseException) -> str:
    err = rpc_error(exc)
    if err is not None:
        return f"{err.code().name}: {err.details()}"
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    return f"{type(exc).__name__}: {exc}"


def _details(exc: BaseException) -> tuple[str, str]:
    """(gRPC status code name or "", the error's text) of an aetcd/gRPC error."""
    err = rpc_error(exc)
    if err is not None:
        return err.code().name, err.details() or ""
    return "", str(exc)


def is_stale_token(exc: BaseException) -> bool:
    return needs_new_token(_details(exc)[1])


WATCH_CANCEL_SECONDS = 1.0


class EndpointPool:
    """One client per endpoint (made on first use), the one in use, and moving on from it."""

    def __init__(self, endpoints: list[str], *, timeout: float, access: EtcdAccess | None = None) -> None:
        if not endpoints:
            raise StoreConfigError("at least one etcd endpoint is needed")
        self.access = access or EtcdAccess()
        self.scheme = endpoint_scheme(endpoints, self.access)
        self.endpoints = [parse_endpoint(e) for e in endpoints]
        if self.access.user is not None and self.scheme == "http":
            log.warning("etcd user auth over plain http:// sends the password unencrypted; use https://")
        self.timeout = timeout
        self.current = 0
        self.closed = False
        self._clients: list[SecureClient | None] = [None] * len(self.endpoints)

    def client(self, index: int) -> SecureClient:
        client = self._clients[index]
        if client is None:
            host, port = self.endpoints[index]
            client = SecureClient(
                host, port, access=self.access, tls=self.scheme == "https",
                timeout=self.timeout, options=dict(_CHANNEL_OPTIONS),
            )
            self._clients[index] = client
        return client

    def endpoint_url(self, index: int) -> str:
        host, port = self.endpoints[index]
        return f"{self.scheme}://{host}:{port}"

    def failure(self, exc: BaseException) -> tuple[str, bool]:
        """(what went wrong in an operator's words, whether no retry can cure it) for a transport error."""
        code, details = _details(exc)
        reason = explain_transport(details, scheme=self.scheme, access=self.access) or describe(exc)
        return reason, is_misconfigured(details)

    def raise_answer(self, index: int, exc: Exception) -> None:
        """Raise ``exc`` (in our words where we have them) unless it means "this endpoint does not
        answer: try the next one"."""
        if is_too_large(exc):
            raise RequestEntityTooLarge(f"etcd refused the write: {describe(exc)}") from exc
        if is_no_space(exc):
            raise InsufficientStorage(f"{NO_SPACE_HELP} (etcd at {self.endpoint_url(index)}: {describe(exc)})") from exc
        if is_retryable(exc):
            return
        code, details = _details(exc)
        refusal = explain_refusal(code, details, access=self.access)
        if refusal is not None:
            raise EtcdAccessDenied(f"etcd at {self.endpoint_url(index)}: {refusal}") from exc
        raise exc

    def failed(self, index: int, reason: str) -> None:
        """Move on from endpoint ``index`` (unless another task already did)."""
        if index == self.current and len(self.endpoints) > 1:
            self.current = (index + 1) % len(self.endpoints)
            log.warning("etcd at %s failed (%s); switching to %s",
                        self.endpoint_url(index), reason, self.endpoint_url(self.current))

    def unavailable(self, failures: dict[int, tuple[str, bool]], *, what: str = "") -> StoreUnavailable:
        """One line naming each endpoint tried and what went wrong there."""
        text = "; ".join(f"etcd at {self.endpoint_url(i)}: {reason}" for i, (reason, _) in sorted(failures.items()))
        return StoreUnavailable(f"{what}{text}")

    async def call(self, op: Callable[[aetcd.Client, bool], Awaitable[T]]) -> T:
        """Run ``op(client, retrying)``, failing over between endpoints on connection errors and
        logging in again when etcd says our token is stale (see the module docstring)."""
        if self.closed:
            raise StoreUnavailable("the etcd store is closed")
        deadline = time.monotonic() + self.timeout
        retrying = False
        failures: dict[int, tuple[str, bool]] = {}
        delay = 0.05
        renewals = 0
        renew_from: int | None = None
        while True:
            index = self.current
            client = self.client(index)
            seen = client.auth_generation
            try:
                if renew_from is not None:
                    await client.reauthenticate(renew_from)
                    renew_from = None
                return await op(client, retrying)
            except Exception as exc:
                if is_stale_token(exc) and renewals < _MAX_TOKEN_RENEWALS:
                    renewals += 1
                    renew_from = seen
                    continue
                self.raise_answer(index, exc)
                failures[index] = self.failure(exc)
                self.failed(index, failures[index][0])
                every_one = len(failures) >= len(self.endpoints)
                if every_one and (time.monotonic() >= deadline or all(m for _, m in failures.values())):
                    raise self.unavailable(failures) from exc
                retrying = True
                if every_one:
                    # Every endpoint failed once: wait a little (leader election, restarts).
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 0.5)

    async def watch(self, start: bytes, end: bytes, first_revision: int, *, what: str) -> AsyncGenerator[Any, None]:
        """etcd's events on keys [start, end) from ``first_revision`` on, one list of ``mvccpb.Event``
        protobufs per answer of etcd (``SecureClient.watch``). After a stream error it resumes from
        the last delivered revision + 1, on the next endpoint if need be, so a failover neither
        loses nor repeats events; compaction past that revision raises ``Gone``."""
        next_revision = first_revision
        failing_since: float | None = None
        failures: dict[int, tuple[str, bool]] = {}
        renewals = 0
        renew_from: int | None = None
        while True:
            if self.closed:
                raise StoreUnavailable("the etcd store is closed")
            index = self.current
            client = self.client(index)
            seen = client.auth_generation
            handle: Any = None
            try:
                if renew_from is not None:
                    await client.reauthenticate(renew_from)
                    renew_from = None
                handle = await client.watch(start, range_end=end, start_revision=next_revision, prev_kv=True)
                failing_since, renewals = None, 0
                failures.clear()
                async for batch in handle:
                    next_revision = batch[-1].kv.mod_revision + 1
                    yield batch
                # The stream ended without an error (the client was closed).
                raise StoreUnavailable("etcd watch stream closed")
            except aetcd.RevisionCompactedError as exc:
                raise Gone(
                    f"revision {next_revision} has been compacted (compacted up to {exc.compacted_revision})"
                ) from exc
            except Exception as exc:
                if is_stale_token(exc) and renewals < _MAX_TOKEN_RENEWALS:
                    renewals += 1
                    renew_from = seen
                    continue
                self.raise_answer(index, exc)
                now = time.monotonic()
                failing_since = failing_since or now
                failures[index] = self.failure(exc)
                self.failed(index, failures[index][0])
                if len(failures) >= len(self.endpoints) and (
                    now - failing_since >= self.timeout or all(m for _, m in failures.values())
                ):
                    raise self.unavailable(failures, what=f"watch on {what!r}: ") from exc
                log.info("etcd watch on %r interrupted (%s); resuming from revision %d",
                         what, failures[index][0], next_revision)
                if len(failures) >= len(self.endpoints):
                    await asyncio.sleep(0.1)
            finally:
                if handle is not None:
                    try:
                        # bounded: a cancel sent down a stream whose member is gone may never be answered,
                        # and a watch cache stopping (server shutdown) must not wait on it forever
                        await asyncio.wait_for(handle.cancel(), timeout=WATCH_CANCEL_SECONDS)
                    except Exception:  # the stream may already be gone, or the cancel timed out
                        log.debug("cancelling an etcd watch failed", exc_info=True)

    async def close(self) -> None:
        self.closed = True
        clients, self._clients = self._clients, [None] * len(self.endpoints)
        for client in clients:
            if client is not None:
                try:
                    await client.close()
                except Exception:
                    log.debug("closing an etcd client failed", exc_info=True)
