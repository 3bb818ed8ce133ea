"""Fixtures of the fault tests (tests/faults): real processes, cut apart with iptables on loopback.

- ``partition``: a fresh ``Partition`` whose rules are removed after the test, pass or fail; a
  test that takes it is skipped unless it runs as root with a working iptables (partition.py);
- at the end of the session, any rule this process left behind (a test killed in the middle
  of a ``with``) is removed too.

The shared fixtures (``etcd``, ``etcd_cluster``, ``unique_prefix``, ``apiserver``) come from
tests/conftest.py; tests/faults/partition.py is importable as ``partition``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from partition import IPTABLES, Partition, iptables_usable, require_iptables  # noqa: E402


@pytest.fixture
def partition() -> Iterator[Partition]:
    require_iptables()
    cut = Partition()
    try:
        yield cut
    finally:
        cut.heal()


def _leftover_rules(tag_prefix: str) -> list[tuple[str, list[str]]]:
    """(table, rule as printed by -S) of every rule whose comment starts with ``tag_prefix``."""
    found = []
    for table in ("filter", "mangle"):
        done = subprocess.run([IPTABLES, "-w", "-t", table, "-S"], capture_output=True, text=True, check=False)
        for line in done.stdout.splitlines():
            if line.startswith("-A ") and tag_prefix in line:
                found.append((table, line.split()[1:]))
    return found


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if iptables_usable() is not None:
        return
    for table, rule in _leftover_rules(f"cp-fault-{os.getpid()}-"):
        # -S prints the comment quoted only when it has spaces; ours has none, so split() is exact
        subprocess.run([IPTABLES, "-w", "-t", table, "-D", *rule], capture_output=True, check=False)
