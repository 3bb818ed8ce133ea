"""Service discovery on a real cluster (etcd, cp-apiserver, three cp-agents, Docker): issue 14's "done when".

A client container (``local/client``: tests/client_image.py) on m1, which runs no ``web``, fetches ``http://web.cp.internal:8080/`` and is
answered by ``web`` (on m2 or m3). Then the machine running ``web`` dies (agent and containers):
within the machine TTL plus 2 s the same URL, from the same container, answers from the
replacement. The three agents share this host's kernel, so each gets its own service network
(``--service-cidr 10.236.N.0/24``).
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from client_image import build_client_image  # noqa: E402
from cluster_fixture import LocalCluster  # noqa: E402

pytestmark = [pytest.mark.docker, pytest.mark.slow]

MACHINE_TTL = 3
URL = "http://web.cp.internal:8080/"
ANSWER = re.compile(r"instance=(\S+) machine=(\S+)")


class DiscoveryCluster(LocalCluster):
    """m1 unlabelled, the others ``role=web``; each agent on its own service network."""

    def start_agent(self, machine: str, *, extra: list[str] | None = None) -> None:
        number = int(machine[1:])
        own = ["--service-cidr", f"10.236.{number}.0/24"]
        if number > 1:
            own += ["--metadata", "role=web"]
        super().start_agent(machine, extra=[*own, *(extra or [])])

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)  # type: ignore[arg-type]
        for machine in self.names:  # a killed agent leaves its route behind (harmless, but not ours to keep)
            subprocess.run(["ip", "route", "del", "local", f"10.236.{machine[1:]}.0/24", "dev", "lo"],
                           capture_output=True, check=False)


def container_of(cluster: LocalCluster, unit: str) -> str:
    out = subprocess.run(["docker", "ps", "-q", "--filter", f"label=cp.cluster={cluster.cluster}",
                          "--filter", f"label=cp.unit={unit}"], capture_output=True, text=True, check=True)
    ids = out.stdout.split()
    return ids[0] if len(ids) == 1 else ""


def fetch_inside(container: str, url: str = URL) -> tuple[str, str] | None:
    """(instance, machine) that answered ``url`` from inside ``container``, or None. One try
    (``-t 1``): GNU wget otherwise retries an empty reply for seconds, with its own backoff."""
    proc = subprocess.run(["docker", "exec", container, "wget", "-qO-", "-T", "1", "-t", "1", url],
                          capture_output=True, text=True, timeout=10)
    found = ANSWER.search(proc.stdout)
    return (found.group(1), found.group(2)) if proc.returncode == 0 and found else None


def test_a_unit_reaches_web_by_name_and_follows_it_when_its_machine_dies(etcd, unique_prefix: str) -> None:  # type: ignore[no-untyped-def]
    client_image = build_client_image()  # GNU wget: busybox-static's crashes in containers
    with DiscoveryCluster(etcd.url, unique_prefix, machines=3, machine_ttl=MACHINE_TTL) as cluster:
        ran = cluster.cpctl("run", "web", "--image", "local/web:latest", "--replicas", "1", "--port", "8080",
                            "--constraint", "role=web", "--timeout", "60")
        assert ran.returncode == 0, ran.stderr + cluster.logs()
        ran = cluster.cpctl("run", "client", "--image", client_image, "--machine", "m1", "--timeout", "60",
                            "--", "sleep", "3600")
        assert ran.returncode == 0, ran.stderr + cluster.logs()
        client = cluster.wait_for(lambda: container_of(cluster, "client"), what="the client's container")
        first = cluster.wait_for(lambda: fetch_inside(client), timeout=15, what=f"{URL} from m1's client")
        assert first[0] == "web-0" and first[1] in ("m2", "m3"), first

        described = cluster.cpctl("describe", "unit", "web")
        assert described.returncode == 0, described.stderr
        assert "web.cp.internal:8080 -> 1 ready" in described.stdout, described.stdout
        assert f"web-0 on {first[1]} at {cluster.address(first[1])}:" in described.stdout, described.stdout

        killed = time.monotonic()
        cluster.kill_machine(first[1])  # its agent (SIGKILL), then its containers (docker rm -f)
        after = cluster.wait_for(lambda: (lambda got: got if got and got[1] != first[1] else None)(fetch_inside(client)),
                                 timeout=30, interval=0.05, what="an answer from the replacement")
        elapsed = time.monotonic() - killed
        print(f"answered again from {after} {elapsed:.2f}s after {first[1]} died (TTL {MACHINE_TTL}s)")
        assert after[1] in ("m2", "m3") and after[1] != first[1]
        assert elapsed <= MACHINE_TTL + 2.0, f"{elapsed:.2f}s > TTL + 2 s\n{cluster.logs()}"
