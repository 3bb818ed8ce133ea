"""Time from `cpctl run NAME --replicas 1 --wait` to Running and ready, against a raw
`docker run -d` of the same image plus polling until it answers HTTP, side by side in one run.

The cpctl figure is the whole user-visible path: cpctl's own start-up (a Python process), the
POST, the scheduler, the agent's watch, `docker create/start`, the first health probe, the
status write, and cpctl's wait seeing it. The baseline is what a user gets from Docker alone.
A third arm, "API alone", POSTs the same unit with urllib from this process and polls every 20 ms
until it is Running+ready: the server and agent path without cpctl's start-up and wait.
Runs alternate (ours, raw, API alone, ours, ...) so all see the same noise. No asserts.

``--timeline N`` instead runs N more `cpctl run`s with CP_TIMELINE=1 in every process
(controlplane/timeline.py) and prints, for each, the marks of cpctl, the API server, its
controllers and the agent in one timeline, in ms from cpctl's start (the marks cost a line of
stderr each: the timings of a timeline run are a little above the plain runs').

Usage: .venv/bin/python bench/bench_run_latency.py [--runs 10] [--delete-between] [--timeline 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
import uuid

from _cluster import EtcdServer, LocalCluster, answers, summary, wait

from controlplane.timeline import ENV as TIMELINE_ENV
from controlplane.timeline import parse_line


def raw_docker(address: str, label: str) -> float:
    start = time.monotonic()
    cid = subprocess.run(["docker", "run", "-d", "--label", label, "-p", f"{address}::8080", "local/web:latest"],
                         capture_output=True, text=True, check=True).stdout.strip()
    port = subprocess.run(["docker", "port", cid, "8080/tcp"], capture_output=True, text=True,
                          check=True).stdout.split()[0].rsplit(":", 1)[1]
    wait(lambda: answers(f"http://{address}:{port}/"))
    elapsed = time.monotonic() - start
    subprocess.run(["docker", "rm", "-f", cid], capture_output=True)
    return elapsed


def ours(c: LocalCluster, name: str, seen: list[float], *, marks: list[tuple[float, str]] | None = None) -> float:
    """cpctl's wall time, until its output pipes close as it exits (read by a thread: the 20 ms
    poll beside it does not round it up); `seen` gets when the API first showed the instance
    Running+ready (that poll), which leaves out cpctl's own wait. `marks` gets the bench's own
    timeline marks and cpctl's (its stderr), when CP_TIMELINE is set."""
    env = c.api.env()
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # from .pyc files, as an installed cpctl (the warm-up writes them)
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "controlplane.cli.main", "run", name, "--image",
                             "local/web:latest", "--replicas", "1", "--port", "8080", "--health-http", "/",
                             "--timeout", "60"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    outputs: list[str] = []
    exited: list[float] = []

    def read_until_exit() -> None:
        outputs.extend(proc.communicate(timeout=60))
        exited.append(time.monotonic())

    reader = threading.Thread(target=read_until_exit, daemon=True)
    reader.start()

    def ready() -> bool:
        items = c.instances(name)
        return bool(items) and items[0]["status"].get("phase") == "Running" and bool(items[0]["status"].get("ready"))

    wait(ready, timeout=60)
    seen.append(time.monotonic() - start)
    reader.join(timeout=60)
    elapsed = exited[0] - start
    err = outputs[1]
    if proc.returncode != 0:
        raise RuntimeError(err)
    if marks is not None:
        marks += [(start, "bench.cpctl.spawned"), (start + seen[-1], "bench.api-poll.sees-ready"),
                  (start + elapsed, "bench.cpctl.exited")]
        marks += [(t, f"{what} {details}".strip()) for t, _, what, details in filter(None, map(parse_line,
                                                                                             err.splitlines()))]
    return elapsed  # units are deleted at the end: see --delete-between


