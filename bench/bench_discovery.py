"""How long from an Endpoints change until ``web.cp.internal:8080`` leads to the new instance?

Why this exists: issue 14 asks the stable name to follow a change of Endpoints within 1 s. This
measures it on a real cluster (etcd, cp-apiserver, three cp-agents, Docker), with the same-run
baseline of a direct connection to the new instance. No asserts.

``web`` has two instances (m2, m3), ready only while a file ``/www/ready`` exists (an HTTP probe
every 0.2 s). Each run makes the unready one ready and then the ready one unready, so the ready
instance moves. From this host (the service network of m1's agent is local here, as it is to
m1's containers) the bench resolves ``web.cp.internal`` through m1's resolver once, then sends
requests to the name's address back to back, each on a new connection, while a watch of the
Endpoints object stamps each change as it arrives. Figures:

* ``first-new``: from the Endpoints change that adds an instance to the first request through
  the name answered by it (a request counts from its start);
* ``baseline``: from the same change to a direct connection to that instance answering (what any
  client that watched Endpoints itself could do at best);
* ``drain``: from the change that removes an instance to the last request through the name that
  still reached it (0 when none did);
* per-request latency through the name against direct (the forwarder's cost).

Usage: .venv/bin/python bench/bench_discovery.py [--runs 20]   (as root: the agents add a route)
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import statistics
import subprocess
import threading
import time
import urllib.request
from typing import Any

from _cluster import EtcdServer, LocalCluster, wait
from client_image import build_client_image
from dnslib import DNSRecord  # type: ignore[import-untyped]

ANSWER = re.compile(rb"machine=(\w+)")


class BenchCluster(LocalCluster):
    def start_agent(self, machine: str, *, extra: list[str] | None = None) -> None:
        number = int(machine[1:])
        own = ["--service-cidr", f"10.236.{number}.0/24"] + (["--metadata", "role=web"] if number > 1 else [])
        super().start_agent(machine, extra=[*own, *(extra or [])])

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)  # type: ignore[arg-type]
        for machine in self.names:
            subprocess.run(["ip", "route", "del", "local", f"10.236.{machine[1:]}.0/24", "dev", "lo"],
                           capture_output=True, check=False)


def request(address: str, port: int) -> tuple[float, str, float]:
    """(start, machine that answered or "", seconds) of one GET on a new connection."""
    start = time.monotonic()
    try:
        with socket.create_connection((address, port), timeout=1.0) as sock:
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
    except OSError:
        return start, "", time.monotonic() - start
    found = ANSWER.search(data)
    return start, found.group(1).decode() if found else "", time.monotonic() - start


class EndpointsWatch(threading.Thread):
    """Stamps each change of Endpoints ``web``: (monotonic time, {machine: (address, port)})."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.changes: list[tuple[float, dict[str, tuple[str, int]]]] = []
        self.direct: list[float] = []  # baseline: change -> direct answer from the added instance
        self.lock = threading.Lock()

    def run(self) -> None:
        req = urllib.request.Request(f"{self.url}/api/v1/endpoints?watch=1&fieldSelector=metadata.name=web",
                                     headers={"Authorization": "Bearer admin-token"})
        with urllib.request.urlopen(req, timeout=600) as resp:
            for line in resp:
                stamp = time.monotonic()
                obj: dict[str, Any] = json.loads(line).get("object") or {}
                if (obj.get("metadata") or {}).get("name") != "web":
                    continue
                now = {e["machine"]: (e["address"], e["port"]) for e in obj.get("endpoints") or []}
                with self.lock:
                    before = self.changes[-1][1] if self.changes else {}
                    self.changes.append((stamp, now))
                for machine in set(now) - set(before):
                    _, answered, _ = request(*now[machine])
                    if answered == machine:
                        self.direct.append(time.monotonic() - stamp)

    def last(self) -> tuple[float, dict[str, tuple[str, int]]]:
        with self.lock:
            return self.changes[-1] if self.changes else (0.0, {})


