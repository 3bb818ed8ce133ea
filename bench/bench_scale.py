"""The control plane under N hollow machines: heartbeats, bring-up, failover, API latency, server cost.

    .venv/bin/python bench/bench_scale.py --machines 1000 --instances 2000 [--ttl 5] [--json bench/scale.json]

A fresh etcd and a real ``cp-apiserver`` subprocess (controllers on, ``--machine-ttl TTL``), then
N hollow machines (bench/_hollow.py: the real agent over the fake runtime, containers up after
0.5 s, exec probes) in ceil(N / --per-process) processes of their own. Phases:

1. idle: GET and LIST p99 with no machine (the same-run baseline of the loaded figures);
2. bring-up: all N machines registered and Ready;
3. steady (``--steady`` s): heartbeat latency p50/p99 as the agents see it, the API server's CPU
   and RSS (from /proc), its CPU per heartbeat, GET ``/machines/h1`` and LIST ``/units`` p99;
4. schedule: M instances (units of ``--replicas``) POSTed; the time until every one is bound and
   reported Running and ready (seen by this script's watch);
5. kill: the machine of the first instance stops dead (its agent task cancelled); failover is
   its last acknowledged heartbeat -> every one of its instances bound elsewhere and Running+ready.

False NotReady counts machines other than the killed one that were ever seen not Ready after
the bring-up (and agents that fenced). The figures go to stdout and, with ``--json``, into
that file under the key N (bench/plot_scale.py draws bench/scale.png from it). No asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent / "tests"))

from _env import raise_fd_limit  # noqa: E402
from _hollow import IMAGE, machine_name  # noqa: E402
from _scale_probe import ApiProbe, ProcSampler, percentile  # noqa: E402
from apiserver_fixture import ApiServer, write_private  # noqa: E402
from etcd_fixture import EtcdServer  # noqa: E402

from controlplane.client import Client  # noqa: E402
from controlplane.mirror import mirror  # noqa: E402

ADMIN = "admin-token"


def write_tokens(path: Path, machines: int) -> None:
    lines = [f"{ADMIN},admin,admin"]
    lines += [f"node-{machine_name(i)}-token,node-{machine_name(i)},node,{machine_name(i)}" for i in range(1, machines + 1)]
    write_private(path, "\n".join(lines) + "\n")


class Hollows:
    """The hollow-machine processes: start them, send commands, read their JSON lines."""

    def __init__(self, server: str, machines: int, *, per_process: int, start_delay: float, ramp: float) -> None:
        self.procs: list[tuple[int, int, subprocess.Popen[str]]] = []
        for first in range(1, machines + 1, per_process):
            count = min(per_process, machines + 1 - first)
            cmd = [sys.executable, str(BENCH / "_hollow.py"), "--server", server, "--first", str(first),
                   "--count", str(count), "--start-delay", str(start_delay), "--ramp", str(ramp)]
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
            self.procs.append((first, count, proc))

    def pids(self) -> list[int]:
        return [proc.pid for _, _, proc in self.procs]

    async def read(self, proc: subprocess.Popen[str], event: str) -> dict[str, Any]:
        assert proc.stdout is not None
        while True:
            line = await asyncio.to_thread(proc.stdout.readline)
            if not line:
                raise RuntimeError(f"hollow process {proc.pid} ended")
            message: dict[str, Any] = json.loads(line)
            if message.get("event") == event:
                return message

    async def started(self) -> None:
        await asyncio.gather(*(self.read(proc, "started") for _, _, proc in self.procs))

    def owner(self, index: int) -> subprocess.Popen[str]:
        return next(proc for first, count, proc in self.procs if first <= index < first + count)

    async def command(self, proc: subprocess.Popen[str], line: str, event: str) -> dict[str, Any]:
        assert proc.stdin is not None
        proc.stdin.write(line + "\n")
        return await self.read(proc, event)

    async def report(self) -> dict[str, Any]:
        parts = await asyncio.gather(*(self.command(p, "report", "report") for _, _, p in self.procs))
        return {"latencies": [x for p in parts for x in p["latencies"]],
                "failures": sum(p["failures"] for p in parts), "fences": sum(p["fences"] for p in parts),
                "loopLags": [x for p in parts for x in p["loopLags"]],
                "fenced": [m for p in parts for m in p["fenced"]], "crashed": [m for p in parts for m in p["crashed"]]}

    def stop(self) -> None:
        for _, _, proc in self.procs:
            with contextlib.suppress(OSError):
                assert proc.stdin is not None
                proc.stdin.write("quit\n")
                proc.stdin.close()
        for _, _, proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


class Watcher:
    """This script's view of machines and instances (list+watch), and the false NotReady it saw."""

    def __init__(self, client: Client) -> None:
        self.machines: dict[str, dict[str, Any]] = {}
        self.instances: dict[str, dict[str, Any]] = {}
        self.changed = asyncio.Event()
        self.armed = False  # after the bring-up: a machine not Ready from here on is a false NotReady
        self.victim = ""
        self.not_ready: set[str] = set()
        self.tasks = [asyncio.create_task(mirror(client, "machines", self.machines, on_change=self._machines)),
                      asyncio.create_task(mirror(client, "instances", self.instances, on_change=self.changed.set))]

    def _machines(self) -> None:
        if self.armed:
            self.not_ready.update(name for name, m in self.machines.items()
                                  if name != self.victim and (m.get("status") or {}).get("state") != "Ready")
        self.changed.set()

    def ready_machines(self) -> int:
        return sum(1 for m in self.machines.values() if (m.get("status") or {}).get("state") == "Ready")

    def settled(self, count: int, *, away_from: str = "") -> bool:
        """``count`` instances, each bound (not to ``away_from``) and reported Running and ready here."""
        if len(self.instances) != count:
            return False
        for inst in self.instances.values():
            machine = (inst.get("spec") or {}).get("machine") or ""
            status = inst.get("status") or {}
            if not machine or machine == away_from or status.get("machine") != machine:
                return False
            if status.get("phase") != "Running" or not status.get("ready"):
                return False
        return True

    async def until(self, check: Any, *, timeout: float) -> float:
        """Wait until ``check()``; returns time.time() when first seen true."""
        deadline = time.monotonic() + timeout
        while not check():
            self.changed.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("benchmark condition not reached")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), timeout=min(left, 1.0))
        return time.time()

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def latency_summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0, "p50": math.nan, "p99": math.nan, "max": math.nan}
    return {"n": len(values), "p50": statistics.median(values), "p99": percentile(values, 99), "max": max(values)}


