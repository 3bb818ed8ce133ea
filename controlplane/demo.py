"""The seed scenario, narrated: ``make demo`` (``python -m controlplane.demo [--down]``).

1. ``cpctl dev up --machines 4``: etcd, cp-apiserver and four agents (m1..m4 at 127.0.1.1..4);
2. a web unit (2 replicas), a load balancer in front of it (2 replicas, exposed as ``someapp``)
   and an edge proxy on every machine (``*.mywebsite.com`` on port 8088), all with real cpctl commands;
3. where everything landed, and curl through the edge;
4. the machine running web-0 dies (its agent is SIGKILLed and its containers removed) while a
   client sends a request through the edge of a surviving machine every 20 ms: snapshots show the
   instances moving, then the count of failed requests during the switch;
5. how to look around and tear down (or ``--down`` tears down at once).
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from controlplane import dev as devlib

HOST = "someapp.mywebsite.com"
EDGE_PORT = 8088
UNITS = ("edge", "web-lb", "web")  # deletion order
SHOW_ORDER = ("web", "web-lb", "edge")
SCENARIO = [
    ["run", "web", "--image", "local/web:latest", "--replicas", "2", "--port", "8080", "--health-http", "/"],
    ["run", "web-lb", "--lb", "web", "--replicas", "2", "--expose", "someapp"],
    ["run", "edge", "--edge", "mywebsite.com", "--port", f"80:{EDGE_PORT}", "--global"],
]
BOLD, DIM, GREEN, RED, RESET = ("\033[1m", "\033[2m", "\033[32m", "\033[31m", "\033[0m") if sys.stdout.isatty() \
    else ("", "", "", "", "")


def say(text: str = "") -> None:
    print(text, flush=True)


def step(number: int, title: str) -> None:
    say()
    say(f"{BOLD}== {number}. {title}{RESET}")


def cpctl(*args: str, check: bool = True, quiet: bool = False) -> subprocess.CompletedProcess[str]:
    """Run a real cpctl command, echoing it like a terminal transcript."""
    if not quiet:
        say(f"{DIM}${RESET} cpctl {' '.join(args)}")
    proc = subprocess.run([sys.executable, "-m", "controlplane.cli.main", *args], text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if not quiet:
        for line in proc.stdout.splitlines():
            say(f"  {line}")
    if check and proc.returncode != 0:
        raise SystemExit(f"demo: `cpctl {' '.join(args)}` failed with exit code {proc.returncode}")
    return proc


def who_answered(body: str) -> str:
    """``web-1@m2`` from the local/web page (``instance=web-1 machine=m2 ...``)."""
    instance = re.search(r"instance=([\w.-]+)", body)
    machine = re.search(r"machine=([\w.-]+)", body)
    return f"{instance.group(1) if instance else '?'}@{machine.group(1) if machine else '?'}"


def get(url: str, host: str = HOST, timeout: float = 2.0) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Host": host})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as err:
        return err.code, ""
    except OSError as err:
        return 0, str(err)


@dataclass
class Load:
    """A client that sends one request every ``interval`` seconds and keeps every result."""

    url: str
    interval: float = 0.02
    results: list[tuple[float, int, str]] = field(default_factory=list)  # (monotonic, status, who)
    stop_event: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self.stop_event.is_set():
            status, body = get(self.url)
            self.results.append((time.monotonic(), status, who_answered(body) if status == 200 else body[:80]))
            next_at += self.interval
            time.sleep(max(0.0, next_at - time.monotonic()))

    def stop(self) -> None:
        self.stop_event.set()
        if self.thread:
            self.thread.join(5)

    def failures(self, since: float = 0.0) -> list[tuple[float, int, str]]:
        return [r for r in self.results if r[0] >= since and r[1] != 200]


def placement(state: devlib.DevState) -> list[dict[str, Any]]:
    rows = []
    for inst in state.api("instances")["items"]:
        spec, status = inst.get("spec") or {}, inst.get("status") or {}
        ports = ", ".join(f"{p.get('hostPort')}->{p.get('containerPort')}" for p in status.get("hostPorts") or [])
        rows.append({"name": inst["metadata"]["name"], "unit": spec.get("unit", ""), "machine": spec.get("machine") or "-",
                     "phase": status.get("phase", "Pending"), "ready": bool(status.get("ready")),
                     "address": status.get("address") or "", "ports": ports})
    return sorted(rows, key=lambda r: (SHOW_ORDER.index(r["unit"]) if r["unit"] in SHOW_ORDER else 9, r["name"]))


def print_table(rows: list[dict[str, Any]], machine_states: dict[str, str]) -> None:
    say(f"  {'INSTANCE':<10}{'UNIT':<8}{'MACHINE':<9}{'MACHINE STATE':<15}{'PHASE':<10}{'READY':<7}LISTENS ON")
    for r in rows:
        listen = f"{r['address']}:{r['ports'].split('->')[0]}" if r["ports"] else ""
        say(f"  {r['name']:<10}{r['unit']:<8}{r['machine']:<9}{machine_states.get(r['machine'], '-'):<15}"
            f"{r['phase']:<10}{'yes' if r['ready'] else 'no':<7}{listen}")


def snapshot_line(rows: list[dict[str, Any]], machine_states: dict[str, str]) -> str:
    parts = []
    for r in rows:
        if r["unit"] == "edge":
            continue
        mark = "ok" if r["phase"] == "Running" and r["ready"] else r["phase"]
        parts.append(f"{r['name']}@{r['machine']}:{mark}")
    machines = " ".join(f"{m}:{'up' if s == 'Ready' else s}" for m, s in sorted(machine_states.items()))
    return f"{machines} | {'  '.join(parts)}"


def converged(state: devlib.DevState, victim: str) -> bool:
    """Every web and web-lb instance runs ready on a live machine, and no endpoint names the victim."""
    rows = placement(state)
    machines = state.machine_states()
    if machines.get(victim) == "Ready":
        return False
    for r in rows:
        if r["unit"] in ("web", "web-lb") and (r["machine"] == victim or r["phase"] != "Running" or not r["ready"]):
            return False
    for ep in state.api("endpoints")["items"]:
        if any(e.get("machine") == victim for e in ep.get("endpoints") or []):
            return False
    return True


@dataclass
class Entry:
    """Where the demo's client comes in: a machine other than the victim, through its edge."""

    victim: str  # the machine that runs web-0, killed in step 4
    machine: str
    address: str
    url: str


