"""The agent's first call with ``--token-file``: trade a join token for a node token (TOKEN_API.md).

A machine can boot with a short-lived join token in its token file (``cpctl machine join-config``
puts one there). On start the agent calls ``POST /api/v1/tokens/exchange`` once with whatever the
file holds:

- 201: the answer's ``value`` is a long-lived node token for this machine; it replaces the file's
  content (mode 0600, written to a temporary file and renamed over it, so a crash leaves the old
  token or the new one, never half of one) and is used from then on;
- 403 "not a join token": the file already holds a node token (every boot after the first): use it;
- anything else (the API is not up yet, a 401, ...): try again with backoff, up to a minute apart.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from controlplane.client import Client
from controlplane.errors import CPError, Forbidden
from controlplane.tokens import EXCHANGE_PATH, NOT_A_JOIN_TOKEN

log = logging.getLogger(__name__)
MAX_BACKOFF_SECONDS = 60.0


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


async def redeem_join_token(server: str, token: str, token_file: str | Path, *, ca: str | None = None,
                            sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> str:
    """The token the agent runs with: the exchanged one (now in ``token_file``) or ``token`` itself."""
    delay = 1.0
    async with Client(server, token=token, ca=ca, timeout=10.0) as client:
        while True:
            try:
                answer = await client.request("POST", EXCHANGE_PATH)
            except CPError as err:
                if is_not_a_join_token(err):
                    return token
                log.warning("join token exchange failed (retrying in %.0f s): %s", delay, err.message)
                await sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_SECONDS)
                continue
            value = str((answer or {}).get("value") or "")
            if not value:
                log.warning("the exchange answered without a token value (retrying in %.0f s)", delay)
                await sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_SECONDS)
                continue
            write_token_file(token_file, value)
            log.info("exchanged the join token for node token %s (written to %s)", value.partition(".")[0],
                     token_file)
            return value
