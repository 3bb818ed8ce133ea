"""End to end into etcd: how fast does the control plane bind 10,000 replicas on 1,000 machines?

    .venv/bin/python bench/bench_scheduler_e2e.py [--machines 1000] [--units 100] [--replicas 100]

Setup, all real: a fresh single-member etcd (tests/etcd_fixture.py) and ``cp-apiserver`` as a
subprocess (``python -m controlplane.api.server``, its own process and core, the way it runs in
production), with a token file of 1,000 node tokens. Machines register through the real
heartbeat endpoint (each heartbeat grants the machine's lease, attaches its presence key and
creates its Machine object; this script keeps them alive), so the leader sees 1,000 Ready,
present machines. Then ``--units`` units of ``--replicas`` replicas are POSTed through the API
(16 in flight) and the clock runs until a watch on instances has seen every replica bound
(``spec.machine`` set). A final list checks the count and that no unit has two copies on one
machine (spread: required).

The figure: bindings/s = replicas / (first POST -> last binding seen on the watch).
The baseline, measured in the same run on the same etcd before the API server starts: raw
etcd transactions (aetcd, compare create_revision == 0 then put, as the store's ``create``
does) of values the size of one bound Instance object, 128 in flight. That is the ceiling:
each binding is one such transaction today. Also printed, for the way forward: the same
creates 64 to a transaction. Goal: >= 5,000 bindings/s (Nomad's C1M
published ~3,750/s on five servers). Prints figures; no asserts.

``--profile FILE`` runs the API server under ``py-spy record`` (pip install py-spy): a flame graph
SVG, or collapsed stacks when FILE ends in ``.txt``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

import aetcd
import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from apiserver_fixture import ApiServer  # noqa: E402
from etcd_fixture import EtcdServer  # noqa: E402

ADMIN = {"Authorization": "Bearer admin-token"}


def instance_size_value(n: int = 100) -> bytes:
    """A value shaped and sized like one bound Instance as the registry stores it."""
    from controlplane.model import new_instance
    from controlplane.registry import encode

    unit = {"metadata": {"name": "u042", "generation": 1, "labels": {}},
            "spec": {"image": "local/web:latest", "replicas": n, "placement": {}}}
    obj = new_instance(unit, "u042-42", 42, "m0421")
    obj["metadata"].update({"uid": "7f0c2e3a-1d7b-4c55-9e7e-3f1a2b3c4d5e", "creationTimestamp": "2025-01-01T00:00:00Z",
                            "generation": 1})
    return encode(obj)


async def etcd_baseline(url: str, count: int, value: bytes, in_flight: int = 128, batch: int = 1) -> float:
    """Creates/s: ``count`` create-if-absent puts, ``batch`` of them per transaction."""
    host, _, port = url.removeprefix("http://").rpartition(":")
    client = aetcd.Client(host=host, port=int(port))
    sem = asyncio.Semaphore(in_flight)
    tx = client.transactions

    async def one(first: int) -> None:
        keys = [f"/baseline/{batch}/u{i // 100:03}-{i % 100}".encode() for i in range(first, min(first + batch, count))]
        async with sem:
            ok, _ = await client.transaction(compare=[tx.create(k) == 0 for k in keys],
                                             success=[tx.put(k, value) for k in keys], failure=[])
            assert ok

    await client.connect()
    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(0, count, batch)))
    elapsed = time.perf_counter() - started
    await client.delete_prefix(b"/baseline/")
    await client.close()
    return count / elapsed


async def metric(session: aiohttp.ClientSession, url: str, name: str) -> float:
    async with session.get(url + "/metrics", headers=ADMIN) as resp:
        text = await resp.text()
    values = [float(v) for v in re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.e+]+)$", text, re.M)]
    return sum(values)


async def run(args: argparse.Namespace) -> None:
    total = args.units * args.replicas
    value = instance_size_value(args.replicas)
    with EtcdServer() as etcd:
        baseline = await etcd_baseline(etcd.url, total, value)
        print(f"etcd baseline: {baseline:,.0f} txn creates/s ({total:,} values of {len(value)} B, 128 in flight)")
        batched = await etcd_baseline(etcd.url, total, value, in_flight=8, batch=64)
        print(f"etcd, batched (not the baseline; what batching writes could reach): {batched:,.0f} creates/s "
              "(64 creates per txn, 8 txns in flight)")

        machines = [f"m{i:04}" for i in range(args.machines)]
        api = ApiServer(etcd.url, "/bench", machine_ttl=args.machine_ttl)
        lines = ["admin-token,admin,admin"] + [f"node-{m}-token,node-{m},node,{m}" for m in machines]
        api.token_file.write_text("\n".join(lines) + "\n")
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        api.start()
        profiler = None
        try:
            if args.profile:
                profiler = await asyncio.create_subprocess_exec(
                    spy, "record", "--pid", str(api.proc.pid), "--rate", "50", "--output", args.profile,
                    "--nonblocking", "--format", "raw" if args.profile.endswith(".txt") else "flamegraph", stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
            conn = aiohttp.TCPConnector(limit=64)
            async with aiohttp.ClientSession(connector=conn) as session:
                sem = asyncio.Semaphore(32)

                async def beat(m: str) -> None:
                    body = {"address": f"10.{int(m[1:]) // 250}.{int(m[1:]) % 250}.1",
                            "capacity": {"cpu": 64, "memoryMB": 262144}, "agentVersion": "bench",
                            "labels": {"zone": "abcde"[int(m[1:]) % 5]}}
                    async with sem, session.post(f"{api.url}/api/v1/machines/{m}/heartbeat", json=body,
                                                 headers={"Authorization": f"Bearer node-{m}-token"}) as resp:
                        assert resp.status == 200, await resp.text()

                started = time.perf_counter()
                await asyncio.gather(*(beat(m) for m in machines))
                print(f"machines: {args.machines:,} registered through the heartbeat endpoint in "
                      f"{time.perf_counter() - started:.1f} s")

                async def keep_alive() -> None:
                    while True:
                        await asyncio.sleep(args.machine_ttl / 3)
                        await asyncio.gather(*(beat(m) for m in machines))

                alive = asyncio.create_task(keep_alive())
                while await metric(session, api.url, "cp_leader") != 1:  # noqa: ASYNC110 - another process
                    await asyncio.sleep(0.1)
                while await metric(session, api.url, "cp_machines") < args.machines:  # noqa: ASYNC110
                    await asyncio.sleep(0.1)

                async with session.get(f"{api.url}/api/v1/instances", headers=ADMIN) as resp:
                    rv = (await resp.json())["metadata"]["resourceVersion"]
                bound: set[str] = set()
                done = asyncio.Event()
                last_bound = 0.0

                async def follow() -> None:
                    nonlocal last_bound
                    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
                    async with session.get(f"{api.url}/api/v1/instances",
                                           params={"watch": "1", "resourceVersion": rv},
                                           headers=ADMIN, timeout=timeout) as resp:
                        async for line in resp.content:
                            if not line.strip():
                                continue
                            event = json.loads(line)
                            obj = event.get("object") or {}
                            if event["type"] in ("ADDED", "MODIFIED") and (obj.get("spec") or {}).get("machine"):
                                bound.add(obj["metadata"]["name"])
                                if len(bound) == total:
                                    last_bound = time.perf_counter()
                                    done.set()
                                    return

                watcher = asyncio.create_task(follow())
                await asyncio.sleep(0.2)
                usem = asyncio.Semaphore(16)

                async def create(u: int) -> None:
                    body = {"apiVersion": "v1", "kind": "Unit", "metadata": {"name": f"u{u:03}"},
                            "spec": {"image": "local/web:latest", "replicas": args.replicas,
                                     "resources": {"cpu": 0.1, "memoryMB": 64}}}
                    async with usem, session.post(f"{api.url}/api/v1/units", json=body, headers=ADMIN) as resp:
                        assert resp.status == 201, await resp.text()

                started = time.perf_counter()
                await asyncio.gather(*(create(u) for u in range(args.units)))
                posted = time.perf_counter() - started
                try:
                    await asyncio.wait_for(done.wait(), timeout=args.timeout)
                except TimeoutError:
                    print(f"TIMEOUT: {len(bound):,}/{total:,} bound after {args.timeout} s")
                    watcher.cancel()
                    return
                elapsed = last_bound - started
                alive.cancel()

                async with session.get(f"{api.url}/api/v1/instances", headers=ADMIN) as resp:
                    items = (await resp.json())["items"]
                per_unit: dict[str, set[str]] = {}
                doubled = 0
                for inst in items:
                    seen = per_unit.setdefault(inst["spec"]["unit"], set())
                    doubled += inst["spec"]["machine"] in seen
                    seen.add(inst["spec"]["machine"])
                rate = total / elapsed
                print(f"e2e: {total:,} replicas ({args.units} units x {args.replicas}) on {args.machines:,} machines "
                      f"bound in {elapsed:.2f} s (units POSTed in {posted:.2f} s): {rate:,.0f} bindings/s")
                print(f"check: {len(items):,} instances listed, {sum(1 for i in items if i['spec']['machine']):,} bound, "
                      f"{doubled} unit copies sharing a machine")
                print(f"ratio: {rate / baseline:.2f} of the raw etcd txn rate ({baseline:,.0f}/s); "
                      f"goal 5,000/s; Nomad C1M ~3,750/s")
        finally:
            if profiler is not None:
                profiler.send_signal(2)
                await profiler.wait()
            api.stop()
            if args.server_log:
                shutil.copyfile(api.log_path, args.server_log)
            shutil.rmtree(api.dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--machines", type=int, default=1000)
    parser.add_argument("--units", type=int, default=100)
    parser.add_argument("--replicas", type=int, default=100)
    parser.add_argument("--machine-ttl", type=int, default=30)
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--profile", metavar="SVG", help="record the API server with py-spy (SVG, or collapsed stacks for .txt)")
    parser.add_argument("--server-log", metavar="FILE", help="keep a copy of the API server's log")
    args = parser.parse_args()
    os.environ.setdefault("CP_LOG_LEVEL", "WARNING")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
