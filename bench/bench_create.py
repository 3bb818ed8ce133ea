"""Create throughput: 50 concurrent clients POSTing units through cp-apiserver, against raw aetcd
puts of the same object bytes with 50 in flight, on the same etcd in the same run. Prints
creates/s of each and the ratio (goal >= 0.3).

    python bench/bench_create.py [--count 3000] [--concurrency 50] [--workers N] [--profile FILE]

``--workers N`` runs ``cp-apiserver --workers N`` (N processes sharing the port). ``--profile FILE``
records the API server (every worker) with py-spy during the API phase: a flame graph SVG, or
collapsed stacks when FILE ends in ``.txt``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import time
from collections.abc import Awaitable
from pathlib import Path
from urllib.parse import urlsplit

import aetcd
import aiohttp
from _env import HEADERS, SERVER, ApiServer, CpuMeter, EtcdServer, unit_body

from controlplane.registry import encode


async def through_api(url: str, count: int, concurrency: int) -> float:
    names = iter(range(count))
    bodies = {i: json.dumps(unit_body(f"u{i:06d}")).encode() for i in range(count)}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), headers=HEADERS) as session:

        async def client() -> None:
            for i in names:
                async with session.post(f"{url}/api/v1/units", data=bodies[i]) as resp:
                    await resp.read()
                    if resp.status != 201:
                        raise RuntimeError(f"create answered {resp.status}")

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        return count / (time.perf_counter() - started)


async def raw_etcd(etcd_url: str, value: bytes, count: int, concurrency: int) -> float:
    parts = urlsplit(etcd_url)
    names = iter(range(count))
    async with aetcd.Client(host=parts.hostname or "127.0.0.1", port=parts.port or 2379) as client:

        async def worker() -> None:
            for i in names:
                await client.put(f"/bench-raw/units/u{i:06d}".encode(), value)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return count / (time.perf_counter() - started)


async def profiled(api: ApiServer, profile: str | None, call: Awaitable[float]) -> float:
    """``call``'s result, with py-spy recording the server (and its workers) meanwhile when asked."""
    if not profile or api.proc is None:
        return await call
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    profiler = await asyncio.create_subprocess_exec(
        spy, "record", "--pid", str(api.proc.pid), "--subprocesses", "--rate", "100", "--output", profile,
        "--nonblocking", "--format", "raw" if profile.endswith(".txt") else "flamegraph",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    await asyncio.sleep(1.0)  # py-spy attaches
    try:
        return await call
    finally:
        profiler.send_signal(2)
        await profiler.wait()


async def run(count: int, concurrency: int, *, workers: int = 1, profile: str | None = None) -> None:
    extra = ["--workers", str(workers)] if workers > 1 else []
    with EtcdServer() as etcd, ApiServer(etcd.url, "/bench", controllers=False, extra_args=extra) as api:
        assert api.proc is not None and etcd.members[0].process is not None
        etcd_pid = etcd.members[0].process.pid
        api_cpu = CpuMeter(**{SERVER: api.proc.pid, "etcd": etcd_pid})
        api_cpu.start()
        ours = await profiled(api, profile, through_api(api.url, count, concurrency))
        api_cpu.stop()
        # the bytes the API stored for one of them: same size and shape
        async with aiohttp.ClientSession(headers=HEADERS) as session:
            async with session.get(f"{api.url}/api/v1/units/u000000") as resp:
                value = encode(await resp.json())
        raw_cpu = CpuMeter(etcd=etcd_pid)
        raw_cpu.start()
        baseline = await raw_etcd(etcd.url, value, count, concurrency)
        raw_cpu.stop()
    print(f"{count} creates, {concurrency} concurrent clients, object {len(value)} bytes, {workers} API worker(s)")
    print(f"cp-apiserver POST /api/v1/units: {ours:,.0f} creates/s")
    print(f"baseline raw aetcd put:          {baseline:,.0f} puts/s")
    print(f"ratio: {ours / baseline:.2f} (goal >= 0.3)")
    print(f"CPU per 1,000 creates through the API: {api_cpu.per_thousand(count)}")
    print(f"CPU per 1,000 raw puts:                {raw_cpu.per_thousand(count)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--workers", type=int, default=1, help="cp-apiserver --workers N")
    parser.add_argument("--profile", metavar="FILE", help="py-spy the API server: SVG, or collapsed stacks for .txt")
    args = parser.parse_args()
    asyncio.run(run(args.count, args.concurrency, workers=args.workers, profile=args.profile))


if __name__ == "__main__":
    main()
