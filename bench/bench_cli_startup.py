"""cpctl's start-up: the wall time of `cpctl version` and `cpctl get units` (against a real
cp-apiserver on a real etcd, 5 units stored; the server and token from the environment, and once
more from a config file as `cpctl dev up` writes it), each against a bare `python -c pass` of the same
interpreter, measured in the same run with the runs interleaved (pass, version, get, pass, ...)
so all three see the same noise. Prints the medians and the ratios (goal <= 4x). No asserts.
Modules are loaded from .pyc files, as in an installed cpctl (PYTHONDONTWRITEBYTECODE is unset
for the runs, so the warm-up run writes them where they are missing).

    python bench/bench_cli_startup.py [--runs 20] [--importtime]

``--importtime`` also prints the ten slowest imports of `cpctl get units` (python -X importtime).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from _env import HEADERS, cluster, unit_body

CPCTL = [sys.executable, "-m", "controlplane.cli.main"]
CASES: dict[str, list[str]] = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "cpctl version": [*CPCTL, "version"],
    "cpctl get units": [*CPCTL, "get", "units"],
    "get units, file": [*CPCTL, "get", "units"],  # server and token from ~/.config/cpctl/config.yaml
}


def with_config_file(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` without CPCTL_SERVER/CPCTL_TOKEN, which a config file in its HOME gives instead."""
    folder = Path(env["HOME"]) / ".config" / "cpctl"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(f"server: {env['CPCTL_SERVER']}\ntoken: {env['CPCTL_TOKEN']}\n")
    return {k: v for k, v in env.items() if k not in ("CPCTL_SERVER", "CPCTL_TOKEN")}


def wall_time(command: Sequence[str], env: Mapping[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, env=dict(env), capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}: {done.stderr.strip()}")
    return elapsed


def slowest_imports(command: Sequence[str], env: Mapping[str, str], count: int = 10) -> list[str]:
    """The ``count`` top-level imports with the largest cumulative time (``-X importtime``)."""
    done = subprocess.run([command[0], "-X", "importtime", *command[1:]], env=dict(env), capture_output=True,
                          text=True)
    rows = []
    for line in done.stderr.splitlines():
        parts = line.removeprefix("import time:").split("|")
        if len(parts) == 3 and parts[1].strip().isdigit() and not parts[2].startswith("  "):
            rows.append((int(parts[1]), parts[2].strip()))
    return [f"{us / 1000:7.1f} ms  {name}" for us, name in sorted(rows, reverse=True)[:count]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--importtime", action="store_true", help="also show the slowest imports of get units")
    args = parser.parse_args()
    with cluster() as (_etcd, api):
        for i in range(5):
            request = urllib.request.Request(api.url + "/api/v1/units", data=json.dumps(unit_body(f"web{i}")).encode(),
                                             headers=HEADERS, method="POST")
            urllib.request.urlopen(request, timeout=5).read()
        env = api.env()
        # from .pyc files, as an installed cpctl runs (pip compiles them): the warm-up writes them
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        envs = {name: with_config_file(env) if "file" in name else env for name in CASES}
        for name, command in CASES.items():  # warm the page cache and the .pyc files
            wall_time(command, envs[name])
        times: dict[str, list[float]] = {name: [] for name in CASES}
        for _ in range(args.runs):
            for name, command in CASES.items():
                times[name].append(wall_time(command, envs[name]))
        imports = slowest_imports(CASES["cpctl get units"], env) if args.importtime else []
    base = statistics.median(times["python -c pass"])
    print(f"interpreter: {sys.executable}, {args.runs} interleaved runs each")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<16} median {median * 1000:6.1f} ms  min {min(values) * 1000:6.1f} ms  "
              f"max {max(values) * 1000:6.1f} ms  ratio {median / base:4.2f}x")
    ratios = ", ".join(f"{name.removeprefix('cpctl ')} {statistics.median(times[name]) / base:.2f}x"
                       for name in CASES if name.startswith(("cpctl", "get")))
    print(f"ratio of medians to `python -c pass`: {ratios} (goal <= 4x)")
    if imports:
        print("slowest top-level imports of `cpctl get units`:")
        print("\n".join(imports))


if __name__ == "__main__":
    main()
