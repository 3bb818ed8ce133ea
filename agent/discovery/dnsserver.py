"""The agent's resolver: DNS over UDP and TCP for its containers, on the service network's first address.

Names in the cluster domain are answered from the service table (agent/discovery/table.py's
``decide``); every other name is forwarded, as the packet came, to the host's resolvers (from
/etc/resolv.conf unless given), so containers resolve the outside world as the host does.
Not an open resolver: it listens only on the service address (a local route, not reachable from
other hosts unless they route the service network here), and it drops queries from any source
that is not loopback, private or link-local. dnslib parses and builds the packets.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import struct
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import cast

from dnslib import QTYPE, RCODE, RR, A, DNSRecord  # type: ignore[import-untyped]

from agent.discovery.table import Decision, ServiceTable, decide

log = logging.getLogger(__name__)
UPSTREAM_TIMEOUT = 2.0
MAX_TCP_MESSAGE = 65535


def host_resolvers(path: str = "/etc/resolv.conf", *, exclude: Sequence[str] = ()) -> list[str]:
    """The ``nameserver`` addresses of a resolv.conf, without ``exclude`` (our own address)."""
    try:
        text = Path(path).read_text()
    except OSError:
        return []
    found: list[str] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            try:
                ip = ipaddress.ip_address(parts[1].split("%")[0])
            except ValueError:
                continue
            if str(ip) not in exclude and str(ip) not in found:
                found.append(str(ip))
    return found


def allowed_client(address: str) -> bool:
    """Containers, the host and private networks may ask; the rest of the world may not."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_private or ip.is_link_local


def answer_packet(query: DNSRecord, decision: Decision) -> bytes:
    """The reply to ``query`` for a local decision (not ``forward``)."""
    reply = query.reply()  # copies the id and the question, sets qr, rd and ra
    reply.header.aa = 1
    if decision.kind == "address":
        for address in decision.addresses:
            reply.add_answer(RR(query.q.qname, QTYPE.A, rdata=A(address), ttl=decision.ttl))
    elif decision.kind == "nxdomain":
        reply.header.rcode = RCODE.NXDOMAIN
    elif decision.kind == "refused":
        reply.header.aa = 0
        reply.header.rcode = RCODE.REFUSED
    return bytes(reply.pack())


def error_packet(data: bytes, rcode: int) -> bytes | None:
    """A reply carrying only ``rcode`` to a packet we could not answer otherwise (None: not DNS)."""
    try:
        query = DNSRecord.parse(data)
    except Exception:  # dnslib raises several kinds on garbage
        return None
    reply = query.reply()
    reply.header.rcode = rcode
    return bytes(reply.pack())


class Resolver:
    """Answers one DNS message; ``table`` is read on every query, so a new table applies at once."""

    def __init__(self, table: Callable[[], ServiceTable], *, upstreams: Sequence[str], upstream_port: int = 53) -> None:
        self.table = table
        self.upstreams = list(upstreams)
        self.upstream_port = upstream_port

    async def handle(self, data: bytes, *, tcp: bool) -> bytes | None:
        try:
            query = DNSRecord.parse(data)
        except Exception:  # dnslib raises several kinds on garbage: a malformed packet gets no answer
            return None
        if query.header.qr or len(query.questions) != 1:
            return error_packet(data, RCODE.FORMERR)
        question = query.questions[0]
        decision = decide(self.table(), str(question.qname), QTYPE.get(question.qtype, str(question.qtype)))
        if decision.kind != "forward":
            return answer_packet(query, decision)
        for upstream in self.upstreams:
            with contextlib.suppress(OSError, TimeoutError, asyncio.IncompleteReadError):
                forward = forward_tcp if tcp else forward_udp
                return await forward(data, upstream, port=self.upstream_port)
        return error_packet(data, RCODE.SERVFAIL)


class _Reply(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if not self.answer.done():
            self.answer.set_result(data)


async def forward_udp(data: bytes, upstream: str, *, port: int = 53) -> bytes:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(_Reply, remote_addr=(upstream, port))
    try:
        transport.sendto(data)
        return await asyncio.wait_for(protocol.answer, UPSTREAM_TIMEOUT)
    finally:
        transport.close()


async def forward_tcp(data: bytes, upstream: str, *, port: int = 53) -> bytes:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(upstream, port), UPSTREAM_TIMEOUT)
    try:
        writer.write(struct.pack(">H", len(data)) + data)
        await writer.drain()
        (size,) = struct.unpack(">H", await asyncio.wait_for(reader.readexactly(2), UPSTREAM_TIMEOUT))
        return await asyncio.wait_for(reader.readexactly(size), UPSTREAM_TIMEOUT)
    finally:
        writer.close()


class _UDPServer(asyncio.DatagramProtocol):
    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver
        self.transport: asyncio.DatagramTransport | None = None
        self.pending: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # the selector's is not a subclass

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if not allowed_client(addr[0]):
            return
        task = asyncio.ensure_future(self._answer(data, addr))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def _answer(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = await self.resolver.handle(data, tcp=False)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


class DNSServer:
    """The resolver on ``address:port``, UDP and TCP."""

    def __init__(self, resolver: Resolver, address: str, *, port: int = 53) -> None:
        self.resolver = resolver
        self.address = address
        self.port = port
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: _UDPServer(self.resolver),
                                                           local_addr=(self.address, self.port))
        self._udp = transport
        try:
            self._tcp = await asyncio.start_server(self._tcp_client, self.address, self.port, reuse_address=True)
        except OSError:
            transport.close()
            raise
        log.info("resolver on %s:%d (udp, tcp); other names to %s", self.address, self.port,
                 ", ".join(self.resolver.upstreams) or "nobody")

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("", 0)
        try:
            if not allowed_client(str(peer[0])):
                return
            while True:
                header = await asyncio.wait_for(reader.readexactly(2), 10.0)
                (size,) = struct.unpack(">H", header)
                reply = await self.resolver.handle(await asyncio.wait_for(reader.readexactly(size), 10.0), tcp=True)
                if reply is None:
                    return
                writer.write(struct.pack(">H", len(reply)) + reply[:MAX_TCP_MESSAGE])
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, OSError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            with contextlib.suppress(Exception):
                await self._tcp.wait_closed()
