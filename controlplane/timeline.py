"""Timeline marks: where the time of one ``cpctl run`` goes, across processes.

With ``CP_TIMELINE=1`` in the environment, ``mark(what, ...)`` writes one line to stderr:
``timeline <monotonic seconds> <pid> <what> <details>``. ``time.monotonic()`` is one clock for
every process on a Linux machine, so the lines of cpctl, the API server (its controllers) and
the agents sort into one timeline (bench/bench_run_latency.py --timeline does that). Without
the variable a mark costs one boolean test. stdlib only and no logging import: cpctl uses it too
and its start-up is measured (bench/bench_cli_startup.py).
"""

from __future__ import annotations

import os
import sys
import time

ENV = "CP_TIMELINE"
ENABLED = os.environ.get(ENV, "") not in ("", "0")


def mark_line(what: str, details: tuple[object, ...], *, now: float, pid: int) -> str:
    """Pure: the line a mark writes."""
    text = " ".join(str(d) for d in details)
    return f"timeline {now:.6f} {pid} {what}" + (f" {text}" if text else "") + "\n"


def mark(what: str, *details: object) -> None:
    """One timeline line on stderr when ``CP_TIMELINE`` is set; nothing otherwise."""
    if ENABLED:
        sys.stderr.write(mark_line(what, details, now=time.monotonic(), pid=os.getpid()))
        sys.stderr.flush()


def parse_line(line: str) -> tuple[float, int, str, str] | None:
    """Pure: (time, pid, what, details) of a mark's line, None for any other line."""
    parts = line.rstrip("\n").split(" ", 4)
    if len(parts) < 4 or parts[0] != "timeline":
        return None
    try:
        return float(parts[1]), int(parts[2]), parts[3], parts[4] if len(parts) > 4 else ""
    except ValueError:
        return None
