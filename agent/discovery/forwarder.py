"""The agent's TCP forwarder: one listening socket per unit's (virtual address, container port).

Each accepted connection goes to a ready backend of that unit and port, round robin (table.py's
``backend_order``), read from the current service table at accept time, so an Endpoints change
applies to the very next connection. A backend that refuses or does not answer within
``CONNECT_TIMEOUT`` is marked suspect for ``SUSPECT_SECONDS`` and the next one is tried; with no
backend left the client's connection is closed (it sees an empty reply, not a hang).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import time
from collections.abc import Callable, Mapping

from agent.discovery.table import Backend, ServiceTable, backend_order

log = logging.getLogger(__name__)
CONNECT_TIMEOUT = 1.0
SUSPECT_SECONDS = 2.0
CHUNK = 65536


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until EOF, then half-close the other side (HTTP/1.0 clients wait for it)."""
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()


class Forwarder:
    """Holds the listeners ``reconcile`` is given and forwards their connections."""

    def __init__(self, table: Callable[[], ServiceTable], *, clock: Callable[[], float] = time.monotonic) -> None:
        self.table = table
        self.clock = clock
        self.servers: dict[tuple[str, int], asyncio.Server] = {}
        self.turns: dict[tuple[str, int], int] = {}
        self.suspect: dict[Backend, float] = {}
        self.failed_binds: dict[tuple[str, int], str] = {}

    async def reconcile(self, wanted: Mapping[tuple[str, int], tuple[str, int]]) -> None:
        """Listen on exactly ``wanted``'s (address, port) keys; each maps to its (unit, port)."""
        for key in [k for k in self.servers if k not in wanted]:
            server = self.servers.pop(key)
            server.close()
        for key, target in wanted.items():
            if key in self.servers:
                continue
            try:
                self.servers[key] = await asyncio.start_server(
                    functools.partial(self._client, target=target), key[0], key[1], reuse_address=True, backlog=512)
                self.failed_binds.pop(key, None)
            except OSError as err:
                if self.failed_binds.get(key) != str(err):
                    log.warning("cannot forward %s:%d for unit %s: %s", key[0], key[1], target[0], err)
                self.failed_binds[key] = str(err)

    async def _connect(self, target: tuple[str, int]) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        backends = self.table().backends.get(target, ())
        turn = self.turns.get(target, 0)
        self.turns[target] = turn + 1
        now = self.clock()
        for backend in backend_order(backends, turn, suspect=self.suspect, now=now):
            try:
                streams = await asyncio.wait_for(asyncio.open_connection(backend.address, backend.port),
                                                 CONNECT_TIMEOUT)
            except (OSError, TimeoutError) as err:
                log.debug("backend %s:%d of %s refused: %s", backend.address, backend.port, target[0], err)
                self.suspect[backend] = now + SUSPECT_SECONDS
                continue
            self.suspect.pop(backend, None)
            return streams
        return None

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                      target: tuple[str, int]) -> None:
        upstream = None
        try:
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            upstream = await self._connect(target)
            if upstream is None:
                return
            up_reader, up_writer = upstream
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except (ConnectionError, OSError):
            pass
        finally:
            for w in (writer, upstream[1] if upstream else None):
                if w is not None:
                    w.close()
                    with contextlib.suppress(Exception):
                        await w.wait_closed()

    async def close(self) -> None:
        for server in self.servers.values():
            server.close()
        self.servers.clear()
