"""agent/discovery (table.py, settings.py, the plug-in's shape and table): virtual addresses, DNS answers,
backend choice, flags, containers' DNS configuration; no sockets."""

from __future__ import annotations

import ipaddress

import pytest

from agent.discovery.plugin import Discovery
from agent.discovery.settings import parse_service_cidr
from agent.discovery.table import (
    Backend,
    Decision,
    ServiceTable,
    assign_slots,
    backend_order,
    build_table,
    decide,
)
from agent.executor import Executor
from agent.reconcile import DesiredInstance
from agent.runtime.base import ContainerSpec
from agent.runtime.docker import create_config
from agent.runtime.fake import FakeRuntime
from controlplane.discovery import service_lines, service_ports

NET = ipaddress.IPv4Network("10.234.0.0/16")


def unit(name: str, created: str = "2026-01-01T00:00:00Z", *, ports: list[int] | None = None,
         proxy_port: int | None = None) -> dict:
    spec: dict = {"ports": [{"containerPort": p, "protocol": "tcp"} for p in (ports or [8080])]}
    if proxy_port:
        spec = {"proxy": {"kind": "loadbalancer", "target": "web", "port": proxy_port}}
    return {"metadata": {"name": name, "uid": f"uid-{name}", "creationTimestamp": created}, "spec": spec}


def ep(instance: str, address: str, port: int, container_port: int | None = 8080) -> dict:
    item = {"address": address, "port": port, "instance": instance, "machine": "m1"}
    if container_port is not None:
        item["containerPort"] = container_port
    return item


def test_slots_are_stable_whatever_the_order_and_a_newer_unit_never_moves_an_older_one() -> None:
    units = [unit(f"u{i}", f"2026-01-01T00:00:{i:02d}Z") for i in range(20)]
    first = assign_slots(units, NET)
    assert first == assign_slots(list(reversed(units)), NET)
    assert len(set(first.values())) == 20
    assert all(ipaddress.ip_address(a) in NET and not a.endswith((".0.0", ".0.1")) for a in first.values())
    assert {k: v for k, v in assign_slots([*units, unit("zz", "2026-02-01T00:00:00Z")], NET).items()
            if k != "zz"} == first


def test_slots_collide_in_a_small_network_oldest_first_and_run_out() -> None:
    small = ipaddress.IPv4Network("10.9.9.0/29")  # slots .2 .. .6
    units = [unit(f"u{i}", f"2026-01-01T00:00:{i:02d}Z") for i in range(7)]
    got = assign_slots(units, small)
    assert sorted(got) == ["u0", "u1", "u2", "u3", "u4"]  # the two newest get none
    assert sorted(got.values()) == [f"10.9.9.{i}" for i in range(2, 7)]
    alone = assign_slots(units[:1], small)
    assert got["u0"] == alone["u0"]  # the oldest keeps its home slot


def table_for_web() -> ServiceTable:
    endpoints = {"web": {"endpoints": [ep("web-1", "127.0.1.3", 32001), ep("web-0", "127.0.1.2", 32000),
                                       ep("web-0", "127.0.1.2", 32000), ep("bad", "not-an-ip", 1),
                                       ep("web-0", "127.0.1.2", 39999, container_port=9090)]}}
    return build_table([unit("web"), unit("db", ports=[5432]), unit("Bad!")], endpoints,
                       domain="cp.internal.", network=NET)


def test_table_keeps_valid_deduplicated_backends_per_container_port() -> None:
    table = table_for_web()
    assert table.backends[("web", 8080)] == (Backend("127.0.1.2", 32000, "web-0"), Backend("127.0.1.3", 32001, "web-1"))
    assert table.backends[("db", 5432)] == ()
    assert "Bad!" not in table.addresses
    assert table.listeners() == {(table.addresses["web"], 8080): ("web", 8080),
                                 (table.addresses["db"], 5432): ("db", 5432)}


def test_an_endpoint_without_container_port_counts_only_for_a_single_port_unit() -> None:
    endpoints = {"one": {"endpoints": [ep("one-0", "10.0.0.5", 31000, container_port=None)]},
                 "two": {"endpoints": [ep("two-0", "10.0.0.6", 31001, container_port=None)]}}
    table = build_table([unit("one"), unit("two", ports=[80, 81])], endpoints, domain="cp.internal", network=NET)
    assert table.backends[("one", 8080)] == (Backend("10.0.0.5", 31000, "one-0"),)
    assert table.backends[("two", 80)] == ()


def test_a_proxy_unit_is_named_on_its_proxy_port() -> None:
    assert service_ports(unit("web-lb", proxy_port=80)) == (80,)
    assert service_ports({"spec": {"ports": [{"containerPort": 53, "protocol": "udp"}, {"containerPort": 8080}]}}) == (8080,)