@dataclass
class Switch:
    """What the client saw around the kill: its results, when the kill was, when it converged."""

    load: Load
    killed_at: float
    done_at: float | None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m controlplane.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--down", action="store_true", help="tear the cluster down at the end")
    parser.add_argument("--machines", type=int, default=4)
    args = parser.parse_args(argv)
    started = time.monotonic()
    state = start_cluster(args.machines)
    step(2, "The scenario: a web app, a load balancer in front of it, an edge proxy on every machine")
    for command in SCENARIO:
        cpctl(*command)
    entry = show_placement(state)
    switch = kill_and_watch(state, entry)
    report(state, entry, switch, started)
    return next_steps(entry, switch, down=args.down)


def start_cluster(machines: int) -> devlib.DevState:
    """Step 1: ``cpctl dev up``, without the units an earlier demo left."""
    step(1, f"A local cluster: etcd, the API server and {machines} machines (agents), all on this host")
    cpctl("dev", "up", "--machines", str(machines))
    state = devlib.DevState.load(devlib.resolve_state_dir(None))
    if state is None:
        raise SystemExit("demo: dev up left no state behind")
    existing = {u["metadata"]["name"] for u in state.api("units")["items"]}
    if existing & set(UNITS):
        say("  (an earlier demo's units are there: removing them first)")
        for unit in UNITS:
            if unit in existing:
                cpctl("delete", "unit", unit, "--wait", quiet=True)
    cpctl("list-machines")
    return state


def show_placement(state: devlib.DevState) -> Entry:
    """Step 3: the placement table and a few requests through the edge of a machine that survives."""
    step(3, "Where everything landed")
    rows = placement(state)
    print_table(rows, state.machine_states())
    victim = next(r["machine"] for r in rows if r["name"] == "web-0")
    machine = next(m for m in state.machines if m != victim)
    address = f"127.0.1.{machine[1:]}"
    url = f"http://{address}:{EDGE_PORT}/"
    say()
    say("  A request for someapp.mywebsite.com goes: edge (every machine, port 8088) -> web-lb -> web.")
    say(f"  Try it yourself:  {BOLD}curl -H 'Host: {HOST}' {url}{RESET}")
    say()
    for _ in range(4):
        if shutil.which("curl"):
            body = subprocess.run(["curl", "-s", "-H", f"Host: {HOST}", url], capture_output=True, text=True,
                                  timeout=10).stdout
            status = 200 if "instance=" in body else 0
        else:
            status, body = get(url)
        say(f"  -> {status}  answered by {who_answered(body)}")
    return Entry(victim=victim, machine=machine, address=address, url=url)


