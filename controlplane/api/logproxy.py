"""``GET /api/v1/instances/NAME/log``: the API server fetches the log from the machine's agent.

The caller's credential never leaves this server. The request to the agent carries only a log
ticket (controlplane/logticket.py) signed with the cluster's log signing key, for this machine,
this instance and these parameters, valid 30 s and once. The agent's address and port were
written by the node itself, so they are treated as hostile:

- the URL is built from an IP literal and a port validated again here (controlplane/addresses.py);
- no redirect is followed, no cookie is kept, no proxy from the environment is used;
- only a 200 is relayed, as a stream of at most MAX_LOG_BYTES (64 MiB) per request; any other
  answer becomes a 502 whose message quotes at most 200 printable characters of at most
  ERROR_BODY_MAX (4 KiB) read from the agent's body;
- connecting times out after 3 s, the answer's headers after 10 s, and a request that does not
  follow after 60 s in all.

The signing key pair lives in the store under ``internal/log-signing-key`` (not a registry
resource, so no REST call reads it). Whichever API server needs it first creates it with a
create-if-absent; the others read that one. Agents get the public keys in heartbeat replies.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import time
from typing import Any

import aiohttp
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from controlplane.addresses import agent_url
from controlplane.api.auth import authorize
from controlplane.api.state import REGISTRY, user_of
from controlplane.errors import (
    AlreadyExists,
    BadGateway,
    Conflict,
    InternalError,
    ServiceUnavailable,
)
from controlplane.logticket import (
    TICKET_SCHEME,
    LogParams,
    issue,
    new_signing_key,
    parse_log_params,
    private_raw,
    public_raw,
)
from controlplane.model import LOG_SIGNING_KEY, now_rfc3339
from controlplane.store.base import Store

log = logging.getLogger(__name__)
MAX_LOG_BYTES = 64 * 1024 * 1024
ERROR_BODY_MAX = 4096
ERROR_MESSAGE_MAX = 200
CONNECT_SECONDS = 3.0
HEADERS_SECONDS = 10.0
UNFOLLOWED_SECONDS = 60.0
TRUNCATED = b"\n[cp-apiserver: log cut at 64 MiB; use --tail]\n"


class LogSigningKeys:
    """The cluster's log signing keys, read from (or first written to) the store once per process."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = asyncio.Lock()
        self._signing: Ed25519PrivateKey | None = None
        self._public: list[str] = []

    @staticmethod
    def _record(key: Ed25519PrivateKey) -> bytes:
        entry = {"private": base64.b64encode(private_raw(key)).decode(),
                 "public": base64.b64encode(public_raw(key)).decode(), "created": now_rfc3339()}
        return json.dumps({"keys": [entry]}).encode()

    def _parse(self, value: bytes) -> None:
        try:
            keys = json.loads(value)["keys"]
            self._signing = Ed25519PrivateKey.from_private_bytes(base64.b64decode(keys[0]["private"]))
            self._public = [base64.b64encode(public_raw(self._signing)).decode()]
            self._public += [str(k["public"]) for k in keys[1:]]  # older keys, still accepted by agents
        except (ValueError, KeyError, IndexError, TypeError, binascii.Error) as err:
            raise InternalError(f"the log signing key in the store ({LOG_SIGNING_KEY}) is unreadable") from err

    async def _load(self) -> None:
        async with self._lock:
            if self._signing is not None:
                return
            kv = await self.store.get(LOG_SIGNING_KEY)
            if kv is None:
                try:
                    await self.store.create(LOG_SIGNING_KEY, self._record(new_signing_key()))
                except AlreadyExists:
                    pass  # another API server was first: use its key
                kv = await self.store.get(LOG_SIGNING_KEY)
                if kv is None:
                    raise ServiceUnavailable("the log signing key changed concurrently; retry")
            self._parse(kv.value)

    async def signing_key(self) -> Ed25519PrivateKey:
        await self._load()
        assert self._signing is not None
        return self._signing

    async def public_keys(self) -> list[str]:
        """Standard base64 of the raw public keys, the signing one first (the heartbeat reply's field)."""
        await self._load()
        return list(self._public)


