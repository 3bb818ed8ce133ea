"""``cp-apiserver --workers N``: N full API server processes on one port, and the parent that keeps them.

The API servers are stateless over etcd, so one machine's cores can each run one: every worker is
a whole cp-apiserver (its own watch caches, its own etcd connections, a candidate in the leader
election like any other server, so exactly one process of all of them leads) listening with
SO_REUSEPORT, and the kernel spreads the connections over them. The parent only starts them
(the same command line plus a hidden ``--worker-of PARENT_PID``), forwards SIGTERM, SIGINT and
SIGHUP, and waits: when one worker exits on its own the parent stops the others and exits with
its code, so a supervisor restarts the group as it would restart one server. A worker whose
parent dies gets SIGTERM from the kernel (PR_SET_PDEATHSIG), so none outlives a kill -9'd parent.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from types import FrameType

log = logging.getLogger("cp-apiserver")
STOP_GRACE = 10.0  # seconds the parent waits for stopped workers before it SIGKILLs them
POLL_SECONDS = 0.1
_PR_SET_PDEATHSIG = 1


def worker_command(argv: Sequence[str], parent: int) -> list[str]:
    """The command line of one worker: this server's own arguments, marked as a worker of ``parent``."""
    return [sys.executable, "-m", "controlplane.api.server", *argv, "--worker-of", str(parent)]


def die_with_parent(parent: int) -> None:
    """In a worker: get SIGTERM when the parent dies; exit now if it is already gone."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        sys.exit(1)


def _stop(procs: Sequence[subprocess.Popen[bytes]], sig: int = signal.SIGTERM) -> None:
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)


def _reap(procs: Sequence[subprocess.Popen[bytes]], *, grace: float = STOP_GRACE) -> None:
    """Wait for every worker to exit, SIGKILLing those still there after ``grace`` seconds."""
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("worker %d did not stop within %g s; killing it", proc.pid, grace)
            proc.kill()
            proc.wait()


def supervise(count: int, argv: Sequence[str]) -> int:
    """Run ``count`` workers until a signal stops them (0) or one exits on its own (its code, or 1)."""
    parent = os.getpid()
    procs = [subprocess.Popen(worker_command(argv, parent), stdin=subprocess.DEVNULL) for _ in range(count)]
    log.info("cp-apiserver started %d workers: %s", count, " ".join(str(p.pid) for p in procs))
    stopping: list[int] = []

    def forward(sig: int, _frame: FrameType | None) -> None:
        if sig != signal.SIGHUP:
            stopping.append(sig)
        _stop(procs, signal.SIGTERM if sig != signal.SIGHUP else signal.SIGHUP)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    try:
        while not stopping:
            exited = next((p for p in procs if p.poll() is not None), None)
            if exited is not None:
                log.error("worker %d exited with %d; stopping the other workers", exited.pid, exited.returncode)
                _stop(procs)
                _reap(procs)
                return exited.returncode if exited.returncode > 0 else 1
            time.sleep(POLL_SECONDS)
        _reap(procs)
        return 0
    finally:
        _stop(procs, signal.SIGKILL)  # only those still there: none, unless the parent itself failed
