"""The agent's exec endpoint: ``POST /exec/INSTANCE`` runs a command in that instance's container.

It lives on the log port (agent/logserver.py adds it) and trusts the same thing only: an
``Authorization: CP-Ticket <ticket>`` the API server signed for this machine, this instance, the
``exec`` action and this very command (its SHA-256), unexpired and not seen before
(controlplane/logticket.py). A log ticket, a bearer token of any role or anything else is refused
(401 without a ticket, 403 for one that does not fit) before the body is looked at beyond its
command. The command runs through the agent's runtime (``docker exec`` on the local socket or over
SSH) without stdin or TTY; its stdout and stderr are streamed back as frames
(controlplane/execstream.py), then its exit code.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable

from aiohttp import web

from agent.runtime.base import Runtime, RuntimeFailure
from controlplane.errors import BadRequest, CPError, NotFound, RequestEntityTooLarge, Unauthorized
from controlplane.execstream import (
    EXEC_CONTENT_TYPE,
    MAX_FRAME,
    STDERR,
    STDOUT,
    ExecRequest,
    command_digest,
    error_frame,
    exit_frame,
    frame,
    parse_exec_request,
)
from controlplane.logticket import TICKET_SCHEME, TicketVerifier

log = logging.getLogger(__name__)
MAX_REQUEST_BYTES = 256 * 1024
ERROR_CHARS = 300


def _status(err: CPError) -> web.Response:
    return web.json_response(err.to_status(), status=err.code)


async def checked_request(request: web.Request, verifier: TicketVerifier, keys: Iterable[object], *,
                          now: float) -> ExecRequest:
    """The exec request if its ticket authorizes exactly it; Unauthorized, BadRequest or TicketRefused."""
    scheme, _, ticket = request.headers.get("Authorization", "").partition(" ")
    if scheme != TICKET_SCHEME or not ticket.strip():
        raise Unauthorized(f"this endpoint takes only an exec ticket from the API server ({TICKET_SCHEME} ...)")
    if (request.content_length or 0) > MAX_REQUEST_BYTES:
        raise RequestEntityTooLarge(f"an exec request is at most {MAX_REQUEST_BYTES} bytes")
    try:
        body = json.loads(await request.content.read(MAX_REQUEST_BYTES + 1))
    except (ValueError, UnicodeDecodeError) as err:
        raise BadRequest("the exec request is not JSON") from err
    wanted = parse_exec_request(body)
    verifier.check_exec(ticket.strip(), keys, instance=request.match_info["instance"],
                        command_digest=command_digest(wanted.command), now=now)
    return wanted


async def _stream(response: web.StreamResponse, runtime: Runtime, container_id: str, command: list[str]) -> None:
    """The command's output as frames, then the exit frame (an error frame if it could not run)."""
    try:
        async for piece in runtime.exec_stream(container_id, command):
            if piece.stream == "exit":
                await response.write(exit_frame(-1 if piece.exit_code is None else piece.exit_code))
                return
            stream = STDERR if piece.stream == "stderr" else STDOUT
            for start in range(0, len(piece.data), MAX_FRAME):
                await response.write(frame(stream, piece.data[start:start + MAX_FRAME]))
        await response.write(error_frame("the runtime reported no exit code"))
    except RuntimeFailure as err:
        await response.write(error_frame(" ".join(str(err).split())[:ERROR_CHARS] or "the exec failed"))


def add_exec_route(app: web.Application, runtime: Runtime, *, machine: str, verifier: TicketVerifier,
                   containers: Callable[[], dict[str, str]], signing_keys: Callable[[], Iterable[object]],
                   clock: Callable[[], float] = time.time) -> None:
    """``POST /exec/{instance}`` on ``app``, checking tickets with ``verifier`` (the log app's)."""

    async def execute(request: web.Request) -> web.StreamResponse:
        name = request.match_info["instance"]
        try:
            wanted = await checked_request(request, verifier, signing_keys(), now=clock())
        except CPError as err:
            log.info("exec request for %s refused: %s", name, err.message)
            return _status(err)
        container_id = containers().get(name)
        if container_id is None:
            return _status(NotFound(f'instance "{name}" has no container on machine {machine}'))
        log.info("exec in %s (container %s): %s, %d arguments", name, container_id[:12], wanted.command[0][:64],
                 len(wanted.command) - 1)
        response = web.StreamResponse(headers={"Content-Type": EXEC_CONTENT_TYPE})
        await response.prepare(request)
        try:
            await _stream(response, runtime, container_id, list(wanted.command))
            await response.write_eof()
        except ConnectionResetError:  # the API server left (its caller did): stop relaying
            log.info("exec in %s: the API server closed the stream", name)
        return response

    app.router.add_post("/exec/{instance}", execute)
