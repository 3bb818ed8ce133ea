"""Create throughput: 50 concurrent clients POSTing units through cp-apiserver, against raw aetcd
puts of the same object bytes with 50 in flight, on the same etcd in the same run. Prints
creates/s of each and the ratio (goal >= 0.3).

    python bench/bench_create.py [--count 3000] [--concurrency 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from urllib.parse import urlsplit

import aetcd
import aiohttp
from _env import HEADERS, cluster, unit_body

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


async def run(count: int, concurrency: int) -> None:
    with cluster() as (etcd, api):
        ours = await through_api(api.url, count, concurrency)
        # the bytes the API stored for one of them: same size and shape
        async with aiohttp.ClientSession(headers=HEADERS) as session:
            async with session.get(f"{api.url}/api/v1/units/u000000") as resp:
                value = encode(await resp.json())
        baseline = await raw_etcd(etcd.url, value, count, concurrency)
    print(f"{count} creates, {concurrency} concurrent clients, object {len(value)} bytes")
    print(f"cp-apiserver POST /api/v1/units: {ours:,.0f} creates/s")
    print(f"baseline raw aetcd put:          {baseline:,.0f} puts/s")
    print(f"ratio: {ours / baseline:.2f} (goal >= 0.3)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    asyncio.run(run(args.count, args.concurrency))


if __name__ == "__main__":
    main()
