"""Real nginx processes on loopback, driven by agent.proxy (render + NginxApplier + Debouncer).

Each test runs the host nginx binary (``LocalNginx``) in its own temp folder on free
loopback ports, with tiny aiohttp backends that answer their own name. The edge-proxy
lessons of design/ANCHORS.md are tested here against the real thing: 503 instead of an
empty upstream, a bad route not blocking others, a reload that passes ``nginx -t`` but
does not take (busy ``listen`` port) being detected and rolled back, a restart booting the
last good config, and 50 changes costing at most 2 reloads.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from agent.proxy.apply import NginxApplier
from agent.proxy.debounce import Debouncer
from agent.proxy.render import RenderResult, render, stamp_hash
from agent.proxy.routes import Endpoint, ProxySpec, Route
from agent.proxy.runners import DockerExecNginx, LocalNginx

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
pytestmark = pytest.mark.skipif(not Path(NGINX).exists(), reason="nginx binary not installed")

DOMAIN = "mywebsite.com"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Backends:
    runners: list[web.AppRunner] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)

    async def start(self, name: str) -> Endpoint:
        async def handle(request: web.Request) -> web.Response:
            return web.Response(text=name)

        app = web.Application()
        app.router.add_get("/{tail:.*}", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        self.runners.append(runner)
        self.ports[name] = port
        return Endpoint("127.0.0.1", port, instance=name, machine="m1")

    async def close(self) -> None:
        for r in self.runners:
            await r.cleanup()


@pytest.fixture
async def backends() -> AsyncIterator[Backends]:
    b = Backends()
    try:
        yield b
    finally:
        await b.close()


@dataclass
class Proxy:
    """One proxy instance: a config folder, an applier, a real nginx master."""

    tmp: Path
    spec: ProxySpec
    status_port: int
    nginx: LocalNginx
    applier: NginxApplier

    def render(self, routes: list[Route], spec: ProxySpec | None = None) -> RenderResult:
        return render(
            spec or self.spec,
            routes,
            status_port=self.status_port,
            run_dir=str(self.tmp / "run"),
            listen_address="127.0.0.1",
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.spec.port}/"


@pytest.fixture
async def make_proxy(tmp_path: Path) -> AsyncIterator[Callable[..., asyncio.Future[Proxy]]]:
    started: list[LocalNginx] = []

    async def make(spec: ProxySpec, routes: list[Route] | None = None, *, name: str = "p") -> Proxy:
        tmp = tmp_path / name
        (tmp / "run").mkdir(parents=True, exist_ok=True)
        status_port = free_port()
        conf_dir = tmp / "conf"
        nginx = LocalNginx(conf_dir / "nginx.conf", status_port=status_port, binary=NGINX,
                           log_path=tmp / "nginx.log")
        applier = NginxApplier(conf_dir, nginx, verify_timeout=2.0)
        proxy = Proxy(tmp, spec, status_port, nginx, applier)
        applier.prepare(proxy.render(routes or []).text)
        started.append(nginx)
        await nginx.start()
        return proxy

    try:
        yield make  # type: ignore[misc]
    finally:
        for n in started:
            await n.stop()


async def get(url: str, host: str | None = None) -> tuple[int, str]:
    headers = {"Host": host} if host else {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s:
        async with s.get(url, headers=headers) as r:
            return r.status, await r.text()


def lb_spec() -> ProxySpec:
    return ProxySpec(kind="loadbalancer", port=free_port(), target="web")


# ---------------------------------------------------------------- loadbalancer traffic


async def test_loadbalancer_zero_one_n_endpoints(make_proxy, backends: Backends) -> None:
    p: Proxy = await make_proxy(lb_spec())
    assert (await get(p.url))[0] == 503  # no endpoint: 503, and nginx accepted the config

    b1 = await backends.start("b1")
    res = await p.applier.apply(p.render([Route("web", (b1,))]).text)
    assert res.ok and res.changed, res.reason
    assert await get(p.url) == (200, "b1")

    eps = (b1, await backends.start("b2"), await backends.start("b3"))
    res = await p.applier.apply(p.render([Route("web", eps)]).text)
    assert res.ok, res.reason
    seen = Counter([(await get(p.url))[1] for _ in range(30)])
    assert set(seen) == {"b1", "b2", "b3"}, seen

    # identical config: no reload
    reloads = p.nginx.reload_count
    res = await p.applier.apply(p.render([Route("web", tuple(reversed(eps)))]).text)
    assert res.ok and not res.changed
    assert p.nginx.reload_count == reloads


async def test_dead_backend_is_skipped(make_proxy, backends: Backends) -> None:
    """proxy_next_upstream error: a backend that refuses connections costs no failed request."""
    p: Proxy = await make_proxy(lb_spec())
    b1 = await backends.start("b1")
    dead = Endpoint("127.0.0.1", free_port(), instance="dead")
    res = await p.applier.apply(p.render([Route("web", (b1, dead))]).text)
    assert res.ok, res.reason
    assert [await get(p.url) for _ in range(10)] == [(200, "b1")] * 10


# ---------------------------------------------------------------- edge


async def test_edge_hosts_unknown_host_and_bad_route(make_proxy, backends: Backends) -> None:
    p: Proxy = await make_proxy(ProxySpec(kind="edge", port=free_port(), domain=DOMAIN))
    a, b = await backends.start("app-a"), await backends.start("app-b")
    routes = [
        Route("a", (a,), host="someapp"),
        Route("b", (b,), host="other"),
        Route("empty", (), host="empty"),
        Route("bad", (a,), host="Not_A_Label!"),  # dropped; must not block the others
    ]
    rr = p.render(routes)
    assert [r.unit for r, _ in rr.dropped] == ["bad"]
    res = await p.applier.apply(rr.text)
    assert res.ok, res.reason
    assert await get(p.url, f"someapp.{DOMAIN}") == (200, "app-a")
    assert await get(p.url, f"other.{DOMAIN}") == (200, "app-b")
    assert (await get(p.url, f"empty.{DOMAIN}"))[0] == 503
    assert (await get(p.url, f"unknown.{DOMAIN}"))[0] == 503
    assert (await get(p.url, "example.org"))[0] == 503
    assert (await get(p.url))[0] == 503  # Host: 127.0.0.1:port


async def test_status_location_is_loopback_only_and_matches_hash(make_proxy) -> None:
    p: Proxy = await make_proxy(lb_spec())
    assert await p.nginx.fetch_hash() == p.applier.current_hash
    # the public port does not serve the hash
    status, body = await get(p.url + "__cp/config-hash")
    assert p.applier.current_hash not in body


# ---------------------------------------------------------------- failure handling


async def test_refused_by_nginx_t_leaves_live_config(make_proxy, backends: Backends) -> None:
    p: Proxy = await make_proxy(lb_spec())
    b1 = await backends.start("b1")
    assert (await p.applier.apply(p.render([Route("web", (b1,))]).text)).ok
    good = p.applier.current_hash
    bad_text, _ = stamp_hash(
        p.render([Route("web", (b1,))]).text.replace(good or "", "@@CP_CONFIG_HASH@@")
        .replace("server_tokens off;", "no_such_directive on;")
    )
    reloads = p.nginx.reload_count
    res = await p.applier.apply(bad_text)
    assert not res.ok and not res.rolled_back
    assert "nginx -t" in res.reason and "no_such_directive" in res.reason
    assert p.nginx.reload_count == reloads  # never reloaded
    assert res.config_hash == good
    assert await get(p.url) == (200, "b1")
    # the same bad config again is refused from memory, without running nginx -t
    res2 = await p.applier.apply(bad_text)
    assert not res2.ok and "failed before" in res2.reason


async def test_busy_port_reload_detected_rolled_back_and_restart_boots_last_good(
    make_proxy, backends: Backends
) -> None:
    p: Proxy = await make_proxy(lb_spec())
    b1 = await backends.start("b1")
    good = p.render([Route("web", (b1,))])
    assert (await p.applier.apply(good.text)).ok
    assert await get(p.url) == (200, "b1")

    with socket.socket() as holder:  # another process's socket on the port the new config wants
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        busy = holder.getsockname()[1]
        b2 = await backends.start("b2")
        bad = p.render([Route("web", (b2,))], spec=ProxySpec(kind="loadbalancer", port=busy, target="web"))
        p.applier.verify_timeout = 1.0
        res = await p.applier.apply(bad.text)
        assert not res.ok, "nginx -s reload 'succeeded' but the new config never served"
        assert res.rolled_back
        assert "hash" in res.reason
        assert res.config_hash == good.config_hash
        assert p.applier.current_hash == good.config_hash
        # the old config is still serving, on disk and in nginx
        assert await get(p.url) == (200, "b1")
        assert p.applier.conf_path.read_text() == good.text
        assert p.applier.last_good_path.read_text() == good.text
        assert "bind()" in (p.tmp / "nginx.log").read_text()

    # nginx still takes later good updates (the master may still be retrying bind() for ~2 s)
    p.applier.verify_timeout = 6.0
    newer = p.render([Route("web", (b2,))])
    res = await p.applier.apply(newer.text)
    assert res.ok, res.reason
    assert await get(p.url) == (200, "b2")

    # a restart after an interrupted update (bad text left in nginx.conf) boots the last good config
    await p.nginx.stop()
    p.applier.conf_path.write_text(bad.text)
    fresh = NginxApplier(p.applier.conf_dir, p.nginx)
    fresh.prepare(p.render([]).text)
    assert p.applier.conf_path.read_text() == newer.text
    await p.nginx.start()
    assert await p.nginx.fetch_hash() == newer.config_hash
    assert await get(p.url) == (200, "b2")


# ---------------------------------------------------------------- debounce


async def test_burst_of_50_changes_costs_at_most_2_reloads(make_proxy, backends: Backends) -> None:
    p: Proxy = await make_proxy(lb_spec())
    pool = [await backends.start(f"b{i}") for i in range(4)]
    state: list[Endpoint] = []
    results = []

    async def reconcile() -> None:
        results.append(await p.applier.apply(p.render([Route("web", tuple(state))]).text))

    d = Debouncer(reconcile, quiet=0.15, max_wait=1.0)
    before = p.nginx.reload_count
    for i in range(50):  # instances flap in and out of the endpoints for ~0.25 s
        ep = pool[i % len(pool)]
        if ep in state:
            state.remove(ep)
        else:
            state.append(ep)
        d.poke()
        await asyncio.sleep(0.005)
    await asyncio.wait_for(d.flush(), 10)
    await d.close()
    assert 1 <= p.nginx.reload_count - before <= 2, p.nginx.reload_count - before
    assert all(r.ok for r in results), results
    final = {e.instance for e in state}
    assert final == {"b0", "b1"}  # 50 toggles over 4 backends: b0, b1 toggled 13 times, b2, b3 12
    seen = {(await get(p.url))[1] for _ in range(20)}
    assert seen == final


# ---------------------------------------------------------------- Docker


def _image_exists(name: str) -> bool:
    import subprocess

    if not shutil.which("docker"):
        return False
    r = subprocess.run(["docker", "image", "inspect", name], capture_output=True, timeout=20)
    return r.returncode == 0


@pytest.mark.docker
async def test_docker_exec_nginx_applies_and_rolls_back(tmp_path: Path, backends: Backends) -> None:
    if not _image_exists("local/nginx:latest"):
        pytest.skip("local/nginx:latest not built (deploy/images/build-local)")
    import aiodocker

    conf_dir = tmp_path / "conf"
    status_port, port = free_port(), free_port()
    spec = ProxySpec(kind="loadbalancer", port=port, target="web")

    def rend(routes: list[Route], s: ProxySpec = spec) -> RenderResult:
        # host networking: the proxy reaches backends on the machine's loopback addresses
        return render(s, routes, status_port=status_port, listen_address="127.0.0.1")

    docker = aiodocker.Docker()
    container = None
    try:
        runner = DockerExecNginx(docker, "", host_dir=conf_dir, status_port=status_port)
        applier = NginxApplier(conf_dir, runner, verify_timeout=3.0)
        applier.prepare(rend([]).text)
        container = await docker.containers.create_or_replace(
            name=f"cp-test-proxy-{port}",
            config={
                "Image": "local/nginx:latest",
                "Cmd": ["nginx", "-c", "/etc/cp-nginx/nginx.conf", "-g", "daemon off;"],
                "HostConfig": {"NetworkMode": "host", "Binds": [f"{conf_dir}:/etc/cp-nginx"]},
                "Labels": {"cp.test": "proxy"},
            },
        )
        await container.start()
        runner.container = container.id
        for _ in range(100):
            if await runner.fetch_hash() == applier.current_hash:
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("nginx container never served its initial config")
        assert (await get(f"http://127.0.0.1:{port}/"))[0] == 503

        b1 = await backends.start("b1")
        res = await applier.apply(rend([Route("web", (b1,))]).text)
        assert res.ok, res.reason
        assert await get(f"http://127.0.0.1:{port}/") == (200, "b1")

        with socket.socket() as holder:
            holder.bind(("127.0.0.1", 0))
            holder.listen(1)
            bad = rend([Route("web", (b1,))], ProxySpec(kind="loadbalancer", port=holder.getsockname()[1],
                                                         target="web"))
            res = await applier.apply(bad.text)
            assert not res.ok and res.rolled_back, res
        assert await get(f"http://127.0.0.1:{port}/") == (200, "b1")
        assert runner.reload_count >= 2
    finally:
        if container is not None:
            await container.delete(force=True)
        await docker.close()
