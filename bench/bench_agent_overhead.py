"""CPU and memory (RSS) of one cp-agent running 50 containers (each with an HTTP readiness probe
every 2 s): idle over 20 s, and during two resyncs (10 containers removed behind its back until
all 50 are Running+ready again; a SIGKILLed agent restarted, over its first 10 s). Beside each
figure, from the same run and window: dockerd's CPU (the engine doing the work the agent asks
for) and the RSS of a bare Python process that merely imports the agent's libraries. No asserts.

Usage: .venv/bin/python bench/bench_agent_overhead.py [--containers 50] [--idle 20]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid

from _cluster import EtcdServer, LocalCluster, wait

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def dockerd_pid() -> int:
    return int(subprocess.run(["pidof", "dockerd"], capture_output=True, text=True, check=True).stdout.split()[0])


class Window:
    """CPU of the agent and dockerd, and the agent's peak RSS, over a window."""

    def __init__(self, agent: int) -> None:
        self.agent, self.docker = agent, dockerd_pid()
        self.t0 = time.monotonic()
        self.a0, self.d0 = cpu_seconds(agent), cpu_seconds(self.docker)
        self.peak = rss_mb(agent)

    def sample(self) -> None:
        self.peak = max(self.peak, rss_mb(self.agent))

    def report(self, what: str) -> None:
        self.sample()
        dt = time.monotonic() - self.t0
        a, d = cpu_seconds(self.agent) - self.a0, cpu_seconds(self.docker) - self.d0
        print(f"{what:<44} {dt:6.1f}s  agent CPU {a:6.2f}s ({100 * a / dt:5.1f}%)  "
              f"dockerd CPU {d:6.2f}s ({100 * d / dt:5.1f}%)  agent RSS peak {self.peak:6.1f} MB")


def all_ready(c: LocalCluster, n: int) -> bool:
    items = c.instances("many")
    return len(items) == n and all(i["status"].get("phase") == "Running" and i["status"].get("ready")
                                   for i in items)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--containers", type=int, default=50)
    parser.add_argument("--idle", type=float, default=20.0)
    args = parser.parse_args()
    n = args.containers
    bare = subprocess.Popen([sys.executable, "-c", "import aiohttp, aiodocker, asyncssh, click, yaml, agent.agent, "
                             "agent.main, time; time.sleep(60)"])
    with EtcdServer() as etcd, LocalCluster(etcd.url, f"/bench-oh/{uuid.uuid4().hex[:8]}", machines=1,
                                            machine_ttl=5) as c:
        time.sleep(2)
        bare_rss = rss_mb(bare.pid)
        bare.kill()
        start = time.monotonic()
        proc = c.cpctl("run", "many", "--image", "local/web:latest", "--replicas", str(n), "--spread", "none",
                       "--port", "8080", "--health-http", "/", "--timeout", "300", timeout=400)
        assert proc.returncode == 0, proc.stderr
        print(f"{n} containers Running+ready after {time.monotonic() - start:.1f}s")
        time.sleep(3)
        pid = c.agents["m1"].pid
        w = Window(pid)
        end = time.monotonic() + args.idle
        while time.monotonic() < end:
            time.sleep(1)
            w.sample()
        w.report(f"idle, {n} containers")

        ids = [x["ID"] for x in c.containers()][:10]
        w = Window(pid)
        subprocess.run(["docker", "rm", "-f", *ids], capture_output=True, check=True)
        wait(lambda: (w.sample(), len(c.containers()) == n and all_ready(c, n))[1], timeout=120, interval=0.1)
        w.report("10 removed behind its back -> all ready")

        c.kill_agent("m1")
        c.start_agent("m1")
        pid = c.agents["m1"].pid
        time.sleep(0.05)
        w = Window(pid)
        end = time.monotonic() + 10
        while time.monotonic() < end:
            time.sleep(0.5)
            w.sample()
        w.report("agent SIGKILLed + restarted, first 10 s")
        print(f"containers after the restart: {len(c.containers())} (adopted, none recreated: "
              f"{'yes' if len(c.containers()) == n else 'NO'})")
        print(f"baseline: bare Python importing the agent's libraries: RSS {bare_rss:.1f} MB")


if __name__ == "__main__":
    main()
