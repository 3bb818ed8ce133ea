"""agent/discovery's resolver and forwarder on real loopback sockets (no root, no Docker)."""

from __future__ import annotations

import asyncio
import socket

from dnslib import QTYPE, RCODE, RR, A, DNSRecord  # type: ignore[import-untyped]

from agent.discovery.dnsserver import Resolver, allowed_client, host_resolvers
from agent.discovery.forwarder import Forwarder
from agent.discovery.table import Backend, ServiceTable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


TABLE = ServiceTable(domain="cp.internal", addresses={"web": "10.234.1.2"}, ports={"web": (8080,)})


async def test_resolver_answers_its_domain_and_forwards_the_rest() -> None:
    upstream_port = free_port()

    class Upstream(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            query = DNSRecord.parse(data)
            reply = query.reply()
            reply.add_answer(RR(query.q.qname, QTYPE.A, rdata=A("192.0.2.7"), ttl=60))
            self.transport.sendto(reply.pack(), addr)  # type: ignore[attr-defined]

    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        Upstream, local_addr=("127.0.0.1", upstream_port))
    try:
        resolver = Resolver(lambda: TABLE, upstreams=["127.0.0.1"], upstream_port=upstream_port)
        ours = DNSRecord.parse(await resolver.handle(DNSRecord.question("web.cp.internal").pack(), tcp=False))
        assert [str(rr.rdata) for rr in ours.rr] == ["10.234.1.2"]
        assert ours.header.aa == 1
        missing = DNSRecord.parse(await resolver.handle(DNSRecord.question("db.cp.internal").pack(), tcp=False))
        assert missing.header.rcode == RCODE.NXDOMAIN and not missing.rr
        outside = DNSRecord.parse(await resolver.handle(DNSRecord.question("example.org").pack(), tcp=False))
        assert [str(rr.rdata) for rr in outside.rr] == ["192.0.2.7"]
        assert await resolver.handle(b"\x00garbage", tcp=False) is None
    finally:
        transport.close()
    dead = Resolver(lambda: TABLE, upstreams=[], upstream_port=upstream_port)
    failed = DNSRecord.parse(await dead.handle(DNSRecord.question("example.org").pack(), tcp=False))
    assert failed.header.rcode == RCODE.SERVFAIL


def test_not_an_open_resolver_and_reads_the_hosts_resolvers(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert allowed_client("172.17.0.5") and allowed_client("127.0.0.1")
    assert not allowed_client("8.8.8.8")
    conf = tmp_path / "resolv.conf"
    conf.write_text("search example\nnameserver 10.234.0.1\nnameserver 1.1.1.1\nnameserver bogus\nnameserver fe80::1%eth0\n")
    assert host_resolvers(str(conf), exclude=("10.234.0.1",)) == ["1.1.1.1", "fe80::1"]


async def _backend(name: bytes) -> tuple[asyncio.Server, int]:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.write(name)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, int(server.sockets[0].getsockname()[1])


async def _fetch(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"hi")
    writer.write_eof()
    try:
        return await asyncio.wait_for(reader.read(), 5)
    except ConnectionResetError:  # closed with our bytes unread: what a client of no backend sees
        return b"reset"
    finally:
        writer.close()


async def test_forwarder_balances_over_ready_backends_fails_over_and_follows_the_table() -> None:
    (server_a, port_a), (server_b, port_b) = await _backend(b"A"), await _backend(b"B")
    dead_port = free_port()
    listen = free_port()
    key = ("web", 8080)
    table = ServiceTable(domain="cp.internal", addresses={"web": "127.0.0.1"}, ports={"web": (8080,)},
                         backends={key: (Backend("127.0.0.1", port_a), Backend("127.0.0.1", port_b))})
    current = {"table": table}
    forwarder = Forwarder(lambda: current["table"])
    try:
        await forwarder.reconcile({("127.0.0.1", listen): key})
        assert sorted([await _fetch(listen) for _ in range(4)]) == [b"A", b"A", b"B", b"B"]
        current["table"] = ServiceTable(domain="cp.internal", addresses=table.addresses, ports=table.ports,
                                        backends={key: (Backend("127.0.0.1", dead_port), Backend("127.0.0.1", port_b))})
        assert [await _fetch(listen) for _ in range(3)] == [b"B", b"B", b"B"]  # the dead one is skipped
        current["table"] = ServiceTable(domain="cp.internal", addresses=table.addresses, ports=table.ports,
                                        backends={key: ()})
        assert await _fetch(listen) in (b"", b"reset")  # no ready backend: closed, not hung
        await forwarder.reconcile({})
        assert not forwarder.servers
    finally:
        await forwarder.close()
        server_a.close()
        server_b.close()