LOG_SIGNING = web.AppKey("log_signing_keys", LogSigningKeys)


def printable(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in text)[:ERROR_MESSAGE_MAX]


async def upstream_error(machine: str, upstream: aiohttp.ClientResponse) -> BadGateway:
    """A 502 that says what the agent answered, without relaying its body."""
    message = ""
    try:
        async with asyncio.timeout(CONNECT_SECONDS):
            raw = await upstream.content.read(ERROR_BODY_MAX)
        doc = json.loads(raw)
        if isinstance(doc, dict) and isinstance(doc.get("message"), str):
            message = printable(doc["message"])
    except (TimeoutError, aiohttp.ClientError, ValueError):
        pass
    if 300 <= upstream.status < 400:
        message = "a redirect, which is not followed"
    said = f": {message}" if message else ""
    return BadGateway(f'the agent of machine "{machine}" answered {upstream.status}{said}')


async def _relay(request: web.Request, upstream: aiohttp.ClientResponse) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
    await response.prepare(request)
    sent = 0
    try:
        async for chunk in upstream.content.iter_any():
            if sent + len(chunk) > MAX_LOG_BYTES:
                await response.write(chunk[:MAX_LOG_BYTES - sent] + TRUNCATED)
                break
            sent += len(chunk)
            await response.write(chunk)
    except (TimeoutError, aiohttp.ClientError) as err:  # the agent's side ended: end ours properly
        log.info("log stream of %s ended early: %s", request.match_info.get("name"), err)
    except ConnectionResetError:  # the caller left
        return response
    with contextlib.suppress(ConnectionResetError):
        await response.write_eof()
    return response


def agent_target(request: web.Request, name: str, *, action: str = "logs") -> tuple[str, str]:
    """The instance's machine and its agent's URL for ``action`` (logs, exec), or the error that says
    why there is none."""
    registry = request.app[REGISTRY]
    instance = registry.get("instances", name)
    machine_name = str(instance["spec"].get("machine") or "")
    if not machine_name:
        raise Conflict(f'instance "{name}" is not bound to a machine yet')  # valid, but not now: 409
    status: dict[str, Any] = registry.get("machines", machine_name).get("status") or {}
    try:
        return machine_name, agent_url(str(status.get("address") or ""), status.get("agentPort") or 0,
                                       f"{action}/{name}")
    except ValueError as err:
        raise ServiceUnavailable(f'machine "{machine_name}" has not reported a usable agent address') from err


async def instance_log(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    authorize(user_of(request), "get", "instances", name=name, subresource="log")
    params: LogParams = parse_log_params(request.query)
    machine, url = agent_target(request, name)
    key = await request.app[LOG_SIGNING].signing_key()
    ticket = issue(key, machine=machine, instance=name, params=params, now=time.time())
    timeout = aiohttp.ClientTimeout(total=None if params.follow else UNFOLLOWED_SECONDS,
                                    connect=CONNECT_SECONDS, sock_connect=CONNECT_SECONDS)
    try:
        async with aiohttp.ClientSession(timeout=timeout, cookie_jar=aiohttp.DummyCookieJar(),
                                         trust_env=False) as session:
            async with asyncio.timeout(HEADERS_SECONDS):
                upstream = await session.get(url, params=params.query(), allow_redirects=False,
                                             headers={"Authorization": f"{TICKET_SCHEME} {ticket}"})
            async with upstream:
                if upstream.status != 200:
                    raise await upstream_error(machine, upstream)
                return await _relay(request, upstream)
    except (TimeoutError, aiohttp.ClientError) as err:
        raise ServiceUnavailable(f'the agent of machine "{machine}" is unreachable: '
                                 f"{printable(str(err)) or err.__class__.__name__}") from err
