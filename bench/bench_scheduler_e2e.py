"""End to end into etcd: how fast does the control plane bind 10,000 replicas on 1,000 machines?

    .venv/bin/python bench/bench_scheduler_e2e.py [--machines 1000] [--units 100] [--replicas 100] [--workers N]

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
The baseline, measured in the same run on the same etcd before the API server starts: batched
etcd transactions (aetcd; per key compare create_revision == 0, then put, as the store's
``create_many`` does) of values the size of one bound Instance object, 128 creates per
transaction (etcd's default --max-txn-ops), 8 transactions in flight. That is the ceiling of a
writer that batches. Also printed: one create per transaction, 128 in flight (the baseline
before the writer batched). Goal: >= 0.3 of the batched rate (Nomad's C1M published ~3,750/s on
five servers). Also printed: the CPU seconds of the API server, etcd and this script over the
measured window, and the leader's passes in it. Prints figures; no asserts.

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
from _env import SERVER, ApiServer, CpuMeter, EtcdServer

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


def metric(text: str, name: str) -> float:
    values = [float(v) for v in re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.e+]+)$", text, re.M)]
    return sum(values)


async def leader_metrics(url: str) -> str:
    """The leader's /metrics (with --workers, a new connection each try until the leading worker answers)."""
    while True:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
            async with session.get(url + "/metrics", headers=ADMIN) as resp:
                text = await resp.text()
        if metric(text, "cp_leader") == 1:
            return text
        await asyncio.sleep(0.05)


async def run(args: argparse.Namespace) -> None:
    total = args.units * args.replicas
    value = instance_size_value(args.replicas)
    with EtcdServer() as etcd:
        single = await etcd_baseline(etcd.url, total, value)
        print(f"etcd, one create per txn (not the baseline): {single:,.0f} creates/s "
              f"({total:,} values of {len(value)} B, 128 in flight)")
        baseline = await etcd_baseline(etcd.url, total, value, in_flight=8, batch=128)
        print(f"etcd baseline, batched: {baseline:,.0f} creates/s (128 creates per txn, 8 txns in flight)")

        machines = [f"m{i:04}" for i in range(args.machines)]
        workers = ["--workers", str(args.workers)] if args.workers > 1 else []
        api = ApiServer(etcd.url, "/bench", machine_ttl=args.machine_ttl, extra_args=workers)
        lines = ["admin-token,admin,admin"] + [f"node-{m}-token,node-{m},node,{m}" for m in machines]
        api.token_file.write_text("\n".join(lines) + "\n")
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        api.start()
        profiler = None
        try:
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
                while metric(await leader_metrics(api.url), "cp_machines") < args.machines:  # noqa: ASYNC110
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

                if args.profile:  # the measured window only (py-spy takes ~1 s to attach)
                    profiler = await asyncio.create_subprocess_exec(
                        spy, "record", "--pid", str(api.proc.pid), "--subprocesses", "--rate", "250",
                        "--output", args.profile, "--nonblocking",
                        "--format", "raw" if args.profile.endswith(".txt") else "flamegraph",
                        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
                    await asyncio.sleep(1.5)
                before = await leader_metrics(api.url)
                assert api.proc is not None and etcd.members[0].process is not None
                cpu = CpuMeter(**{SERVER: api.proc.pid, "etcd": etcd.members[0].process.pid})
                cpu.start()
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
                cpu.stop()
                if profiler is not None:
                    profiler.send_signal(2)
                    await profiler.wait()
                    profiler = None
                alive.cancel()
                after = await leader_metrics(api.url)
                passes = [metric(t, "cp_scheduler_attempt_duration_seconds_count") for t in (before, after)]
                pass_seconds = [metric(t, "cp_scheduler_attempt_duration_seconds_sum") for t in (before, after)]

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
                print(f"ratio: {rate / baseline:.2f} of the batched etcd rate ({baseline:,.0f}/s; goal >= 0.3), "
                      f"{rate / single:.2f} of one create per txn ({single:,.0f}/s); Nomad C1M ~3,750/s")
                print(f"leader: {passes[1] - passes[0]:.0f} passes to the last binding (or just after), "
                      f"{pass_seconds[1] - pass_seconds[0]:.2f} s in them (plan + writes)")
                print(f"CPU per 1,000 bindings: {cpu.per_thousand(total)}")
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
    parser.add_argument("--workers", type=int, default=1, help="cp-apiserver --workers N")
    parser.add_argument("--profile", metavar="SVG", help="record the API server with py-spy (SVG, or collapsed stacks for .txt)")
    parser.add_argument("--server-log", metavar="FILE", help="keep a copy of the API server's log")
    args = parser.parse_args()
    os.environ.setdefault("CP_LOG_LEVEL", "WARNING")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
