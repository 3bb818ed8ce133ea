"""Draw bench/scale.png from the JSON bench_scale.py writes (``--json bench/scale.json``).

    .venv/bin/python bench/plot_scale.py [--json bench/scale.json] [--out bench/scale.png]

Three panels against the machine count: heartbeat latency p50/p99 and GET/LIST p99 (steady
state, ms, log scale); bring-up-to-Running and failover seconds, with the failover goal (TTL +
2 s); the API server's CPU (% of one core) and RSS (MB). Needs matplotlib (the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent


def series(runs: list[dict[str, Any]], *path: str, scale: float = 1.0) -> list[float]:
    values = []
    for run in runs:
        value: Any = run
        for key in path:
            value = value.get(key, {}) if isinstance(value, dict) else {}
        values.append(float(value) * scale if isinstance(value, (int, float)) else float("nan"))
    return values


def plot(runs: list[dict[str, Any]], out: Path) -> None:
    machines = [run["machines"] for run in runs]
    fig, (lat, times, cost) = plt.subplots(1, 3, figsize=(15, 4.5))
    for label, path in (("heartbeat p50", ("steady", "heartbeat", "p50")),
                        ("heartbeat p99", ("steady", "heartbeat", "p99")),
                        ("GET p99", ("steady", "get", "p99")), ("LIST p99", ("steady", "list", "p99"))):
        lat.plot(machines, series(runs, *path, scale=1000), marker="o", label=label)
    lat.set_yscale("log")
    lat.set(title="API latency, steady state", xlabel="machines", ylabel="ms")
    times.plot(machines, series(runs, "scheduleSeconds"), marker="o", label="all instances Running")
    times.plot(machines, series(runs, "failover", "failoverSeconds"), marker="o", label="failover")
    times.plot(machines, [run["ttl"] + 2 for run in runs], linestyle="--", color="grey", label="TTL + 2 s")
    times.set(title="Bring-up and failover", xlabel="machines", ylabel="s")
    cost.plot(machines, series(runs, "steady", "serverCpuPercent"), marker="o", label="API server CPU %")
    cost.plot(machines, series(runs, "steady", "serverRssMB"), marker="o", label="API server RSS MB")
    cost.set(title="API server cost", xlabel="machines")
    for axes in (lat, times, cost):
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=8)
    fig.suptitle("bench_scale.py: hollow machines at a 5 s TTL, 2 shared cores")
    fig.tight_layout()
    fig.savefig(out, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, default=HERE / "scale.json")
    parser.add_argument("--out", type=Path, default=HERE / "scale.png")
    args = parser.parse_args()
    runs = sorted(json.loads(args.json.read_text()).values(), key=lambda run: run["machines"])
    plot(runs, args.out)
    print(f"wrote {args.out} ({len(runs)} runs)")


if __name__ == "__main__":
    main()
