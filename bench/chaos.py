"""Chaos: random faults under steady traffic and unit churn, invariants checked after each heals.

    .venv/bin/python bench/chaos.py --minutes 10 [--seed N] [--ttl 5]

The cluster (bench/_chaos.py): 3 etcd members, 2 cp-apiservers, 4 real agents on Docker (machines
127.0.1.1-4, which know both servers), the seed scenario (web x2, web-lb x2, an edge on every
machine). Throughout: two clients request ``someapp.mywebsite.com`` back to back through m1's
edge; a churn thread creates, scales and deletes ``churn-N`` units every 2 s (every write retried
until acknowledged); Docker is sampled every 100 ms. One fault at a time, chosen at random:

- an agent partitioned from both API servers (both ways, agent->API only, API->agent only;
  iptables by the machine's address; never m1, whose edge takes the traffic), healed once the
  machine fenced and web/web-lb run without it;
- an agent SIGKILLed and started again within a second (its containers keep running);
- a container SIGKILLed behind its agent's back;
- an etcd member SIGKILLed for 2-5 s;
- the leading API server SIGKILLed and started again within 2 s.

After each heal, with the churn paused: every machine is Ready again; every unit converges to
its replicas (each instance Running and ready on a Ready machine, its status naming the
container Docker runs; no Endpoint names a machine that is not Ready); every acknowledged write is what the API holds; no two running containers
ever carried one instance since the fault began; the edge answers 200. A fault *survived* when
all of these held. Per fault type it prints faults injected, survived, and the worst window of
failed requests (first failure to last, from the injection to the checks' end), the most
requests failed in one fault, and the worst recovery (heal to converged). Exit 1 on any
violation. Needs root and iptables (the partitions), Docker and the local images.
"""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _chaos import FAULTS, Churn, Rig, chaos_rig, write_problem  # noqa: E402
from agent_partition import iptables_usable, remove_leftovers  # noqa: E402
from agent_scenario import HOST, edge_answers, edge_url, ready_machines, wait_converged, wait_until  # noqa: E402
from fault_watch import EdgeLoad, duplicates, failures, window  # noqa: E402


@dataclass
class Outcome:
    kind: str
    detail: str
    problems: list[str]
    failed: int
    sent: int
    window: float
    recovery: float


@dataclass
class Tally:
    injected: int = 0
    survived: int = 0
    worst_window: float = 0.0
    worst_failed: int = 0
    worst_recovery: float = 0.0
    problems: list[str] = field(default_factory=list)

    def add(self, o: Outcome) -> None:
        self.injected += 1
        self.survived += not o.problems
        self.worst_window = max(self.worst_window, o.window)
        self.worst_failed = max(self.worst_failed, o.failed)
        self.worst_recovery = max(self.worst_recovery, o.recovery)
        self.problems += o.problems


def check_invariants(rig: Rig, churn: Churn, since: float) -> tuple[list[str], float]:
    """The invariants after a heal (the churn paused meanwhile); the problems, and when it converged."""
    problems: list[str] = []
    churn.pause()
    converged_at = time.monotonic()
    try:
        names = set(rig.cluster.names)
        try:
            wait_until(lambda: ready_machines(rig.api.get) == names, timeout=40, what="every machine Ready")
            wait_converged(rig.api.get, running=rig.docker, timeout=90)
        except AssertionError as err:
            problems.append(str(err))
        converged_at = time.monotonic()
        problems += [p for p in [write_problem(rig.api, churn.expected)] if p]
        problems += [f"write never acknowledged: {w}" for w in churn.never_acked]
        churn.never_acked.clear()
        dups = duplicates(rig.sampler.since(since))
        if dups:
            _, name, copies = dups[0]
            problems.append(f"{len(dups)} samples with duplicate running copies, first {name}: {copies}")
        url = edge_url(rig.cluster, rig.entry, rig.edge_port)
        try:
            wait_until(lambda: all(edge_answers(url) for _ in range(5)), timeout=15, what=f"{url} to answer 200")
        except AssertionError as err:
            problems.append(str(err))
    except (OSError, ValueError) as err:
        problems.append(f"checking failed: {err}")
    finally:
        churn.resume()
    return problems, converged_at