def kill_and_watch(state: devlib.DevState, entry: Entry) -> Switch:
    """Step 4: kill the victim under load and print a snapshot whenever the placement changes."""
    victim = entry.victim
    step(4, f"Machine {victim} (it runs web-0) dies, while a client requests {entry.url} every 20 ms")
    load = Load(entry.url)
    load.start()
    time.sleep(1.0)
    agent_pid = state.agent(victim).pid
    killed_at = time.monotonic()
    removed = devlib.kill_machine(state, victim)
    say(f"  killed {victim}'s agent (pid {agent_pid}, SIGKILL) and its {removed} containers "
        f"(docker rm -f: web-0, a proxy or two)")
    say(f"  the API server declares a machine NotReady after {5}s without heartbeats, then reschedules")
    say()
    done_at: float | None = None
    last = ""
    while time.monotonic() - killed_at < 60:
        time.sleep(0.5)
        rows = placement(state)
        machine_states = state.machine_states()
        line = snapshot_line(rows, machine_states)
        t = time.monotonic() - killed_at
        failed = len(load.failures(killed_at))
        if line != last:
            say(f"  +{t:4.1f}s  {line}   [{len(load.results)} requests, {failed} failed]")
            last = line
        if done_at is None and converged(state, victim):
            done_at = time.monotonic()
            say(f"  {GREEN}+{t:4.1f}s  converged: every instance is running elsewhere and the proxies follow{RESET}")
            break
    if done_at is None:
        say(f"  {RED}not converged after 60 s: see `cpctl dev status` and the logs{RESET}")
    time.sleep(3.0)  # keep the client going a little after convergence
    load.stop()
    return Switch(load=load, killed_at=killed_at, done_at=done_at)


def report(state: devlib.DevState, entry: Entry, switch: Switch, started: float) -> None:
    """Step 5: how many requests failed during the switch, and who answers after it."""
    step(5, "What the client saw")
    load, killed_at, done_at = switch.load, switch.killed_at, switch.done_at
    total = len(load.results)
    during = [r for r in load.results if r[0] >= killed_at and (done_at is None or r[0] <= done_at)]
    after = [r for r in load.results if done_at is not None and r[0] > done_at]
    failures = load.failures(killed_at)
    say(f"  {total} requests through the edge on {entry.machine} ({entry.address}:{EDGE_PORT}), one every 20 ms")
    say(f"  during the switch ({(done_at or time.monotonic()) - killed_at:.1f} s from the kill to convergence): "
        f"{len(during)} requests, {BOLD}{len([r for r in during if r[1] != 200])} failed{RESET}")
    if failures:
        first, lastf = failures[0][0] - killed_at, failures[-1][0] - killed_at
        say(f"  failures between +{first:.2f}s and +{lastf:.2f}s: "
            + ", ".join(sorted({str(r[1]) if r[1] else r[2][:40] for r in failures})))
    if after:
        ok = sum(1 for r in after if r[1] == 200)
        who = sorted({r[2] for r in after if r[1] == 200})
        say(f"  after convergence: {ok}/{len(after)} answered 200, by {', '.join(who)}")
    say()
    print_table(placement(state), state.machine_states())
    say()
    say(f"  (took {time.monotonic() - started:.0f} s in all)")


def next_steps(entry: Entry, switch: Switch, *, down: bool) -> int:
    """Step 6: tear down (``--down``) or say how to look around; the exit status."""
    step(6, "Next")
    if down:
        cpctl("dev", "down")
        return 0 if not switch.load.failures(switch.killed_at) or switch.done_at else 1
    victim = entry.victim
    say(f"  The cluster is still up ({victim} stays dead). Look around:")
    say("    cpctl list-units  |  cpctl get instances -o wide  |  cpctl describe unit web  |  cpctl get events")
    say(f"    cpctl dev up       # brings {victim} back (restarts the dead agent)")
    say("    cpctl dev status   # processes, pids, logs, machines")
    say(f"  Tear everything down (processes, containers, state folder):  {BOLD}cpctl dev down{RESET}"
        "   (or: make demo-down)")
    return 0 if switch.done_at else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
