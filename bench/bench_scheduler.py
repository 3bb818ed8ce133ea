"""The scheduler alone, no store: placements per second at 5,000 machines / 150,000 instances,
and how the cost of one placement grows with the number of machines.

    .venv/bin/python bench/bench_scheduler.py [--machines 5000] [--instances 150000]

The workload keeps 30 instances per machine at every size (so the growth table compares like
with like): units of 100 replicas, cpu 0.25 / 256 MB each, on machines of 64 cpu / 256 GB with
role and zone labels. 70% of the units use the defaults (spread required), 10% spread preferred,
10% ask for role=db (30% of machines), 5% for role=edge (10% of machines; spread preferred,
since 100 replicas can outnumber them), 5% conflict with another unit through a glob. Every
instance goes through ``Scheduler.place``, one at a time (``schedule()`` and the leader use
``place_many``, which gives the same placements a unit's run at a time).
Prints figures only; no asserts.
"""

from __future__ import annotations

import argparse
import math
import random
import time
from typing import Any

from controlplane.scheduler import Scheduler

DENSITY = 30  # instances per machine
REPLICAS = 100


def machines(n: int, rng: random.Random) -> list[dict[str, Any]]:
    roles = rng.choices(["web", "db", "edge"], weights=[6, 3, 1], k=n)
    return [
        {
            "metadata": {"name": f"m{i:05}", "labels": {"role": roles[i], "zone": "abcde"[i % 5]}},
            "spec": {},
            "status": {"state": "Ready", "capacity": {"cpu": 64, "memoryMB": 262144}},
        }
        for i in range(n)
    ]


def units(count: int, rng: random.Random) -> list[dict[str, Any]]:
    out = []
    for u in range(count):
        draw = rng.random()
        placement: dict[str, Any] = {}
        if draw < 0.10:
            placement["spread"] = "preferred"
        elif draw < 0.20:
            placement["machineMetadata"] = {"role": ["db"]}
        elif draw < 0.25:
            placement["machineMetadata"] = {"role": ["edge"]}
            placement["spread"] = "preferred"  # 100 replicas may outnumber the edge machines
        elif draw < 0.30:
            placement["conflicts"] = [f"u{rng.randrange(count):05}*"]  # a glob that matches one unit
        out.append(
            {
                "metadata": {"name": f"u{u:05}"},
                "spec": {
                    "image": "x",
                    "replicas": REPLICAS,
                    "resources": {"cpu": 0.25, "memoryMB": 256},
                    "placement": placement,
                },
            }
        )
    return out


def pending(unit_list: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "metadata": {"name": f"{u['metadata']['name']}-{i}"},
            "spec": {"unit": u["metadata"]["name"], "index": i},
        }
        for u in unit_list
        for i in range(u["spec"]["replicas"])
    ]


