"""``POST /api/v1/instances/NAME/exec``: run a command in an instance's container, through its agent.

Who may: admins only. A viewer is refused (403) because a command in a container reads whatever
the container can, its Secret values included, which viewers are never shown; a node token is
refused like any write that is not its own status. The trust path is the log proxy's
(api/logproxy.py): the caller's credential stays here, the agent gets an exec ticket signed with
the cluster's log signing key for this machine, this instance and the SHA-256 of this command,
valid 30 s and once (controlplane/logticket.py); the agent's address is validated as for logs, no
redirect is followed, no cookie kept, no proxy of the environment used, and an agent's answer
other than 200 becomes a 502 quoting at most 200 printable characters.

The agent's frames (controlplane/execstream.py) are read, checked and written again one by one,
so what reaches the caller is always well-formed: a frame the agent garbles, a stream cut short
or output beyond MAX_EXEC_BYTES (64 MiB) ends with an error frame saying so. Connecting to the
agent times out after 3 s and its answer's headers after 10 s; the command itself may run as
long as it likes (the caller ends it by closing the connection; ``docker exec`` cannot kill it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import aiohttp
from aiohttp import web

from controlplane.api.auth import authorize
from controlplane.api.http import read_json
from controlplane.api.logproxy import (
    CONNECT_SECONDS,
    HEADERS_SECONDS,
    LOG_SIGNING,
    agent_target,
    printable,
    upstream_error,
)
from controlplane.api.state import REGISTRY, user_of
from controlplane.errors import NotFound, ServiceUnavailable
from controlplane.execstream import (
    EXEC_CONTENT_TYPE,
    EXIT,
    FrameReader,
    command_digest,
    error_frame,
    frame,
    parse_exec_request,
)
from controlplane.logticket import TICKET_SCHEME, issue_exec

log = logging.getLogger(__name__)
MAX_EXEC_BYTES = 64 * 1024 * 1024


async def _relay(request: web.Request, upstream: aiohttp.ClientResponse, machine: str) -> web.StreamResponse:
    """The agent's frames to the caller, checked; always ends with an exit or error frame."""
    response = web.StreamResponse(headers={"Content-Type": EXEC_CONTENT_TYPE})
    await response.prepare(request)
    reader, sent, ending = FrameReader(), 0, b""
    try:
        async for chunk in upstream.content.iter_any():
            for stream, data in reader.feed(chunk):
                if stream == EXIT:
                    ending = frame(EXIT, data)
                    break
                sent += len(data)
                if sent > MAX_EXEC_BYTES:
                    ending = error_frame("output cut at 64 MiB")
                    break
                await response.write(frame(stream, data))
            if ending:
                break
        else:
            ending = error_frame(f'the agent of machine "{machine}" ended the stream before the exit code')
    except ValueError:
        ending = error_frame(f'the agent of machine "{machine}" sent something that is not an exec stream')
    except (TimeoutError, aiohttp.ClientError) as err:
        ending = error_frame(f'the exec stream from machine "{machine}" broke: {printable(str(err)) or "closed"}')
    except ConnectionResetError:  # the caller left
        return response
    with contextlib.suppress(ConnectionResetError):
        await response.write(ending)
        await response.write_eof()
    return response


async def instance_exec(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    authorize(user_of(request), "create", "instances", name=name, subresource="exec")
    wanted = parse_exec_request(await read_json(request))
    unit = str(request.app[REGISTRY].get("instances", name)["spec"].get("unit") or "")
    if wanted.container and wanted.container != unit:
        raise NotFound(f'instance "{name}" has no container "{wanted.container}": its one container is "{unit}"')
    machine, url = agent_target(request, name, action="exec")
    key = await request.app[LOG_SIGNING].signing_key()
    ticket = issue_exec(key, machine=machine, instance=name, command_digest=command_digest(wanted.command),
                        now=time.time())
    log.info('exec in instance %s by user "%s": %s', name, user_of(request).name, wanted.command[0][:64])
    timeout = aiohttp.ClientTimeout(total=None, connect=CONNECT_SECONDS, sock_connect=CONNECT_SECONDS)
    try:
        async with aiohttp.ClientSession(timeout=timeout, cookie_jar=aiohttp.DummyCookieJar(),
                                         trust_env=False) as session:
            async with asyncio.timeout(HEADERS_SECONDS):
                upstream = await session.post(url, json={"command": list(wanted.command)}, allow_redirects=False,
                                              headers={"Authorization": f"{TICKET_SCHEME} {ticket}"})
            async with upstream:
                if upstream.status != 200:
                    raise await upstream_error(machine, upstream)
                return await _relay(request, upstream, machine)
    except (TimeoutError, aiohttp.ClientError) as err:
        raise ServiceUnavailable(f'the agent of machine "{machine}" is unreachable: '
                                 f"{printable(str(err)) or err.__class__.__name__}") from err
