"""How long from a machine's last heartbeat until all its instances are bound elsewhere?

    .venv/bin/python bench/bench_failover.py [--runs 20] [--ttl 2]

A fresh etcd and a real ``cp-apiserver`` subprocess with ``--machine-ttl TTL``; six machines
heartbeat every 0.5 s through the API (tests/machine_helper.py, no agents or Docker) and a unit
of 12 replicas (spread: preferred) puts two instances on each. Each run stops one machine's
heartbeats (round robin) and polls the instance list every 20 ms until no instance is bound to
it and every instance is bound; the time counts from that machine's last acknowledged
heartbeat, because that is when its lease's TTL starts running. Then the machine heartbeats
again and is Ready before the next run (nothing moves back: no rebalancing).

Baselines: the TTL itself (the ratio printed), and, measured in the same run on the same etcd,
etcd's own lease expiry: 20 leases of the same TTL with a key each, refreshed once, timed from
the refresh until a watch sees the key's DELETE. What the control plane itself adds is timed
directly: a watch of this script on the presence keys notes when etcd deletes the lost
machine's key; from there to all its instances bound elsewhere (the leader's presence watch,
one pass that marks the machine NotReady and rebinds, the writes, and this script's 20 ms poll).
Heartbeats every 0.5 s beat in step with etcd's 500 ms expiry check, so the TTL overshoot of
the runs sits at one phase of that check; the etcd baseline spreads its refreshes over it.
Prints figures; no asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import _env  # noqa: E402,F401  (on import: SIGTERM tears the servers down)
from apiserver_fixture import ApiServer  # noqa: E402
from etcd_fixture import EtcdServer  # noqa: E402
from machine_helper import FakeMachines, call, wait_for  # noqa: E402

NAMES = [f"m{i}" for i in range(1, 7)]


async def etcd_lease_expiry(url: str, ttl: int, count: int = 20) -> list[float]:
    """Seconds from a lease's last refresh until a watch sees its key deleted, for ``count`` leases."""
    from controlplane.store import open_store

    store = open_store(url, prefix="/bench-lease")
    refreshed: dict[str, float] = {}
    expired: dict[str, float] = {}
    revision = await store.revision()
    for i in range(count):
        lease = await store.grant_lease(ttl)
        await store.put(f"k{i}", b"x", lease=lease)
        await store.refresh_lease(lease)
        refreshed[f"k{i}"] = time.monotonic()
        await asyncio.sleep(0.5 * ttl / count)  # spread the refreshes over etcd's expiry ticks

    async def follow() -> None:
        async for event in store.watch("k", start_revision=revision + 1):
            if event.type == "DELETE":
                expired[event.kv.key] = time.monotonic()
                if len(expired) == count:
                    return

    await asyncio.wait_for(follow(), timeout=ttl + 10)
    await store.close()
    return [expired[k] - refreshed[k] for k in refreshed]


def watch_presence_deletes(url: str, prefix: str, deletes: dict[str, float], ready: threading.Event) -> None:
    """In a thread of its own: note when each presence key is deleted (its lease expired)."""
    from controlplane.model import PRESENCE_PREFIX
    from controlplane.store import open_store

    async def follow() -> None:
        store = open_store(url, prefix=prefix)
        revision = await store.revision()
        ready.set()
        async for event in store.watch(PRESENCE_PREFIX, start_revision=revision + 1):
            if event.type == "DELETE":
                deletes[event.kv.key[len(PRESENCE_PREFIX):]] = time.monotonic()

    asyncio.run(follow())


def bindings(url: str) -> dict[str, str]:
    status, obj = call(url, "GET", "/api/v1/instances")
    assert status == 200, obj
    return {i["metadata"]["name"]: i["spec"]["machine"] for i in obj["items"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--ttl", type=int, default=2)
    args = parser.parse_args()
    with EtcdServer() as etcd, ApiServer(etcd.url, "/bench-failover", machine_ttl=args.ttl) as api:
        raw = asyncio.run(etcd_lease_expiry(etcd.url, args.ttl))
        deletes: dict[str, float] = {}
        watching = threading.Event()
        threading.Thread(target=watch_presence_deletes, args=(etcd.url, "/bench-failover", deletes, watching),
                         daemon=True).start()
        watching.wait(10)
        with FakeMachines(api.url, NAMES, interval=0.5) as machines:
            body = {"apiVersion": "v1", "kind": "Unit", "metadata": {"name": "web"},
                    "spec": {"image": "local/web:latest", "replicas": 12, "placement": {"spread": "preferred"}}}
            status, obj = call(api.url, "POST", "/api/v1/units", body)
            assert status == 201, obj
            wait_for(lambda: (b := bindings(api.url)) and len(b) == 12 and all(b.values()), timeout=20,
                     what="12 instances bound")
            times: list[float] = []
            after_delete: list[float] = []
            moved = 0
            for run in range(args.runs):
                lost = NAMES[run % len(NAMES)]
                before = bindings(api.url)
                victims = [n for n, m in before.items() if m == lost]
                last_beat = machines.pause(lost)

                def elsewhere(lost: str = lost) -> bool:
                    now = bindings(api.url)
                    return len(now) == 12 and all(m and m != lost for m in now.values())

                deletes.pop(lost, None)
                wait_for(elsewhere, timeout=args.ttl + 30, interval=0.02, what=f"{lost}'s instances to move")
                done = time.monotonic()
                elapsed = done - last_beat
                times.append(elapsed)
                moved += len(victims)
                cp = done - deletes[lost] if lost in deletes else float("nan")
                after_delete.append(cp)
                print(f"run {run + 1:2}: {lost} lost, {len(victims)} instances bound elsewhere "
                      f"{elapsed:.2f} s after its last heartbeat, {cp * 1000:.0f} ms after etcd deleted its presence key")
                machines.resume(lost)
                wait_for(lambda lost=lost: (call(api.url, "GET", f"/api/v1/machines/{lost}")[1].get("status") or {})
                         .get("state") == "Ready", timeout=10, what=f"{lost} Ready again")
            median, worst = statistics.median(times), max(times)
            print(f"failover over {args.runs} runs ({moved} instances moved), from the last heartbeat: "
                  f"median {median:.2f} s, max {worst:.2f} s, min {min(times):.2f} s")
            print(f"baseline: machine TTL {args.ttl} s -> median {median / args.ttl:.2f}x TTL, "
                  f"max {worst / args.ttl:.2f}x TTL (heartbeats every 0.5 s)")
            print(f"baseline: etcd lease expiry alone (TTL {args.ttl} s, refresh -> watch DELETE, {len(raw)} leases): "
                  f"median {statistics.median(raw):.2f} s, max {max(raw):.2f} s; the runs' median is "
                  f"{median - statistics.median(raw):.2f} s above it")
            print(f"control plane alone (presence key DELETE -> all bound elsewhere, incl. a 20 ms poll): "
                  f"median {statistics.median(after_delete) * 1000:.0f} ms, max {max(after_delete) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
