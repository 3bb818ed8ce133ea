"""Network partitions on loopback for fault tests: iptables rules that are always removed.

Every rule carries a comment naming this ``Partition`` (``cp-fault-<pid>-<n>``) and is deleted
again in ``heal()``, which ``__exit__`` calls (use it in a ``with`` block, or call ``heal()`` in
a ``finally``). Rules are as narrow as the test: by port, by source address, or by the uid a
process runs as -- other tests on this machine keep their traffic.

    with Partition() as cut:
        cut.port(member.peer_port)                  # nobody reaches that listener, both ways
        cut.uid_to_ports(UID, [p1, p2])             # connections of UID's processes to p1/p2, both ways
        cut.source("127.0.1.3", ports=[api_port])   # a machine's address to the API, both ways
        ...
        cut.heal()                                  # optional: heal before the block ends

Cutting one process off: run it as its own uid (``as_uid(uid)`` is the setpriv prefix; pick
one with ``spare_uid()``). Its packets to the cut ports are dropped by owner; the packets that
come back to it on its own connections (which carry no owner on loopback) are found through a
conntrack mark that its outgoing packets set, so established streams are cut too, not only new
connections. Everything on loopback goes through OUTPUT, so every rule lives there.
"""

from __future__ import annotations

import itertools
import os
import random
import shutil
import subprocess
from collections.abc import Iterable
from types import TracebackType

import pytest

_COUNTER = itertools.count(1)
IPTABLES = shutil.which("iptables") or "/usr/sbin/iptables"


def iptables_usable() -> str | None:
    """None when this process may add iptables rules; else why not (tests skip with it)."""
    if os.geteuid() != 0:
        return "fault tests need root (iptables)"
    if not os.path.exists(IPTABLES):
        return "iptables is not installed"
    done = subprocess.run([IPTABLES, "-w", "-S", "OUTPUT"], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return f"iptables does not work here: {done.stderr.strip()}"
    return None


def require_iptables() -> None:
    """Skip the calling test unless iptables rules can be added."""
    reason = iptables_usable()
    if reason is not None:
        pytest.skip(reason)


def spare_uid() -> int:
    """A uid no account and no other test is likely to use (processes may run as any number)."""
    return random.randint(61000, 63999)


def as_uid(uid: int) -> list[str]:
    """Command prefix that runs a program as ``uid`` (and gid ``uid``), without supplementary groups."""
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]


def _ports(ports: Iterable[int]) -> str:
    listed = sorted({int(p) for p in ports})
    if not listed or len(listed) > 15:
        raise ValueError(f"between 1 and 15 ports, got {listed}")
    return ",".join(str(p) for p in listed)


class Partition:
    """A set of DROP rules (see the module docstring); ``heal()`` removes every one of them."""

    def __init__(self) -> None:
        self.tag = f"cp-fault-{os.getpid()}-{next(_COUNTER)}"
        self._rules: list[tuple[str, str, list[str]]] = []  # (table, chain, rule), in insertion order

    def _run(self, action: str, table: str, chain: str, rule: list[str]) -> subprocess.CompletedProcess[str]:
        command = [IPTABLES, "-w", "-t", table, action, chain, *rule]
        return subprocess.run(command, capture_output=True, text=True, check=False, timeout=30)

    def add(self, *match: str, table: str = "filter", chain: str = "OUTPUT", target: list[str] | None = None) -> None:
        """Insert one rule at the top of ``chain``: ``match`` then ``target`` (DROP by default)."""
        rule = [*match, "-m", "comment", "--comment", self.tag, "-j", *(target or ["DROP"])]
        done = self._run("-I", table, chain, rule)
        if done.returncode != 0:
            raise RuntimeError(f"iptables -t {table} -I {chain} {' '.join(rule)}: {done.stderr.strip()}")
        self._rules.append((table, chain, rule))

    def port(self, port: int) -> None:
        """Every TCP packet to or from the listener on ``port`` (both directions, every peer)."""
        self.add("-p", "tcp", "--dport", str(port))
        self.add("-p", "tcp", "--sport", str(port))

    def uid_to_ports(self, uid: int, ports: Iterable[int]) -> None:
        """Connections that processes of ``uid`` make to ``ports``, both ways, established ones included."""
        listed = _ports(ports)
        mark = str(uid)
        self.add("-m", "owner", "--uid-owner", str(uid), table="mangle", target=["CONNMARK", "--set-mark", mark])
        self.add("-p", "tcp", "-m", "owner", "--uid-owner", str(uid), "-m", "multiport", "--dports", listed)
        self.add("-p", "tcp", "-m", "connmark", "--mark", mark, "-m", "multiport", "--sports", listed)

    def source(self, address: str, *, ports: Iterable[int]) -> None:
        """Traffic between ``address`` (a client's bound source address) and the listeners on ``ports``."""
        listed = _ports(ports)
        self.add("-p", "tcp", "-s", address, "-m", "multiport", "--dports", listed)
        self.add("-p", "tcp", "-d", address, "-m", "multiport", "--sports", listed)

    def heal(self) -> None:
        """Remove every rule this Partition added (newest first); safe to call twice."""
        errors = []
        while self._rules:
            table, chain, rule = self._rules.pop()
            done = self._run("-D", table, chain, rule)
            if done.returncode != 0:
                errors.append(f"iptables -t {table} -D {chain}: {done.stderr.strip()}")
        if errors:
            raise RuntimeError("; ".join(errors))

    def __enter__(self) -> Partition:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.heal()