async def steady(args: argparse.Namespace, api: ApiServer, hollows: Hollows, *,
                 idle: dict[str, Any]) -> dict[str, Any]:
    """The steady window. Per 1,000 machines and per heartbeat: net of the idle server's CPU and
    RSS under the same GET/LIST probe (phase 1), so they are the machines' own cost."""
    await hollows.report()  # start afresh
    server = ProcSampler(api.proc.pid if api.proc else 0)
    hollow = [ProcSampler(pid) for pid in hollows.pids()]
    probe = ApiProbe(api.url, ADMIN)
    spy = profile(args, server.pid)
    loads = await asyncio.to_thread(probe.run, args.steady)
    if spy is not None:
        spy.wait()
    seconds = server.elapsed()
    cpu = server.cpu_seconds()
    beats = await hollows.report()
    per_k = args.machines / 1000
    net_cpu = max(cpu - idle["serverCpuPercent"] / 100 * seconds, 0.0)
    rss = server.rss_mb()
    return {
        "heartbeat": latency_summary(beats["latencies"]), "heartbeatFailures": beats["failures"],
        "fences": beats["fences"], "hollowLoopLag": latency_summary(beats["loopLags"]),
        "heartbeatsPerSecond": len(beats["latencies"]) / seconds,
        "serverCpuPercent": 100 * cpu / seconds, "serverCpuPercentPer1000": 100 * net_cpu / seconds / per_k,
        "serverRssMB": rss, "serverRssMBPer1000": (rss - idle["serverRssMB"]) / per_k,
        "serverCpuMsPerHeartbeat": 1000 * net_cpu / max(len(beats["latencies"]), 1),
        "hollowCpuPercent": sum(100 * h.cpu_seconds() / seconds for h in hollow),
        "get": latency_summary(loads["get"]), "list": latency_summary(loads["list"]),
    }


def profile(args: argparse.Namespace, pid: int, *, phase: str = "steady",
            seconds: float | None = None) -> subprocess.Popen[bytes] | None:
    """py-spy on the API server for the ``--profile-phase`` window, with ``--profile FILE`` (raw folded stacks)."""
    if not args.profile or args.profile_phase != phase:
        return None
    spy = Path(sys.executable).parent / "py-spy"
    return subprocess.Popen([str(spy), "record", "-p", str(pid), "-d", str(int(seconds or args.steady)), "-f", "raw",
                             "-o", str(args.profile), "-r", "50"], stdout=subprocess.DEVNULL)


