"""Table tests for agent.proxy.render: what each proxy kind renders, what is dropped, and
that the host nginx binary accepts every rendered config (``nginx -t``)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from agent.proxy.render import HASH_PLACEHOLDER, extract_hash, render, verify_hash
from agent.proxy.routes import Endpoint, InvalidProxySpec, ProxySpec, Route, endpoints_from_object, routes_for

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
HAVE_NGINX = Path(NGINX).exists()

LB = ProxySpec(kind="loadbalancer", port=8080, target="web")
EDGE = ProxySpec(kind="edge", port=8088, domain="mywebsite.com")


def ep(i: int, port: int = 32768) -> Endpoint:
    return Endpoint(address=f"127.0.1.{i}", port=port, instance=f"web-{i}", machine=f"m{i}")


def upstream_servers(text: str, unit: str) -> list[str]:
    m = re.search(r"upstream cp_unit_" + re.escape(unit) + r" \{(.*?)\}", text, re.S)
    if not m:
        return []
    return re.findall(r"server (\S+) ", m.group(1))


def nginx_test(text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    conf = tmp_path / "nginx.conf"
    conf.write_text(text)
    return subprocess.run(
        [NGINX, "-t", "-q", "-e", "stderr", "-c", str(conf)],
        capture_output=True,
        text=True,
        timeout=20,
    )


LB_CASES = {
    "no endpoints": ([Route("web")], []),
    "one endpoint": ([Route("web", (ep(1),))], ["127.0.1.1:32768"]),
    "three endpoints, unsorted": (
        [Route("web", (ep(3), ep(1), ep(2)))],
        ["127.0.1.1:32768", "127.0.1.2:32768", "127.0.1.3:32768"],
    ),
    "duplicate endpoint collapses": ([Route("web", (ep(1), ep(1)))], ["127.0.1.1:32768"]),
    "ipv6 endpoint": ([Route("web", (Endpoint("::1", 9000),))], ["[::1]:9000"]),
    "target missing from routes": ([], []),
}


@pytest.mark.parametrize("name", list(LB_CASES))
def test_loadbalancer_table(name: str, tmp_path: Path) -> None:
    routes, servers = LB_CASES[name]
    res = render(LB, routes, run_dir=str(tmp_path))
    assert upstream_servers(res.text, "web") == servers
    assert "listen 8080 default_server;" in res.text
    if servers:
        assert "proxy_pass http://cp_unit_web;" in res.text
        assert "keepalive 16;" in res.text
    else:
        # never an empty upstream: a 503 location instead
        assert "upstream cp_unit_web" not in res.text
        assert "return 503" in res.text
    assert res.dropped == ()
    if HAVE_NGINX:
        r = nginx_test(res.text, tmp_path)
        assert r.returncode == 0, r.stderr


def test_loadbalancer_ignores_other_units() -> None:
    res = render(LB, [Route("web", (ep(1),)), Route("api", (ep(2),))])
    assert upstream_servers(res.text, "web") == ["127.0.1.1:32768"]
    assert "cp_unit_api" not in res.text
    assert [r.unit for r, _ in res.dropped] == ["api"]


EDGE_ROUTES = [
    Route("web-lb", (ep(1, 40001), ep(2, 40002)), host="someapp"),
    Route("api", (), host="api"),  # no endpoint: 503 for this host
    Route("docs", (ep(3, 40003),), host="docs"),
]


def test_edge_virtual_hosts(tmp_path: Path) -> None:
    res = render(EDGE, EDGE_ROUTES, run_dir=str(tmp_path))
    text = res.text
    assert res.dropped == ()
    # unknown hosts: the catch-all default server answers 503
    default = re.search(r"listen 8088 default_server;.*?\}\s*\}", text, re.S)
    assert default and "return 503" in default.group(0)
    assert "server_name someapp.mywebsite.com;" in text
    assert "server_name docs.mywebsite.com;" in text
    assert "server_name api.mywebsite.com;" in text
    assert upstream_servers(text, "web-lb") == ["127.0.1.1:40001", "127.0.1.2:40002"]
    assert upstream_servers(text, "docs") == ["127.0.1.3:40003"]
    assert "upstream cp_unit_api" not in text
    api_server = re.search(r"server_name api\.mywebsite\.com;(.*?)\n    \}", text, re.S)
    assert api_server and "return 503" in api_server.group(1)
    # vhosts sorted by host
    order = [m.group(1) for m in re.finditer(r"server_name (\S+)\.mywebsite\.com;", text)]
    assert order == sorted(order) == ["api", "docs", "someapp"]
    if HAVE_NGINX:
        r = nginx_test(text, tmp_path)
        assert r.returncode == 0, r.stderr


BAD_ROUTES = {
    "host not a DNS label": Route("bad1", (ep(1),), host="Bad_Host!"),
    "host too long": Route("bad2", (ep(1),), host="a" * 64),
    "host with a dot": Route("bad3", (ep(1),), host="a.b"),
    "no host": Route("bad4", (ep(1),), host=None),
    "unit not a DNS label": Route("Bad Unit", (ep(1),), host="badunit"),
    "expose port out of range": Route("bad5", (ep(1),), host="bad5", port=70000),
    "host taken (later unit name)": Route("zzz", (ep(1),), host="someapp"),
    "host injection attempt": Route("bad6", (ep(1),), host="x; } server { listen 1"),
}


@pytest.mark.parametrize("name", list(BAD_ROUTES))
def test_bad_route_dropped_others_kept(name: str, tmp_path: Path) -> None:
    bad = BAD_ROUTES[name]
    res = render(EDGE, [*EDGE_ROUTES, bad], run_dir=str(tmp_path))
    assert [r for r, _ in res.dropped] == [bad]
    assert res.dropped[0][1]  # a reason
    assert res.text == render(EDGE, EDGE_ROUTES, run_dir=str(tmp_path)).text
    if HAVE_NGINX:
        r = nginx_test(res.text, tmp_path)
        assert r.returncode == 0, r.stderr


def test_bad_endpoints_skipped_and_reported(tmp_path: Path) -> None:
    route = Route(
        "web",
        (ep(1), Endpoint("not-an-ip", 80), Endpoint("127.0.0.1", 0), Endpoint("127.0.0.1", 65536)),
    )
    res = render(LB, [route], run_dir=str(tmp_path))
    assert upstream_servers(res.text, "web") == ["127.0.1.1:32768"]
    assert len(res.skipped_endpoints) == 3
    only_bad = render(LB, [Route("web", (Endpoint("999.1.1.1", 80),))], run_dir=str(tmp_path))
    assert "upstream cp_unit_web" not in only_bad.text
    assert "return 503" in only_bad.text
    if HAVE_NGINX:
        for text in (res.text, only_bad.text):
            r = nginx_test(text, tmp_path)
            assert r.returncode == 0, r.stderr


@pytest.mark.parametrize(
    "proxy",
    [
        ProxySpec(kind="loadbalancer", port=0, target="web"),
        ProxySpec(kind="loadbalancer", port=80, target=None),
        ProxySpec(kind="loadbalancer", port=80, target="Web!"),
        ProxySpec(kind="edge", port=80, domain=None),
        ProxySpec(kind="edge", port=80, domain="bad domain"),
        ProxySpec(kind="edge", port=80, domain="-x.com"),
        ProxySpec(kind="edge", port=18999, domain="x.com"),  # collides with the status port
        ProxySpec(kind="bogus", port=80),  # type: ignore[arg-type]
    ],
)
def test_invalid_proxy_spec_raises(proxy: ProxySpec) -> None:
    with pytest.raises(InvalidProxySpec):
        render(proxy, [])


def test_deterministic_regardless_of_input_order() -> None:
    a = render(EDGE, EDGE_ROUTES)
    b = render(EDGE, list(reversed([Route(r.unit, tuple(reversed(r.endpoints)), r.host) for r in EDGE_ROUTES])))
    assert a.text == b.text
    assert a.config_hash == b.config_hash
    assert render(EDGE, EDGE_ROUTES).text == a.text


def test_hash_is_well_defined() -> None:
    res = render(EDGE, EDGE_ROUTES)
    assert HASH_PLACEHOLDER not in res.text
    assert extract_hash(res.text) == res.config_hash
    assert res.text.count(res.config_hash) == 2  # the marker line and the status location
    assert verify_hash(res.text)
    assert not verify_hash(res.text.replace("keepalive 16", "keepalive 17"))
    other = render(EDGE, EDGE_ROUTES[:2])
    assert other.config_hash != res.config_hash
    assert extract_hash("worker_processes 1;\n") is None


def test_defaults_present() -> None:
    text = render(LB, [Route("web", (ep(1),))]).text
    for needle in [
        "server_names_hash_bucket_size 128;",
        "map $http_upgrade $cp_connection_upgrade",
        "proxy_set_header Upgrade $http_upgrade;",
        "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
        "proxy_set_header X-Forwarded-Proto $scheme;",
        "proxy_set_header X-Forwarded-Host $host;",
        "proxy_next_upstream error timeout;",
        "proxy_connect_timeout 2s;",
        "pid /tmp/cp-nginx.pid;",
        "listen 127.0.0.1:18999;",
        "allow 127.0.0.1;",
        "deny all;",
    ]:
        assert needle in text, needle


def test_listen_address_option(tmp_path: Path) -> None:
    text = render(LB, [Route("web", (ep(1),))], listen_address="127.0.0.1", status_port=19001).text
    assert "listen 127.0.0.1:8080 default_server;" in text
    assert "listen 127.0.0.1:19001;" in text


def test_wire_format_helpers() -> None:
    obj = {
        "metadata": {"name": "web"},
        "endpoints": [
            {"address": "127.0.1.2", "port": 32768, "instance": "web-0", "machine": "m2"},
            {"address": "127.0.1.3"},  # malformed: skipped
            "junk",
        ],
    }
    assert endpoints_from_object(obj) == (Endpoint("127.0.1.2", 32768, "web-0", "m2"),)
    assert endpoints_from_object({"metadata": {"name": "x"}}) == ()
    units = [
        {"metadata": {"name": "web"}, "spec": {"image": "local/web"}},
        {"metadata": {"name": "web-lb"}, "spec": {"proxy": {"kind": "loadbalancer", "target": "web"},
                                                  "expose": {"host": "someapp"}}},
        {"metadata": {"name": "edge"}, "spec": {"proxy": {"kind": "edge", "domain": "mywebsite.com", "port": 80}}},
    ]
    lb = ProxySpec.from_unit(units[1])
    assert lb == ProxySpec(kind="loadbalancer", port=80, target="web")
    assert routes_for(lb, units, {"web": obj}) == [Route("web", (Endpoint("127.0.1.2", 32768, "web-0", "m2"),))]
    edge = ProxySpec.from_unit(units[2])
    assert routes_for(edge, units, {}) == [Route("web-lb", (), host="someapp")]
    with pytest.raises(InvalidProxySpec):
        ProxySpec.from_unit(units[0])
