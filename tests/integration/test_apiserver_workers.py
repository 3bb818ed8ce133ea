"""``cp-apiserver --workers N``: N server processes on one port, one leader among them, and the parent
that stops them all on SIGTERM (or when one of them dies).

Each request below opens a new connection, so the kernel's SO_REUSEPORT spreads them over the
workers (40 connections all reaching one of two workers has odds of 2^-39).
"""

from __future__ import annotations

import os
import re
import signal
import time
import urllib.request
from pathlib import Path
from typing import Any

from apiserver_fixture import ApiServer
from machine_helper import call, wait_for


def children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def metrics(api: ApiServer) -> str:
    req = urllib.request.Request(api.url + "/metrics", headers={"Authorization": f"Bearer {api.admin_token}",
                                                                 "Connection": "close"})
    with urllib.request.urlopen(req, timeout=2) as resp:
        return resp.read().decode()


def leader_values(api: ApiServer, tries: int = 40) -> set[float]:
    """The cp_leader values the workers answer over ``tries`` new connections."""
    seen: set[float] = set()
    for _ in range(tries):
        leader = re.search(r"^cp_leader ([0-9.]+)$", metrics(api), re.M)
        assert leader
        seen.add(float(leader.group(1)))
    return seen


def test_workers_share_the_port_one_leads_and_sigterm_stops_them_all(etcd: Any, unique_prefix: str) -> None:
    with ApiServer(etcd.url, unique_prefix, extra_args=["--workers", "2"]) as api:
        assert api.proc is not None
        workers = children(api.proc.pid)
        assert len(workers) == 2
        # with two workers, answers of both 0 and 1 mean one leads and the other does not
        wait_for(lambda: leader_values(api) == {0.0, 1.0}, timeout=15, what="one leading worker, one not")
        # a write through one connection is served by whichever worker the next one reaches
        status, _ = call(api.url, "POST", "/api/v1/units", {"metadata": {"name": "web"}, "spec": {"image": "x"}})
        assert status == 201
        wait_for(lambda: all(call(api.url, "GET", "/api/v1/units/web")[0] == 200 for _ in range(6)), timeout=5)

        started = time.monotonic()
        api.proc.send_signal(signal.SIGTERM)
        assert api.proc.wait(10) == 0
        assert time.monotonic() - started < 5
        assert not any(alive(pid) for pid in workers)


def test_a_worker_that_dies_stops_the_group(etcd: Any, unique_prefix: str) -> None:
    with ApiServer(etcd.url, unique_prefix, extra_args=["--workers", "2"], controllers=False) as api:
        assert api.proc is not None
        workers = children(api.proc.pid)
        os.kill(workers[0], signal.SIGKILL)
        assert api.proc.wait(10) == 1  # a supervisor restarts the whole group
        wait_for(lambda: not alive(workers[1]), timeout=5)