async def schedule(args: argparse.Namespace, client: Client, watcher: Watcher) -> float | None:
    units = math.ceil(args.instances / args.replicas)
    started = time.time()
    for u in range(units):
        replicas = min(args.replicas, args.instances - u * args.replicas)
        await client.create("units", {"apiVersion": "v1", "kind": "Unit", "metadata": {"name": f"s{u}"},
                                      "spec": {"image": IMAGE, "replicas": replicas,
                                               "health": {"exec": {"command": ["true"]}, "periodSeconds": 5}}})
    try:
        done = await watcher.until(lambda: watcher.settled(args.instances), timeout=args.timeout)
    except TimeoutError:
        running = sum(1 for i in watcher.instances.values() if (i.get("status") or {}).get("ready"))
        print(f"schedule: NOT settled within {args.timeout:g} s ({running} of {args.instances} ready)")
        return None
    return done - started


async def kill_one(args: argparse.Namespace, hollows: Hollows, watcher: Watcher) -> dict[str, Any]:
    first = min(watcher.instances)
    victim = watcher.instances[first]["spec"]["machine"]
    moved = sum(1 for i in watcher.instances.values() if i["spec"].get("machine") == victim)
    watcher.victim = victim
    killed = await hollows.command(hollows.owner(int(victim[1:])), f"kill {victim}", "killed")
    done = await watcher.until(lambda: watcher.settled(args.instances, away_from=victim), timeout=args.ttl + 60)
    return {"machine": victim, "instancesMoved": moved, "failoverSeconds": done - killed["lastAck"]}


async def run(args: argparse.Namespace, etcd: EtcdServer, api: ApiServer) -> dict[str, Any]:
    probe = ApiProbe(api.url, ADMIN)
    server = ProcSampler(api.proc.pid if api.proc else 0)
    idle = await asyncio.to_thread(probe.run, 5.0)
    result: dict[str, Any] = {"machines": args.machines, "instances": args.instances, "ttl": args.ttl,
                              "idle": {"get": latency_summary(idle["get"]), "list": latency_summary(idle["list"]),
                                       "serverCpuPercent": 100 * server.cpu_seconds() / server.elapsed(),
                                       "serverRssMB": server.rss_mb()}}
    async with Client(api.url, token=ADMIN, timeout=30.0) as client:
        watcher = Watcher(client)
        hollows = Hollows(api.url, args.machines, per_process=args.per_process, start_delay=args.start_delay,
                          ramp=args.ramp)
        result["hollowProcesses"] = len(hollows.procs)
        try:
            began = time.time()
            await hollows.started()
            try:
                await watcher.until(lambda: watcher.ready_machines() == args.machines, timeout=args.bring_up_timeout)
                result["bringUpSeconds"] = time.time() - began
                watcher.armed = True
            except TimeoutError:  # measure the steady window anyway, then stop
                result["bringUpSeconds"] = None
                result["readyAtBringUpTimeout"] = watcher.ready_machines()
                print(f"bring-up: NOT done within {args.bring_up_timeout:g} s"
                      f" ({result['readyAtBringUpTimeout']} of {args.machines} Ready)")
            result["steady"] = await steady(args, api, hollows, idle=result["idle"])
            print_steady(result)
            if args.json:
                save(args.json, result)  # the steady figures, kept even if a later phase never ends
            if result["bringUpSeconds"] is None:
                return result
            server_cpu = ProcSampler(api.proc.pid if api.proc else 0)
            profile(args, server_cpu.pid, phase="schedule", seconds=20)
            hollow_cpu = [ProcSampler(pid) for pid in hollows.pids()]
            result["scheduleSeconds"] = await schedule(args, client, watcher)
            result["scheduleServerCpuSeconds"] = burst_cpu = server_cpu.cpu_seconds()
            if result["scheduleSeconds"] is not None:
                print(f"schedule: {args.instances} instances bound and Running+ready in {result['scheduleSeconds']:.2f} s;"
                      f" API server CPU meanwhile {burst_cpu:.2f} s = {1000 * burst_cpu / args.instances:.2f} ms"
                      " per instance (heartbeats included)")
                result["failover"] = failover = await kill_one(args, hollows, watcher)
                print(f"failover of {failover['machine']} ({failover['instancesMoved']} instances):"
                      f" {failover['failoverSeconds']:.2f} s after its last heartbeat (TTL {args.ttl} s)")
            end = await hollows.report()
            result["falseNotReady"] = sorted(watcher.not_ready)
            result["fenced"] = end["fenced"]
            result["fences"] = result["steady"]["fences"] + end["fences"]
            result["crashedAgents"] = end["crashed"]
            result["heartbeatAfterSteady"] = latency_summary(end["latencies"])
            result["heartbeatFailuresAfterSteady"] = end["failures"]
            # who was short of CPU in the burst: the API server, or the hollow machines' own loops
            result["afterSteadyLoad"] = load = {
                "serverCpuPercent": 100 * server_cpu.cpu_seconds() / server_cpu.elapsed(),
                "hollowCpuPercent": sum(100 * h.cpu_seconds() / h.elapsed() for h in hollow_cpu),
                "hollowLoopLag": latency_summary(end["loopLags"]),
            }
            if args.json:
                save(args.json, result)
            after = result["heartbeatAfterSteady"]
            print(f"heartbeats during schedule+failover: p50 {1000 * after['p50']:.1f} ms, p99 {1000 * after['p99']:.1f}"
                  f" ms, max {1000 * after['max']:.0f} ms, {end['failures']} failed; API server CPU"
                  f" {load['serverCpuPercent']:.0f} %, hollow processes CPU {load['hollowCpuPercent']:.0f} %, their"
                  f" loop lag p99 {1000 * load['hollowLoopLag']['p99']:.1f} ms")
        finally:
            await watcher.close()
            hollows.stop()
    return result