def api_alone(c: LocalCluster, name: str) -> float:
    """POST the unit cpctl run would create, then poll every 20 ms until it is Running+ready."""
    unit = {"apiVersion": "v1", "kind": "Unit", "metadata": {"name": name},
            "spec": {"image": "local/web:latest", "replicas": 1,
                     "ports": [{"containerPort": 8080, "hostPort": 0, "protocol": "tcp"}],
                     "health": {"http": {"path": "/", "port": 8080}}}}
    request = urllib.request.Request(c.api.url + "/api/v1/units", data=json.dumps(unit).encode(), method="POST",
                                     headers={"Authorization": "Bearer admin-token",
                                              "Content-Type": "application/json"})
    start = time.monotonic()
    urllib.request.urlopen(request, timeout=10).read()

    def ready() -> bool:
        items = c.instances(name)
        return bool(items) and items[0]["status"].get("phase") == "Running" and bool(items[0]["status"].get("ready"))

    wait(ready, timeout=60)
    return time.monotonic() - start


def log_marks(paths: list[str], since: float, until: float) -> list[tuple[float, str]]:
    """The timeline marks the API server and the agents wrote to their logs in [since, until]."""
    found = []
    for path in paths:
        with open(path, errors="replace") as log:
            for line in log:
                parsed = parse_line(line)
                if parsed and since <= parsed[0] <= until:
                    found.append((parsed[0], f"{parsed[2]} {parsed[3]}".strip()))
    return found


def timelines(c: LocalCluster, runs: int) -> None:
    """Print the marks of `runs` cpctl runs, in ms from cpctl's start."""
    logs = [str(c.api.log_path), *(str(c.dir / f"agent-{m}.log") for m in c.names)]
    for i in range(runs):
        marks: list[tuple[float, str]] = []
        ours(c, f"tl{i}", [], marks=marks)
        start, end = marks[0][0], max(t for t, _ in marks)
        time.sleep(0.3)  # the last log lines reach the files
        marks += log_marks(logs, start, end)
        print(f"--- timeline of cpctl run tl{i} (ms from cpctl's start)")
        for t, what in sorted(marks):
            print(f"{(t - start) * 1000:8.1f}  {what}")
        raw_docker(c.address("m1"), f"cp.cluster={c.cluster}")  # as in the plain runs: a raw run between


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--delete-between", action="store_true",
                        help="delete each unit before the next run (shows the cost of a pending deletion)")
    parser.add_argument("--timeline", type=int, default=0, metavar="N",
                        help="after the runs, N cpctl runs with CP_TIMELINE=1, printed as timelines")
    args = parser.parse_args()
    if args.timeline:
        os.environ[TIMELINE_ENV] = "1"  # inherited by the API server, the agents and cpctl
    with EtcdServer() as etcd, LocalCluster(etcd.url, f"/bench-run/{uuid.uuid4().hex[:8]}", machines=1,
                                            machine_ttl=5) as c:
        label = f"cp.cluster={c.cluster}"
        cli = [time.monotonic()]
        subprocess.run([sys.executable, "-m", "controlplane.cli.main", "version"], capture_output=True,
                       env=c.api.env())
        cli_start = time.monotonic() - cli[0]
        ours(c, "warmup", [])
        raw_docker(c.address("m1"), label)
        mine, raw, seen, alone = [], [], [], []
        for i in range(args.runs):
            mine.append(ours(c, f"lat{i}", seen))
            if args.delete_between:
                c.cpctl("delete", "unit", f"lat{i}")
                time.sleep(1.0)
            raw.append(raw_docker(c.address("m1"), label))
            alone.append(api_alone(c, f"api{i}"))
        print(f"cpctl run --wait -> Running+ready : {summary(mine)}")
        print(f"  of which API shows Running+ready: {summary(seen)}")
        print(f"docker run -d + HTTP answers      : {summary(raw)}")
        print(f"API alone: POST -> Running+ready  : {summary(alone)}")
        print(f"(cpctl's own start-up, `cpctl version`: {cli_start:.3f}s)")
        print(f"ratio of medians: {statistics.median(mine) / statistics.median(raw):.2f}x (goal <= 1.5x); "
              f"API-ready vs raw: {statistics.median(seen) / statistics.median(raw):.2f}x; "
              f"API alone vs raw: {statistics.median(alone) / statistics.median(raw):.2f}x")
        if args.timeline:
            timelines(c, args.timeline)


if __name__ == "__main__":
    main()