def run(n_machines: int, n_instances: int, *, seed: int = 1) -> dict[str, float]:
    rng = random.Random(seed)
    ms = machines(n_machines, rng)
    us = units(max(1, n_instances // REPLICAS), rng)
    ins = pending(us)[:n_instances]
    t0 = time.perf_counter()
    scheduler = Scheduler.from_dicts(ms, us, ins)
    order = scheduler.pending()
    t1 = time.perf_counter()
    placed = 0
    for name in order:
        if scheduler.place(name).machine is not None:
            placed += 1
    t2 = time.perf_counter()
    return {
        "machines": n_machines,
        "instances": len(order),
        "placed": placed,
        "load_s": t1 - t0,
        "place_s": t2 - t1,
        "per_s": len(order) / (t2 - t1),
        "us_per": (t2 - t1) / len(order) * 1e6,
    }


def unplaceable(n_machines: int, copies: int) -> float:
    """Microseconds per placement for ``copies`` pending instances of a unit no machine takes."""
    rng = random.Random(2)
    ms = machines(n_machines, rng)
    unit = {
        "metadata": {"name": "nowhere"},
        "spec": {"replicas": copies, "placement": {"machineMetadata": {"role": ["gpu"]}}},
    }
    scheduler = Scheduler.from_dicts(ms, [unit], pending([unit]))
    t0 = time.perf_counter()
    for name in scheduler.pending():
        scheduler.place(name)
    return (time.perf_counter() - t0) / copies * 1e6


def worst_cases(n_machines: int) -> list[tuple[str, float]]:
    """Microseconds per placement for the workloads the index walk does not help (known limits)."""
    rows = []
    rng = random.Random(3)
    ms = machines(n_machines, rng)
    unit = {
        "metadata": {"name": "many"},
        "spec": {"replicas": 2 * n_machines, "placement": {"spread": "preferred"}},
    }
    scheduler = Scheduler.from_dicts(ms, [unit], pending([unit]))
    names = scheduler.pending()
    for name in names[:n_machines]:
        scheduler.place(name)
    t0 = time.perf_counter()
    sample = names[n_machines : n_machines + 2000]
    for name in sample:
        scheduler.place(name)
    rows.append(
        (
            f"spread preferred, 2nd round ({n_machines:,} already placed, every machine runs one)",
            (time.perf_counter() - t0) / len(sample) * 1e6,
        )
    )
    half = n_machines // 2
    for i, m in enumerate(ms):
        m["status"]["capacity"]["cpu"] = 1 if i < half else 64
    unit = {
        "metadata": {"name": "cpu1"},
        "spec": {"replicas": 4 * n_machines, "resources": {"cpu": 1}, "placement": {"spread": "none"}},
    }
    scheduler = Scheduler.from_dicts(ms, [unit], pending([unit]))
    names = scheduler.pending()
    for name in names[: 2 * n_machines]:
        scheduler.place(name)
    t0 = time.perf_counter()
    sample = names[2 * n_machines : 2 * n_machines + 2000]
    for name in sample:
        scheduler.place(name)
    rows.append(
        (
            f"cpu-bound, half the machines small and full ({half:,} full machines rank first)",
            (time.perf_counter() - t0) / len(sample) * 1e6,
        )
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--machines", type=int, default=5000)
    parser.add_argument("--instances", type=int, default=150_000)
    args = parser.parse_args()

    big = run(args.machines, args.instances)
    print(f"scheduler alone: {big['machines']:,} machines, {big['instances']:,} instances")
    print(f"  load dicts into the state: {big['load_s']:.2f} s")
    print(
        f"  placed {big['placed']:,} in {big['place_s']:.2f} s: {big['per_s']:,.0f} instances/s "
        f"({big['us_per']:.1f} us per placement)"
    )
    print(
        f"  unplaceable unit, 2,000 pending copies at {args.machines:,} machines: "
        f"{unplaceable(args.machines, 2000):.1f} us per placement (one full scan, then cached)"
    )
    print()
    print(f"cost per placement vs machines ({DENSITY} instances per machine at every size)")
    sizes = [500, 1000, 2000, args.machines] if args.machines > 2000 else [500, 1000, 2000]
    rows = []
    for n in sizes:  # best of 3 runs (2 for the largest), to keep noise out of the ratios
        tries = [run(n, n * DENSITY, seed=seed) for seed in range(2 if n >= 5000 else 3)]
        rows.append(min(tries, key=lambda r: r["us_per"]))
    base = rows[0]["us_per"]
    print(f"  {'machines':>8} {'instances':>9} {'us/placement':>12} {'vs 500':>7} {'log2 growth':>11}")
    for row in rows:
        n = row["machines"]
        print(
            f"  {n:>8,.0f} {row['instances']:>9,.0f} {row['us_per']:>12.1f} {row['us_per'] / base:>7.2f} "
            f"{math.log2(n) / math.log2(sizes[0]):>11.2f}"
        )
    print(
        "  (vs 500: cost relative to 500 machines; log2 growth: log2(n)/log2(500), what O(log n) would give)"
    )
    print()
    print(f"known limits, {args.machines:,} machines (2,000 placements measured each)")
    for label, us in worst_cases(args.machines):
        print(f"  {us:>9.1f} us per placement: {label}")


if __name__ == "__main__":
    main()
