"""How many requests through the edge are lost when a machine dies under a steady load?

The seed scenario (web x2, web-lb x2 exposed as someapp, an edge on every machine) on a real
4-machine cluster started with ``controlplane.dev`` (etcd, cp-apiserver, cp-agents, Docker, nginx).
Client threads request ``someapp.mywebsite.com`` through the edge of a machine that survives,
without pause between requests beyond ``--pause``; then the machine running web-0 dies (its agent
SIGKILLed, its containers removed) and the load goes on for ``--after`` seconds.

A request is *lost* when it does not answer 200 within ``--client-timeout`` (1 s): an error, a 5xx,
or a client timeout. For each run: requests sent, lost, the loss window (first and last lost
request after the kill), and latency percentiles after the kill.

Two arms, each on a fresh cluster with the same placement (the scheduler is deterministic):

* ``controlplane``: the system as shipped. After the machine TTL the controllers mark the machine
  NotReady, reschedule web-0, rewrite the Endpoints; the agents re-render and reload every proxy.
* ``baseline`` (nginx passive retries only): the same proxies, the same rendered nginx config
  (``proxy_next_upstream error timeout``, ``proxy_next_upstream_tries 3``, ``max_fails=1
  fail_timeout=2s``), but just before the kill the API server is restarted with
  ``--no-controllers``: nothing notices the death, nothing is rescheduled and no Endpoints change,
  so the proxies keep routing to the dead upstream and only nginx's own passive failover saves
  requests. That is what an nginx config generated once (or by a generator that lost its
  source of truth) gives you.

Two ways to die (``--modes``):

* ``kill``: the containers are gone, so on loopback the dead address answers with an immediate
  RST (connection refused); nginx's retry to the other upstream costs almost nothing.
* ``blackhole``: additionally an iptables rule drops every packet to the dead machine's address,
  as when a real machine loses power or its network: connects hang until
  ``proxy_connect_timeout`` (2 s) before nginx retries elsewhere. The machines of this benchmark
  use addresses 127.0.3.N (not the 127.0.1.N of ``cpctl dev`` and the tests), so the rule touches
  nothing else; it is removed at the end of the run. Needs root and iptables.

Usage: .venv/bin/python bench/bench_requests_lost.py [--after 25] [--threads 4] [--modes kill,blackhole]
No asserts; the figures go to bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from controlplane import dev as devlib

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "faults"))
from fault_watch import EdgeLoad  # noqa: E402  (the load generator the fault tests and chaos.py use)

HOST = "someapp.mywebsite.com"
PREFIX = "127.0.3."
MACHINES = 4


def cpctl(state: devlib.DevState, *args: str) -> None:
    env = dict(os.environ, CPCTL_SERVER=state.server, CPCTL_TOKEN=state.admin_token, CPCTL_CA=state.ca)
    proc = subprocess.run([sys.executable, "-m", "controlplane.cli.main", *args, "--timeout", "90"], env=env,
                          capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"cpctl {' '.join(args)}: {proc.stdout}{proc.stderr}")


def edge_port() -> int:
    addresses = [devlib.machine_address(i, PREFIX) for i in range(1, MACHINES + 1)]
    for _ in range(50):
        port = devlib.free_port(addresses[0])
        if all(devlib.port_free(a, port) for a in addresses):
            return port
    raise RuntimeError("no free edge port")


def wait_for(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.2)
    raise RuntimeError(f"timed out waiting for {what}")


def restart_without_controllers(state: devlib.DevState) -> None:
    """SIGKILL the API server and start it again at once with --no-controllers: back within about a
    second, well before the agents' fencing (80% of the TTL) would stop their instances; the
    caller checks that nothing moved (same Endpoints) before it kills the machine."""
    api = state.proc("apiserver")
    api.signal(signal.SIGKILL)
    wait_for(lambda: not api.alive(), 10, "the API server to die")
    api.args = [*api.args, "--no-controllers"]
    api.start()
    state.save()
    wait_for(lambda: state.api_ready(), 30, "the API server (--no-controllers)")
    time.sleep(2.0)  # the agents and proxies re-list after their watches broke


def run_arm(arm: str, mode: str, args: argparse.Namespace) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="cp-bench-lost-"))
    cluster = f"bench{uuid.uuid4().hex[:6]}"
    options = devlib.UpOptions(machines=MACHINES, state_dir=base / "state", cluster=cluster, api_port=0,
                               agent_port=0, machine_ttl=args.ttl, write_config=False, address_prefix=PREFIX)
    state = devlib.up(options, echo=lambda _line: None)
    rule: list[str] | None = None
    try:
        port = edge_port()
        cpctl(state, "run", "web", "--image", "local/web:latest", "--replicas", "2", "--port", "8080",
              "--health-http", "/")
        cpctl(state, "run", "web-lb", "--lb", "web", "--replicas", "2", "--expose", "someapp")
        cpctl(state, "run", "edge", "--edge", "mywebsite.com", "--port", f"80:{port}", "--global")
        placement = {i["metadata"]["name"]: i["spec"]["machine"] for i in state.api("instances")["items"]}
        victim = placement["web-0"]
        entry = next(m for m in state.machines if m != victim and m not in (placement["web-lb-0"],))
        url = f"http://{devlib.machine_address(int(entry[1:]), PREFIX)}:{port}/"
        wait_for(lambda: urllib.request.urlopen(urllib.request.Request(url, headers={"Host": HOST}),
                                                timeout=2).status == 200, 20, "the edge")
        if arm == "baseline":
            endpoints = {e["metadata"]["name"]: e.get("endpoints") for e in state.api("endpoints")["items"]}
            restart_without_controllers(state)
            after = {e["metadata"]["name"]: e.get("endpoints") for e in state.api("endpoints")["items"]}
            if after != endpoints:
                raise RuntimeError("the baseline's restart moved instances; the comparison would be unfair")
        load = EdgeLoad(url, HOST, threads=args.threads, pause=args.pause, timeout=args.client_timeout).start()
        time.sleep(args.before)
        killed_at = time.monotonic()
        devlib.kill_machine(state, victim)
        if mode == "blackhole":
            rule = ["INPUT", "-d", devlib.machine_address(int(victim[1:]), PREFIX), "-j", "DROP"]
            subprocess.run(["iptables", "-I", *rule], check=True)
        converged_at: float | None = None
        while time.monotonic() - killed_at < args.after:
            if arm == "controlplane" and converged_at is None:
                with contextlib.suppress(Exception):
                    eps = state.api("endpoints")["items"]
                    insts = state.api("instances")["items"]
                    if not any(e.get("machine") == victim for ep in eps for e in ep.get("endpoints") or []) and all(
                            i["spec"].get("machine") not in ("", victim) and (i.get("status") or {}).get("ready")
                            for i in insts if i["spec"]["unit"] in ("web", "web-lb")):
                        converged_at = time.monotonic()
            time.sleep(0.1)
        load.stop()
    finally:
        if rule:
            subprocess.run(["iptables", "-D", *rule], check=False)
        devlib.down(base / "state", echo=lambda _line: None)
        shutil.rmtree(base, ignore_errors=True)

    before = [r for r in load.results if r[0] < killed_at]
    after = [r for r in load.results if r[0] >= killed_at]
    lost = [r for r in after if r[2] != 200]
    lat = sorted(r[1] for r in after if r[2] == 200) or [float("nan")]
    window = (lost[0][0] - killed_at, lost[-1][0] + lost[-1][1] - killed_at) if lost else None
    return {
        "arm": arm, "mode": mode, "victim": victim, "entry": entry,
        "rps": len(after) / args.after, "sent": len(after), "lost": len(lost),
        "lost_before": sum(1 for r in before if r[2] != 200),
        "window": window, "converged": None if converged_at is None else converged_at - killed_at,
        "p50": statistics.median(lat), "p99": lat[min(len(lat) - 1, int(0.99 * len(lat)))], "max": lat[-1],
        "slow": sum(1 for r in after if r[2] == 200 and r[1] > 0.5),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--after", type=float, default=25.0, help="seconds of load after the kill")
    parser.add_argument("--before", type=float, default=2.0, help="seconds of load before the kill")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--pause", type=float, default=0.02, help="pause between a thread's requests")
    parser.add_argument("--client-timeout", type=float, default=1.0)
    parser.add_argument("--ttl", type=int, default=5, help="machine TTL (the contract's default is 5)")
    parser.add_argument("--modes", default="kill,blackhole")
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    if "blackhole" in modes and (os.geteuid() != 0 or shutil.which("iptables") is None):
        print("blackhole mode needs root and iptables; skipping it", file=sys.stderr)
        modes.remove("blackhole")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # so `finally` tears the clusters down
    rows = []
    for mode in modes:
        for arm in ("controlplane", "baseline"):
            row = run_arm(arm, mode, args)
            rows.append(row)
            window = f"+{row['window'][0]:.2f}s..+{row['window'][1]:.2f}s" if row["window"] else "-"
            conv = f"{row['converged']:.1f}s" if row["converged"] is not None else "never"
            print(f"{mode:<10}{arm:<13} sent {row['sent']:>5} ({row['rps']:.0f}/s)  lost {row['lost']:>4}  "
                  f"window {window:<18} converged {conv:<6} p50 {row['p50'] * 1000:.1f}ms "
                  f"p99 {row['p99'] * 1000:.1f}ms max {row['max'] * 1000:.0f}ms  >0.5s {row['slow']}  "
                  f"(victim {row['victim']}, edge on {row['entry']}; lost before the kill {row['lost_before']})", flush=True)
    print()
    print("| death | arm | requests after the kill | lost | loss window | converged | p99 | max | answered > 0.5 s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        window = f"+{row['window'][0]:.1f} s .. +{row['window'][1]:.1f} s" if row["window"] else "-"
        conv = f"{row['converged']:.1f} s" if row["converged"] is not None else "never"
        print(f"| {row['mode']} | {row['arm']} | {row['sent']} ({row['rps']:.0f}/s) | {row['lost']} | {window} | "
              f"{conv} | {row['p99'] * 1000:.0f} ms | {row['max'] * 1000:.0f} ms | {row['slow']} |")


if __name__ == "__main__":
    main()
