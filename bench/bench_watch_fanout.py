"""Watch fan-out: N open watches on units (default 1,000, one client process), one update, time
until every watcher has the event: p50/p99/max (goal p99 < 250 ms). Baseline: the same update
with 1 watcher, same server, same run.

    python bench/bench_watch_fanout.py [--watchers 1000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

import aiohttp
from _env import HEADERS, cluster, raise_fd_limit, unit_body


async def fanout(url: str, watchers: int, rounds: int) -> list[float]:
    """Seconds from sending each update until each watcher read its event (all rounds, all watchers)."""
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=HEADERS) as session:
        async with session.get(f"{url}/api/v1/units/web") as resp:
            rv = (await resp.json())["metadata"]["resourceVersion"]
        responses = []
        for start in range(0, watchers, 100):  # open in batches so the listen backlog keeps up
            batch = [session.get(f"{url}/api/v1/units?watch=1&resourceVersion={rv}&fieldSelector=metadata.name%3Dweb")
                     for _ in range(start, min(watchers, start + 100))]
            responses += await asyncio.gather(*(r.__aenter__() for r in batch))
        assert all(r.status == 200 for r in responses)
        await asyncio.sleep(0.5)
        for round_ in range(rounds):
            got: list[float] = []

            async def read(resp: aiohttp.ClientResponse, got: list[float] = got) -> None:
                while True:
                    line = await resp.content.readline()
                    if json.loads(line)["type"] == "MODIFIED":
                        got.append(time.perf_counter())
                        return

            readers = [asyncio.create_task(read(r)) for r in responses]
            await asyncio.sleep(0.05)
            sent = time.perf_counter()
            patch = json.dumps({"metadata": {"labels": {"round": str(round_)}}})
            async with session.patch(f"{url}/api/v1/units/web", data=patch,
                                     headers={"Content-Type": "application/merge-patch+json"}) as resp:
                assert resp.status == 200, await resp.text()
            await asyncio.wait_for(asyncio.gather(*readers), 30)
            latencies += [t - sent for t in got]
            await asyncio.sleep(0.2)
        for r in responses:
            r.close()
    return latencies


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def describe(values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return (f"p50 {statistics.median(ms):.1f} ms, p99 {pct(ms, 0.99):.1f} ms, max {max(ms):.1f} ms "
            f"({len(ms)} deliveries)")


async def run(watchers: int, rounds: int) -> None:
    raise_fd_limit(watchers * 2 + 1024)
    with cluster() as (_etcd, api):
        async with aiohttp.ClientSession(headers=HEADERS) as session:
            async with session.post(f"{api.url}/api/v1/units", data=json.dumps(unit_body("web"))) as resp:
                assert resp.status == 201
        baseline = await fanout(api.url, 1, rounds)
        many = await fanout(api.url, watchers, rounds)
    print(f"{watchers} watchers, one update, {rounds} rounds: {describe(many)}  (goal p99 < 250 ms)")
    print(f"baseline 1 watcher:                    {describe(baseline)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--watchers", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(run(args.watchers, args.rounds))


if __name__ == "__main__":
    main()