def run_fault(rig: Rig, churn: Churn, load: EdgeLoad, kind: str, rng: random.Random) -> Outcome:
    started = time.monotonic()
    try:
        detail, healed_at = FAULTS[kind](rig, rng)
        problems: list[str] = []
    except AssertionError as err:  # a wait inside the fault timed out: the fault was not survived
        detail, healed_at, problems = "did not heal as expected", time.monotonic(), [str(err)]
    more, converged_at = check_invariants(rig, churn, started)
    results = load.between(started, time.monotonic())
    return Outcome(kind, detail, problems + more, len(failures(results)), len(results), window(results),
                   converged_at - healed_at)


def faults(rng: random.Random, deadline: float) -> Iterator[str]:
    kinds = sorted(FAULTS)
    while time.monotonic() < deadline:
        yield rng.choice(kinds)


def table(tallies: dict[str, Tally], minutes: float, seed: int, load: EdgeLoad, churn: Churn, *,
          fences: list[float], ttl: int) -> str:
    lines = [
        f"chaos: {minutes:g} min, seed {seed}: {len(load.results)} requests through the edge, "
        f"{len(failures(list(load.results)))} failed; churn writes acknowledged {dict(churn.acked)}, "
        f"{churn.retries} retried",
        f"partitions: the cut-off machine ran nothing any more {max(fences):.1f} s after the cut at worst "
        f"(median {statistics.median(fences):.1f} s; machine TTL {ttl} s, fencing at 80 %)" if fences else "",
        "",
        "| fault | injected | survived | worst failed-request window | most requests failed | worst recovery |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for kind in sorted(FAULTS):
        t = tallies.get(kind, Tally())
        lines.append(f"| {kind} | {t.injected} | {t.survived} | {t.worst_window:.2f} s | {t.worst_failed} | "
                     f"{t.worst_recovery:.1f} s |")
    return "\n".join(lines)


def keep_logs(rig: Rig, where: Path) -> None:
    """The agents' and servers' logs, copied out of the cluster's folder before it is removed."""
    where.mkdir(parents=True, exist_ok=True)
    for log in rig.cluster.dir.glob("*.log"):
        shutil.copy(log, where / log.name)
    for n, api in enumerate(rig.apis, start=1):
        shutil.copy(api.log_path, where / f"apiserver-{n}.log")
    print(f"logs kept in {where}", file=sys.stderr)


def chaos(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    tallies: dict[str, Tally] = {}
    with chaos_rig(args.ttl) as rig:
        load = EdgeLoad(edge_url(rig.cluster, rig.entry, rig.edge_port), HOST, threads=2).start()
        churn = Churn(rig.api, random.Random(args.seed + 1))
        churn.start()
        try:
            time.sleep(2.0)
            for n, kind in enumerate(faults(rng, time.monotonic() + args.minutes * 60), start=1):
                outcome = run_fault(rig, churn, load, kind, rng)
                tallies.setdefault(kind, Tally()).add(outcome)
                verdict = "ok" if not outcome.problems else "VIOLATED: " + "; ".join(outcome.problems)
                print(f"{n:>3} {kind:<22} {outcome.detail}: {outcome.failed}/{outcome.sent} failed over "
                      f"{outcome.window:.2f}s, converged {outcome.recovery:.1f}s after the heal; {verdict}",
                      flush=True)
                time.sleep(rng.uniform(0.5, 2.0))
        finally:
            churn.stop()
            load.stop()
        print()
        print(table(tallies, args.minutes, args.seed, load, churn, fences=rig.fences, ttl=args.ttl))
        if any(t.problems for t in tallies.values()):
            keep_logs(rig, Path(f"/tmp/cp-chaos-logs-{args.seed}"))
    violations = [p for t in tallies.values() for p in t.problems]
    if violations:
        print(f"\n{len(violations)} invariant violations", file=sys.stderr)
    return 1 if violations else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=2.0, help="how long to inject faults")
    parser.add_argument("--seed", type=int, default=int(time.time()) % 100000)
    parser.add_argument("--ttl", type=int, default=5, help="machine TTL (the contract's default)")
    args = parser.parse_args()
    problem = iptables_usable()
    if problem:
        sys.exit(f"chaos: the partitions {problem}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # so `finally` heals and tears down
    remove_leftovers()
    try:
        code = chaos(args)
    finally:
        remove_leftovers()
    sys.exit(code)


if __name__ == "__main__":
    main()
