"""The agent's first call with ``--token-file``: trade a join token for a node token (TOKEN_API.md).

A machine can boot with a short-lived join token in its token file (``cpctl machine join-config``
puts one there). On start the agent calls ``POST /api/v1/tokens/exchange`` with whatever the file
holds:

- 201: the answer's ``value`` is a long-lived node token for this machine; it replaces the file's
  content (mode 0600, written to a temporary file and renamed over it, so a crash leaves the old
  token or the new one, never half of one) and is used from then on;
- 403 "not a join token": the file already holds a node token (every boot after the first): use it;
- anything else (the API is not up yet, a 401, ...): try again with backoff, up to a minute apart.

The agent waits for that answer at most ``START_PATIENCE`` seconds: a machine that restarts while cut
off from the API must still start, so that its heartbeat loop fences (stops) the instances it ran
before, which the cluster is replacing elsewhere. It then runs with the file's token and
``finish_join_exchange`` keeps asking in the background; a new token goes into the file and into the
agent's client (whose next request opens a session with it).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from controlplane.client import Client
from controlplane.errors import CPError, Forbidden, InternalError
from controlplane.tokens import EXCHANGE_PATH, NOT_A_JOIN_TOKEN

log = logging.getLogger(__name__)
MAX_BACKOFF_SECONDS = 60.0
START_PATIENCE = 5.0
Sleep = Callable[[float], Awaitable[None]]


def write_token_file(path: str | Path, value: str) -> None:
    """Replace ``path``'s content with ``value`` atomically; the file is mode 0600 from its first byte."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(value + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def is_not_a_join_token(err: CPError) -> bool:
    return isinstance(err, Forbidden) and NOT_A_JOIN_TOKEN in str(err.message)


async def _exchange(client: Client) -> str | None:
    """The new token (201); None when the client's token is not a join token; CPError otherwise."""
    try:
        answer = await client.request("POST", EXCHANGE_PATH)
    except CPError as err:
        if is_not_a_join_token(err):
            return None
        raise
    value = str((answer or {}).get("value") or "") if isinstance(answer, dict) else ""
    if not value:
        raise InternalError("the exchange answered without a token value")
    return value


async def exchange_until_answered(client: Client, token_file: str | Path, *, deadline: float | None = None,
                                  sleep: Sleep = asyncio.sleep) -> tuple[bool, str | None]:
    """Ask until the server answers 201 or "not a join token": (True, the new token or None). With a
    ``deadline`` (time.monotonic()), (False, None) once the next try would be past it."""
    delay = 1.0
    while True:
        try:
            value = await _exchange(client)
        except CPError as err:
            if deadline is not None and time.monotonic() + delay > deadline:
                log.warning("join token exchange failed (%s); starting with the token file's token, "
                            "asking again in the background", err.message)
                return False, None
            log.warning("join token exchange failed (retrying in %.0f s): %s", delay, err.message)
            await sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF_SECONDS)
            continue
        if value is not None:
            write_token_file(token_file, value)
            log.info("exchanged the join token for node token %s (written to %s)", value.partition(".")[0],
                     token_file)
        return True, value


async def redeem_join_token(server: str, token: str, token_file: str | Path, *, ca: str | None = None,
                            patience: float = START_PATIENCE, sleep: Sleep = asyncio.sleep) -> tuple[str, bool]:
    """(the token to start with, whether ``finish_join_exchange`` must still ask in the background)."""
    async with Client(server, token=token, ca=ca, timeout=min(10.0, max(patience, 1.0))) as client:
        answered, value = await exchange_until_answered(client, token_file, deadline=time.monotonic() + patience,
                                                        sleep=sleep)
    return value or token, not answered


async def finish_join_exchange(client: Client, token_file: str | Path, *, sleep: Sleep = asyncio.sleep) -> None:
    """The exchange the start gave up on, until answered; a new token replaces the client's."""
    _, value = await exchange_until_answered(client, token_file, sleep=sleep)
    if value:
        client.token = value
        await client.close()  # the next request opens a session with the new token
