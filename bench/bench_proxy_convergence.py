"""How long from an endpoint change until the real nginx routes to the new backend?

Why this exists: agent/proxy adds work on top of a bare ``nginx -s reload`` (render,
``nginx -t`` on a staged file, atomic swap, the config-hash proof, waiting for the old
workers to retire). This measures what that costs, side by side in one run against the
baseline of writing the file by hand and running ``nginx -s reload`` (machines here are
noisy: compare the ratios, not absolute numbers). No asserts.

Each run flips a loadbalancer's single endpoint between two aiohttp backends (A <-> B)
on loopback and times:

* ``first-new``: until the first request through nginx is answered by the new backend
  (both paths; the baseline cannot know more than this);
* ``apply()``: until ``NginxApplier.apply`` returns, i.e. the new hash is served AND
  the old workers stopped accepting (nginx retires them ~100 ms after the new ones start);
* ``debounced``: the agent's real path, a ``Debouncer.poke()`` (quiet 150 ms) then apply.

Usage: .venv/bin/python bench/bench_proxy_convergence.py [--runs 50]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import statistics
import tempfile
import time
from pathlib import Path

from aiohttp import web

from agent.proxy.apply import NginxApplier
from agent.proxy.debounce import Debouncer
from agent.proxy.render import render
from agent.proxy.routes import Endpoint, ProxySpec, Route
from agent.proxy.runners import LocalNginx

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def backend(name: str) -> tuple[web.AppRunner, Endpoint]:
    async def handle(request: web.Request) -> web.Response:
        return web.Response(text=name)

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, Endpoint("127.0.0.1", port, instance=name)


async def get_body(port: int) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET / HTTP/1.0\r\nHost: bench\r\n\r\n")
        data = await reader.read(65536)
    finally:
        writer.close()
    return data.partition(b"\r\n\r\n")[2].decode()


async def wait_for_body(port: int, want: str, started: float, limit_s: float = 5.0) -> float:
    for _ in range(100_000):
        if await get_body(port) == want:
            return time.perf_counter() - started
        if time.perf_counter() - started > limit_s:
            break
        await asyncio.sleep(0.001)
    return float("nan")


def stats(xs: list[float]) -> str:
    xs = sorted(x for x in xs if x == x)
    if not xs:
        return "no data"
    p99 = xs[min(len(xs) - 1, round(0.99 * (len(xs) - 1)))]
    return f"median {statistics.median(xs) * 1000:7.1f} ms   p99 {p99 * 1000:7.1f} ms   (n={len(xs)})"


async def main(runs: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="cp-bench-proxy-"))
    (tmp / "run").mkdir()
    status_port, port = free_port(), free_port()
    spec = ProxySpec(kind="loadbalancer", port=port, target="web")
    ra, a = await backend("A")
    rb, b = await backend("B")

    def text(ep: Endpoint) -> str:
        return render(spec, [Route("web", (ep,))], status_port=status_port, run_dir=str(tmp / "run"),
                      listen_address="127.0.0.1").text

    nginx = LocalNginx(tmp / "conf" / "nginx.conf", status_port=status_port, binary=NGINX,
                       log_path=tmp / "nginx.log")
    applier = NginxApplier(tmp / "conf", nginx, verify_timeout=5.0)
    applier.prepare(text(a))
    await nginx.start()
    current = a

    base_first: list[float] = []
    ours_first: list[float] = []
    ours_apply: list[float] = []
    debounced: list[float] = []
    failures = 0

    async def flip() -> Endpoint:
        return b if current is a else a

    try:
        for _ in range(runs):
            # --- baseline: write by hand + nginx -s reload
            new = await flip()
            t0 = time.perf_counter()
            applier.conf_path.write_text(text(new))
            proc = await asyncio.create_subprocess_exec(NGINX, "-e", "stderr", "-c", str(applier.conf_path),
                                                        "-s", "reload", stderr=asyncio.subprocess.DEVNULL)
            await proc.wait()
            base_first.append(await wait_for_body(port, new.instance, t0))
            current = new
            await asyncio.sleep(0.15)  # let the old workers retire before the next change
            # keep the applier's idea of the live config in step with the hand-written one
            applier._good_text = text(current)  # noqa: SLF001 - bench bookkeeping only

            # --- ours: render + apply (nginx -t, swap, reload, hash proof, settle)
            new = await flip()
            t0 = time.perf_counter()
            first = asyncio.create_task(wait_for_body(port, new.instance, t0))
            res = await applier.apply(text(new))
            ours_apply.append(time.perf_counter() - t0)
            ours_first.append(await first)
            failures += not res.ok
            current = new
            await asyncio.sleep(0.05)

            # --- ours through the debouncer (what the agent main loop does)
            new = await flip()
            target = new

            async def reconcile(ep: Endpoint = target) -> None:
                await applier.apply(text(ep))

            d = Debouncer(reconcile, quiet=0.15, max_wait=1.0)
            t0 = time.perf_counter()
            d.poke()
            debounced.append(await wait_for_body(port, new.instance, t0))
            await d.flush()
            await d.close()
            current = new
            await asyncio.sleep(0.05)
    finally:
        await nginx.stop()
        await ra.cleanup()
        await rb.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"proxy convergence, {runs} runs each, endpoint flipped between two loopback backends")
    print(f"  baseline write + nginx -s reload, first-new : {stats(base_first)}")
    print(f"  agent.proxy apply(),             first-new : {stats(ours_first)}")
    print(f"  agent.proxy apply() returns (proven+settled): {stats(ours_apply)}")
    print(f"  debounced (quiet 150 ms) poke -> first-new  : {stats(debounced)}")
    mb, mo = statistics.median(base_first), statistics.median(ours_first)
    print(f"  ratio first-new ours/baseline (median): {mo / mb:.2f}x   apply failures: {failures}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=50)
    asyncio.run(main(ap.parse_args().runs))
