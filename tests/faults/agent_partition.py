"""Cut one machine's agent off from the API server with iptables, one way or both, and always heal.

Agents connect from their machine's address (``--address 127.0.1.N``, agent/main.py), so a rule
by address touches that one machine and nothing else: the other agents, cpctl (127.0.0.1) and the
traffic through the proxies (other ports) keep flowing. The rules sit in ``INPUT``, where a
packet on loopback is received, so they drop packets the way a dead link does (no RST, no
EPERM to the sender):

- ``to_api``: packets from the machine to the API port (``-s ADDR --dport PORT``): its requests
  and its SYNs vanish;
- ``from_api``: packets from the API port to the machine (``-d ADDR --sport PORT``): the server
  hears it, the machine never hears back;
- ``both``: the two.

Every rule carries the comment ``cp-fault-agent-<id>``; ``heal()`` deletes exactly the rules it
added, and ``remove_leftovers()`` every rule tagged ``cp-fault-agent`` (a crashed test's), so no
rule outlives its test. Not the other helpers' partition.py (tests/faults/partition.py did not
exist on this branch when this was written): that one cuts etcd and API server traffic.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from types import TracebackType
from typing import Literal

import pytest

Direction = Literal["both", "to_api", "from_api"]
TAG = "cp-fault-agent"


def iptables_usable() -> str | None:
    """Why these rules cannot be used here (None: they can)."""
    if os.geteuid() != 0:
        return "needs root"
    if shutil.which("iptables") is None:
        return "needs iptables"
    probe = subprocess.run(["iptables", "-S", "INPUT"], capture_output=True, text=True)
    return None if probe.returncode == 0 else f"iptables does not work here: {probe.stderr.strip()}"


def skip_without_iptables() -> None:
    problem = iptables_usable()
    if problem:
        pytest.skip(f"agent partitions {problem}")


def partition_rules(address: str, api_port: int, direction: Direction, tag: str) -> list[list[str]]:
    """The INPUT rules (without -I/-D) that cut ``address`` from the API port. Pure."""
    comment = ["-m", "comment", "--comment", tag]
    to_api = ["INPUT", "-p", "tcp", "-s", address, "--dport", str(api_port), *comment, "-j", "DROP"]
    from_api = ["INPUT", "-p", "tcp", "-d", address, "--sport", str(api_port), *comment, "-j", "DROP"]
    return {"both": [to_api, from_api], "to_api": [to_api], "from_api": [from_api]}[direction]


class AgentPartition:
    """``with AgentPartition("127.0.1.2", api_port, "both"):`` -- or ``cut()`` and ``heal()``."""

    def __init__(self, address: str, api_port: int, direction: Direction) -> None:
        self.rules = partition_rules(address, api_port, direction, f"{TAG}-{uuid.uuid4().hex[:8]}")
        self.added: list[list[str]] = []

    def cut(self) -> None:
        try:
            for rule in self.rules:
                subprocess.run(["iptables", "-I", *rule], check=True, capture_output=True)
                self.added.append(rule)
        except BaseException:
            self.heal()
            raise

    def heal(self) -> None:
        while self.added:
            rule = self.added.pop()
            subprocess.run(["iptables", "-D", *rule], check=False, capture_output=True)

    def __enter__(self) -> AgentPartition:
        self.cut()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.heal()


def remove_leftovers() -> int:
    """Delete every INPUT rule tagged ``cp-fault-agent``; how many there were."""
    listed = subprocess.run(["iptables", "-S", "INPUT"], capture_output=True, text=True).stdout
    removed = 0
    for line in listed.splitlines():
        if TAG in line and line.startswith("-A INPUT "):
            args = line.split()[1:]  # "-A INPUT ..." -> "INPUT ..."
            subprocess.run(["iptables", "-D", *[a.strip('"') for a in args]], check=False, capture_output=True)
            removed += 1
    return removed