@pytest.mark.parametrize(("qname", "qtype", "kind"), [
    ("web.cp.internal.", "A", "address"),
    ("WEB.CP.INTERNAL", "A", "address"),
    ("web.cp.internal", "ANY", "address"),
    ("web.cp.internal", "AAAA", "nodata"),
    ("web.cp.internal", "MX", "nodata"),
    ("cp.internal", "A", "nodata"),
    ("nope.cp.internal", "A", "nxdomain"),
    ("web-0.web.cp.internal", "A", "nxdomain"),
    ("we_b.cp.internal", "A", "nxdomain"),
    ("example.com.", "A", "forward"),
    ("internal", "A", "forward"),
    ("web.cp.internal.evil.com", "A", "forward"),
    ("a..cp.internal", "A", "refused"),
    ("x" * 64 + ".cp.internal", "A", "refused"),
    ("", "A", "refused"),
])
def test_dns_decision(qname: str, qtype: str, kind: str) -> None:
    decision = decide(table_for_web(), qname, qtype)
    assert decision.kind == kind
    if kind == "address":
        assert decision == Decision("address", (table_for_web().addresses["web"],))


def test_backend_order_round_robins_and_tries_suspects_last() -> None:
    a, b, c = Backend("10.0.0.1", 1), Backend("10.0.0.2", 1), Backend("10.0.0.3", 1)
    assert backend_order((a, b, c), 0) == [a, b, c]
    assert backend_order((a, b, c), 4) == [b, c, a]
    assert backend_order((a, b, c), 0, suspect={a: 10.0}, now=5.0) == [b, c, a]
    assert backend_order((a, b, c), 0, suspect={a: 10.0}, now=11.0) == [a, b, c]  # suspicion expired
    assert backend_order((), 3) == []


def test_service_cidr_flag() -> None:
    settings = parse_service_cidr("10.235.1.0/24", domain="Cluster.Local.", upstreams="1.1.1.1, 9.9.9.9")
    assert settings is not None
    assert (settings.domain, str(settings.network), settings.upstreams) == ("cluster.local", "10.235.1.0/24",
                                                                            ("1.1.1.1", "9.9.9.9"))
    assert parse_service_cidr("off", domain="cp.internal") is None
    for cidr, domain in [("10.0.0.1/24", "cp.internal"), ("fd00::/64", "cp.internal"), ("10.0.0.0/30", "cp.internal"),
                         ("10.0.0.0/24", "bad_domain"), ("10.0.0.0/24", "")]:
        with pytest.raises(ValueError):
            parse_service_cidr(cidr, domain=domain)
    with pytest.raises(ValueError):
        parse_service_cidr("10.0.0.0/24", domain="cp.internal", upstreams="resolver.example")


def test_containers_get_the_resolver_in_their_dns_configuration() -> None:
    config = create_config(ContainerSpec(name="c", image="i", dns=("10.234.0.1",), dns_search=("cp.internal",)))
    assert config["HostConfig"]["Dns"] == ["10.234.0.1"]
    assert config["HostConfig"]["DnsSearch"] == ["cp.internal"]
    assert "Dns" not in create_config(ContainerSpec(name="c", image="i"))["HostConfig"]


def test_describe_lines_name_the_service_and_where_it_leads() -> None:
    lines = service_lines(unit("web"), {"endpoints": [ep("web-0", "127.0.1.2", 32000)]}, domain="cp.internal")
    assert lines == ["  Name:     web.cp.internal", "  tcp/8080: web.cp.internal:8080 -> 1 ready",
                     "    web-0 on m1 at 127.0.1.2:32000"]
    assert service_lines(unit("web"), None)[1].endswith("no ready instance")


def test_the_plugin_gives_bridge_containers_the_resolver_and_leaves_host_network_ones() -> None:

    plugin = Discovery(None, domain="cp.internal", network=ipaddress.IPv4Network("10.235.2.0/24"),  # type: ignore[arg-type]
                       upstreams=[])
    app = DesiredInstance(name="app-0", unit="app", index=0, machine="m1", image="i")
    proxy = DesiredInstance(name="lb-0", unit="lb", index=0, machine="m1", image="nginx", network="host")
    assert plugin.shape([app, proxy], {}) == [app, proxy]  # not started: discovery is off, nothing changes
    plugin.enabled = True
    shaped_app, shaped_proxy = plugin.shape([app, proxy], {})
    assert (shaped_app.dns, shaped_app.dns_search) == (("10.235.2.1",), ("cp.internal",))
    assert shaped_proxy == proxy
    spec = Executor(FakeRuntime(), cluster="c1", machine="m1", address="127.0.1.1").container_spec(shaped_app)
    assert (spec.dns, spec.dns_search) == (("10.235.2.1",), ("cp.internal",))


def test_the_table_follows_units_and_endpoints_as_the_plugin_rebuilds_it() -> None:

    plugin = Discovery(None, domain="cp.internal", network=NET, upstreams=[])  # type: ignore[arg-type]
    plugin.units["web"] = unit("web")
    plugin.endpoints["web"] = {"endpoints": [ep("web-0", "127.0.1.2", 32000)]}
    plugin.rebuild()
    assert plugin.table.backends[("web", 8080)] == (Backend("127.0.1.2", 32000, "web-0"),)
    assert decide(plugin.resolver.table(), "web.cp.internal", "A").kind == "address"
    plugin.endpoints["web"] = {"endpoints": []}
    plugin.rebuild()
    assert plugin.forwarder.table().backends[("web", 8080)] == ()
    assert plugin.changed.is_set()