def set_ready(container: str, ready: bool) -> None:
    command = "echo yes > /www/ready" if ready else "rm -f /www/ready"
    subprocess.run(["docker", "exec", container, "sh", "-c", command], check=True, capture_output=True)


def web_unit(image: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Unit", "metadata": {"name": "web"}, "spec": {
        "image": image, "replicas": 2,
        "ports": [{"containerPort": 8080}], "placement": {"machineMetadata": {"role": ["web"]}},
        "health": {"http": {"path": "/ready", "port": 8080}, "periodSeconds": 0.2, "failureThreshold": 1}}}


def post(url: str, obj: dict[str, Any]) -> None:
    req = urllib.request.Request(f"{url}/api/v1/units", data=json.dumps(obj).encode(), method="POST",
                                 headers={"Authorization": "Bearer admin-token", "Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=10).close()


def resolve(server: str, name: str) -> str:
    reply = DNSRecord.parse(DNSRecord.question(name).send(server, 53, timeout=2))
    return str(reply.rr[0].rdata)


def change_since(watch: EndpointsWatch, index: int, test: Any) -> float:
    """The stamp of the first Endpoints change after ``index`` that passes ``test`` (0: none yet)."""
    with watch.lock:
        return next((t for t, eps in watch.changes[index:] if test(eps)), 0.0)


def one_move(watch: EndpointsWatch, vip: str, new: str, old: str, containers: dict[str, str]) -> tuple[float, float]:
    """Make ``new`` ready, then ``old`` unready; (first-new, drain) in seconds."""
    index = len(watch.changes)
    set_ready(containers[new], True)
    answers: list[tuple[float, str, float]] = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        answers.append(request(vip, 8080))
        if answers[-1][1] == new and change_since(watch, index, lambda eps: new in eps):
            break
    added = change_since(watch, index, lambda eps: new in eps)
    first_new = min(s for s, m, _ in answers if m == new) - added
    index = len(watch.changes)
    set_ready(containers[old], False)
    answers.clear()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        answers.append(request(vip, 8080))
        removed = change_since(watch, index, lambda eps: old not in eps)
        if removed and time.monotonic() - removed > 0.3:
            break
    late = [s for s, m, _ in answers if m == old and s >= removed]
    return first_new, (max(late) - removed if late else 0.0)


def pct(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))]


def report(name: str, values: list[float]) -> str:
    return (f"{name:<44} median {statistics.median(values) * 1000:7.1f} ms   p99 {pct(values, 0.99) * 1000:7.1f} ms"
            f"   max {max(values) * 1000:7.1f} ms   (n={len(values)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    image = build_client_image()
    with EtcdServer() as etcd, BenchCluster(etcd.url, "/bench-discovery", machines=3, machine_ttl=5) as cluster:
        watch = EndpointsWatch(cluster.api.url)
        watch.start()
        post(cluster.api.url, web_unit(image))
        containers: dict[str, str] = {}
        for machine in ("m2", "m3"):
            found = wait(lambda m=machine: [c["ID"] for c in cluster.containers(m) if "cp.unit=web" in c["Labels"]])
            containers[machine] = found[0]
        set_ready(containers["m2"], True)
        wait(lambda: set(watch.last()[1]) == {"m2"})
        vip = resolve("10.236.1.1", "web.cp.internal")
        firsts: list[float] = []
        drains: list[float] = []
        old, new = "m2", "m3"
        for _ in range(args.runs):
            first_new, drain = one_move(watch, vip, new, old, containers)
            firsts.append(first_new)
            drains.append(drain)
            old, new = new, old
        direct = [request(*watch.last()[1][old])[2] for _ in range(200)]
        named = [request(vip, 8080)[2] for _ in range(200)]
        print(f"web.cp.internal -> {vip} (m1's resolver); {args.runs} moves of the ready instance")
        print(report("Endpoints adds X -> name answered by X", firsts))
        print(report("baseline: Endpoints adds X -> direct to X", watch.direct[-args.runs:]))
        print(report("Endpoints removes X -> last answer from X", drains))
        print(report("one request through the name", named))
        print(report("one request direct (baseline)", direct))


if __name__ == "__main__":
    main()
