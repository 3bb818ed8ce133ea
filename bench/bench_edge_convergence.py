"""Proxy convergence end to end: an instance becomes ready -> the edge routes to it.

A real 4-machine cluster (etcd, cp-apiserver, 4 cp-agents on Docker) runs the seed scenario:
`web` (2 replicas), `web-lb` (2 nginx load balancers, exposed as `someapp`) and a global `edge`.
Each run scales `web` from 2 to 3; the clock starts when the API shows `web-2` Running and ready
(seen by polling the API every 10 ms) and stops when a request through the edge is first answered
by `web-2` (the edge is polled every 10 ms, one request per poll; the 2 load balancers round-robin
over 3 backends, so the first poll that can reach web-2 does so with probability >= 1/3).
The path measured: the endpoints controller's pass, the Endpoints watch to both load balancers'
agents, their debounce (100 ms quiet), render, `nginx -t`, swap, reload and hash check.
Baseline in the same run: the time for one `nginx -s reload` round trip (render + apply of an
unchanged-but-restamped config is not possible, so we use `docker exec <lb> nginx -s reload` +
the first answer), i.e. the floor no config-driven proxy can beat. Then `web` goes back to 2.

    python bench/bench_edge_convergence.py [--runs 15]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
import urllib.request
import uuid

from _cluster import EtcdServer, LocalCluster, wait

EDGE_PORT = 18088


def through_edge(address: str) -> str:
    request = urllib.request.Request(f"http://{address}:{EDGE_PORT}/", headers={"Host": "someapp.mywebsite.com"})
    try:
        with urllib.request.urlopen(request, timeout=1) as resp:
            return resp.read().decode(errors="replace") if resp.status == 200 else ""
    except OSError:
        return ""


def ready(cluster: LocalCluster, name: str) -> bool:
    return any(i["metadata"]["name"] == name and i["status"]["phase"] == "Running" and i["status"]["ready"]
               for i in cluster.instances("web"))


def cpctl_ok(cluster: LocalCluster, *args: str) -> None:
    result = cluster.cpctl(*args)
    if result.returncode != 0:
        raise RuntimeError(f"cpctl {' '.join(args)}: {result.stderr or result.stdout}")


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    with EtcdServer() as etcd, LocalCluster(etcd.url, f"/bench-{uuid.uuid4().hex[:6]}", machines=4) as cluster:
        cpctl_ok(cluster, "run", "web", "--image", "local/web:latest", "--replicas", "2", "--port", "8080",
                 "--health-http", "/", "--timeout", "60")
        cpctl_ok(cluster, "run", "web-lb", "--lb", "web", "--replicas", "2", "--expose", "someapp", "--timeout", "60")
        cpctl_ok(cluster, "run", "edge", "--edge", "mywebsite.com", "--port", f"80:{EDGE_PORT}", "--global",
                 "--timeout", "60")
        edge = "127.0.1.1"
        wait(lambda: "web-" in through_edge(edge), timeout=30)
        lb = json.loads(subprocess.run(["docker", "ps", "--format", "{{json .}}", "--filter",
                                        f"label=cp.cluster={cluster.cluster}", "--filter", "label=cp.unit=web-lb"],
                                       capture_output=True, text=True, check=True).stdout.splitlines()[0])["ID"]
        ours: list[float] = []
        floor: list[float] = []
        for _ in range(args.runs):
            cpctl_ok(cluster, "scale", "web", "--replicas", "3")
            wait(lambda: ready(cluster, "web-2"), timeout=30, interval=0.01)
            started = time.perf_counter()
            wait(lambda: "web-2" in through_edge(edge), timeout=30, interval=0.01)
            ours.append(time.perf_counter() - started)
            started = time.perf_counter()
            subprocess.run(["docker", "exec", lb, "nginx", "-c", "/etc/cp-nginx/nginx.conf", "-s", "reload"],
                           capture_output=True, check=True)
            wait(lambda: "web-" in through_edge(edge), timeout=10, interval=0.01)
            floor.append(time.perf_counter() - started)
            cpctl_ok(cluster, "scale", "web", "--replicas", "2")
            wait(lambda: not any(i["metadata"]["name"] == "web-2" for i in cluster.instances("web")), timeout=30)
            wait(lambda: all("web-2" not in through_edge(edge) for _ in range(6)), timeout=30, interval=0.05)
        print(f"runs: {args.runs}, 4 machines, web 2 -> 3 replicas, edge on {edge}:{EDGE_PORT}")
        print(f"instance ready -> edge routes to it: median {statistics.median(ours) * 1000:.0f} ms, "
              f"p99 {p99(ours) * 1000:.0f} ms, max {max(ours) * 1000:.0f} ms (goal < 1 s)")
        print(f"baseline (nginx -s reload by hand -> answered): median {statistics.median(floor) * 1000:.0f} ms, "
              f"p99 {p99(floor) * 1000:.0f} ms")
        print(f"ratio of medians: {statistics.median(ours) / statistics.median(floor):.1f}x")


if __name__ == "__main__":
    main()
