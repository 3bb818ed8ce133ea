"""``exec``'s wire format, shared by cpctl, the API server and the agent (stdlib only: cpctl imports it).

The request (``POST /api/v1/instances/NAME/exec`` and the agent's ``POST /exec/NAME``) is JSON:
``{"command": ["sh", "-c", "..."], "container": "web"}`` (``container`` optional: an instance has
one container, named as its unit). The answer is ``application/vnd.controlplane.exec.v1``: frames
of a 1-byte stream id, a 4-byte big-endian length and that many bytes; stream 1 is the command's
stdout, 2 its stderr, and 3, always last, JSON ``{"exitCode": N}`` or ``{"error": "why"}`` (the
command could not be run or its output was cut). Non-interactive: no stdin, no TTY.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from controlplane.errors import BadRequest

EXEC_CONTENT_TYPE = "application/vnd.controlplane.exec.v1"
STDOUT, STDERR, EXIT = 1, 2, 3
STREAMS = (STDOUT, STDERR, EXIT)
HEADER = struct.Struct(">BI")
MAX_FRAME = 1024 * 1024
MAX_ARGS = 256
MAX_ARG_CHARS = 16 * 1024
MAX_COMMAND_CHARS = 64 * 1024
# the OpenAPI document's words for the frames and for what parse_exec_request accepts
EXEC_FRAMES = ('frames of 1 byte stream (1 stdout, 2 stderr, 3 exit), 4 bytes big-endian length, the bytes; the last '
               '(3) is JSON {"exitCode": N} or {"error": "..."}. No stdin, no TTY (controlplane/execstream.py)')
_EXEC_ARG = {"type": "string", "maxLength": MAX_ARG_CHARS, "pattern": "^[^\\u0000]*$"}
EXEC_COMMAND = {"type": "array", "minItems": 1, "maxItems": MAX_ARGS, "items": _EXEC_ARG,
                "prefixItems": [{**_EXEC_ARG, "minLength": 1}],
                "description": f"the program and its arguments; at most {MAX_COMMAND_CHARS} characters in all"}


@dataclass(frozen=True)
class ExecRequest:
    command: tuple[str, ...]
    container: str = ""

    def body(self) -> dict[str, Any]:
        return {"command": list(self.command), **({"container": self.container} if self.container else {})}


def parse_exec_request(body: Any) -> ExecRequest:
    """Pure: the request's command and container; BadRequest naming what is wrong."""
    if not isinstance(body, Mapping) or set(body) - {"command", "container"}:
        raise BadRequest('an exec request is {"command": [ARG, ...], "container": NAME} and nothing else')
    command, container = body.get("command"), body.get("container", "")
    if not isinstance(command, list) or not command or len(command) > MAX_ARGS:
        raise BadRequest(f"command must be a list of 1 to {MAX_ARGS} strings")
    if not all(isinstance(arg, str) and len(arg) <= MAX_ARG_CHARS and "\x00" not in arg for arg in command):
        raise BadRequest(f"every argument of command must be a string of at most {MAX_ARG_CHARS} characters, "
                         "without NUL")
    if not command[0] or sum(len(arg) for arg in command) > MAX_COMMAND_CHARS:
        raise BadRequest(f"command[0] must not be empty and the command at most {MAX_COMMAND_CHARS} characters")
    if not isinstance(container, str) or len(container) > 63:
        raise BadRequest("container must be a name")
    return ExecRequest(tuple(command), container)


def command_digest(command: tuple[str, ...] | list[str]) -> str:
    """What an exec ticket binds: the SHA-256 of the command as canonical JSON (hex)."""
    return hashlib.sha256(json.dumps(list(command), separators=(",", ":")).encode()).hexdigest()


def frame(stream: int, data: bytes) -> bytes:
    return HEADER.pack(stream, len(data)) + data


def exit_frame(code: int) -> bytes:
    return frame(EXIT, json.dumps({"exitCode": int(code)}).encode())


def error_frame(message: str) -> bytes:
    return frame(EXIT, json.dumps({"error": message}).encode())


class FrameReader:
    """Frames from a byte stream fed in arbitrary chunks. ``feed`` yields each whole frame in turn, and
    raises ValueError where a frame is not one (after yielding those before it)."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> Iterator[tuple[int, bytes]]:
        self._buffer += data
        while len(self._buffer) >= HEADER.size:
            stream, size = HEADER.unpack_from(self._buffer)
            if stream not in STREAMS or size > MAX_FRAME:
                raise ValueError(f"not an exec frame (stream {stream}, {size} bytes)")
            if len(self._buffer) < HEADER.size + size:
                return
            payload = self._buffer[HEADER.size:HEADER.size + size]
            self._buffer = self._buffer[HEADER.size + size:]
            yield stream, payload

    @property
    def pending(self) -> bool:
        return bool(self._buffer)


def exit_result(data: bytes) -> tuple[int | None, str]:
    """Pure: the exit frame's (exit code, "") or (None, why it did not run)."""
    try:
        doc = json.loads(data)
    except ValueError:
        return None, "the exit frame is not JSON"
    if isinstance(doc, dict) and isinstance(doc.get("exitCode"), int) and not isinstance(doc["exitCode"], bool):
        return int(doc["exitCode"]), ""
    if isinstance(doc, dict) and isinstance(doc.get("error"), str):
        return None, doc["error"]
    return None, "the exit frame says neither exitCode nor error"