def print_steady(result: dict[str, Any]) -> None:
    s = result["steady"]
    hb, idle = s["heartbeat"], result["idle"]
    bring_up = result["bringUpSeconds"]
    print(f"machines {result['machines']} ({result['hollowProcesses']} hollow processes), "
          f"bring-up {'not done' if bring_up is None else f'{bring_up:.1f} s'}")
    print(f"heartbeats {s['heartbeatsPerSecond']:.0f}/s: p50 {1000 * hb['p50']:.1f} ms, p99 {1000 * hb['p99']:.1f} ms,"
          f" max {1000 * hb['max']:.1f} ms, {s['heartbeatFailures']} failed; the hollow processes' own event loop"
          f" lag p99 {1000 * s['hollowLoopLag']['p99']:.1f} ms")
    print(f"API server: CPU {s['serverCpuPercent']:.0f} % (idle baseline {idle['serverCpuPercent']:.0f} %;"
          f" {s['serverCpuPercentPer1000']:.0f} % per 1,000 machines over it),"
          f" {s['serverCpuMsPerHeartbeat']:.3f} ms CPU per heartbeat, RSS {s['serverRssMB']:.0f} MB"
          f" (idle {idle['serverRssMB']:.0f} MB; {s['serverRssMBPer1000']:.0f} MB per 1,000 over it);"
          f" hollow processes CPU {s['hollowCpuPercent']:.0f} %")
    for kind in ("get", "list"):
        print(f"{kind.upper()} p99 {1000 * s[kind]['p99']:.1f} ms under load"
              f" (idle baseline, same run: {1000 * idle[kind]['p99']:.1f} ms)")


def save(path: Path, result: dict[str, Any]) -> None:
    saved = json.loads(path.read_text()) if path.exists() else {}
    saved[str(result["machines"])] = result
    path.write_text(json.dumps(saved, indent=1, sort_keys=True) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--machines", type=int, default=200)
    parser.add_argument("--instances", type=int, default=0, help="default: 2 per machine")
    parser.add_argument("--replicas", type=int, default=10, help="replicas per unit")
    parser.add_argument("--ttl", type=int, default=5)
    parser.add_argument("--steady", type=float, default=20.0, help="seconds of the steady-state window")
    parser.add_argument("--per-process", type=int, default=1000, help="hollow machines per process")
    parser.add_argument("--start-delay", type=float, default=0.5)
    parser.add_argument("--ramp", type=float, default=0.0, help="seconds over which the agents start (default N/100)")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds the schedule may take")
    parser.add_argument("--bring-up-timeout", type=float, default=180.0)
    parser.add_argument("--profile", type=Path, help="py-spy the API server (folded stacks) in --profile-phase")
    parser.add_argument("--profile-phase", choices=["steady", "schedule"], default="steady",
                        help="the steady window, or the first 20 s of the schedule")
    parser.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                        help="one more cp-apiserver argument (repeat), e.g. --server-arg=--max-requests-inflight=200")
    parser.add_argument("--json", type=Path, help="merge the result into this file, under the machine count")
    args = parser.parse_args()
    args.instances = args.instances or 2 * args.machines
    args.ramp = args.ramp or args.machines / 100
    raise_fd_limit(65536)
    with EtcdServer() as etcd:
        api = ApiServer(etcd.url, "/scale", machine_ttl=args.ttl, extra_args=args.server_arg)
        write_tokens(api.token_file, args.machines)
        with api:
            result = asyncio.run(run(args, etcd, api))
    result["commit"] = os.environ.get("BENCH_COMMIT", "")
    if "falseNotReady" not in result:
        return
    print(f"false NotReady: {len(result['falseNotReady'])} {result['falseNotReady'][:10]};"
          f" fences: {result['fences']} (still fenced at the end: {len(result['fenced'])});"
          f" crashed agents: {len(result['crashedAgents'])}")
    if args.json:
        save(args.json, result)


if __name__ == "__main__":
    main()
