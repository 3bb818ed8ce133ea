"""``cpctl exec INSTANCE [-c CONTAINER] -- CMD [ARGS...]``: run a command in an instance's container.

The API server runs it through the agent of the instance's machine (api/execproxy.py; admins
only). Non-interactive: no stdin, no TTY. The command's stdout goes to stdout and its stderr to
stderr, as they arrive (through ``terminal.LogFilter`` when that is a terminal, as for ``cpctl
logs``; a pipe gets the bytes as they are), and cpctl exits with the command's exit code. A
command that could not be run is one ``error: ...`` line and exit 1.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import BinaryIO

import click

from controlplane.execstream import EXIT, STDERR, ExecRequest, FrameReader, exit_result

from .common import CLIError, call
from .completion import complete_names_of
from .config import connection_options
from .rest import RestClient
from .terminal import LogFilter


class _Output:
    """One of cpctl's own outputs, filtered when it is a terminal."""

    def __init__(self, stream: BinaryIO, *, tty: bool) -> None:
        self.stream = stream
        self.screen = LogFilter() if tty else None

    def write(self, data: bytes, *, final: bool = False) -> None:
        out = data if self.screen is None else self.screen.feed(data, final=final).encode()
        if out:
            self.stream.write(out)
            self.stream.flush()


def relay(chunks: Iterable[bytes], out: _Output, err: _Output) -> int:
    """Write the frames of ``chunks`` to ``out``/``err``; the command's exit code, CLIError if none."""
    reader = FrameReader()
    try:
        for chunk in chunks:
            for stream, data in reader.feed(chunk):
                if stream == EXIT:
                    out.write(b"", final=True)
                    err.write(b"", final=True)
                    code, why = exit_result(data)
                    if code is None:
                        raise CLIError(f"exec failed: {why}")
                    return code
                (err if stream == STDERR else out).write(data)
    except ValueError as error:
        raise CLIError(f"the exec stream is garbled: {error}") from error
    raise CLIError("the exec stream ended before the command's exit code")


@click.command("exec", context_settings={"ignore_unknown_options": True})
@click.argument("instance", shell_complete=complete_names_of("instances"))
@click.option("-c", "--container", metavar="NAME", default="",
              help="the container (an instance has one, named as its unit; kubectl habit)")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED, metavar="-- CMD [ARGS...]")
@connection_options
def exec_command(instance: str, container: str, command: tuple[str, ...]) -> None:
    """Run CMD in INSTANCE's container (admins; no stdin, no TTY); exit with its exit code."""
    request = ExecRequest(tuple(command), container)

    def go(api: RestClient) -> int:
        chunks = api.exec(instance, request.body())
        return relay(chunks, _Output(sys.stdout.buffer, tty=sys.stdout.isatty()),
                     _Output(sys.stderr.buffer, tty=sys.stderr.isatty()))

    sys.exit(call(go))
