"""What wakes cpctl's wait between two polls: a watch on the instances of each unit it waits for.

The wait (cli/wait.py) judges only from its polls; a poll costs two cached reads per unit, so it
polls every 25-100 ms, and so saw an instance turn ready up to that long after the API held it.
``InstanceChanges`` follows the instances of each unit on a watch of its own (``fieldSelector
spec.unit=NAME``, from the resourceVersion of the wait's first list), each read by a daemon
thread on its own connection (a ``RestClient`` of its own: the threads share nothing with the
wait's client but the settings), and wakes the wait as soon as any event arrives; the wait then
polls again at once. The polls stay as they were, so a watch that cannot be opened, breaks or
ends (its server gone, a 410, the wait's deadline) only costs the old latency, never a change
seen late or missed, and no error of a watch is ever shown.

The watch is a shortcut, not the judge: it follows at most ``MAX_WATCHED_UNITS`` units (a wait
for more is left to its polls), and a poll it wakes comes at least ``MIN_POLL_GAP`` seconds after
the one before.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping

from .rest import RestClient

MAX_WATCHED_UNITS = 8  # more units than this are waited for by polling alone
MIN_POLL_GAP = 0.005  # seconds between a wake-up and the poll before it: bounds a storm of events


class InstanceChanges:
    """Set when an instance of one of the watched units changes; ``wait`` sleeps until then."""

    def __init__(self) -> None:
        self.changed = threading.Event()
        self.closed = threading.Event()
        self.threads: list[threading.Thread] = []

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``, less when a change arrives (then at least ``MIN_POLL_GAP``); True
        when woken by a change. The flag is cleared, so a change during the next poll wakes the
        wait after it."""
        started = time.monotonic()
        woken = self.changed.wait(max(0.0, seconds))
        self.changed.clear()
        if woken:
            left = MIN_POLL_GAP - (time.monotonic() - started)
            if left > 0:
                time.sleep(left)
        return woken

    def close(self) -> None:
        """The threads stop at their next event or when their watch ends (they are daemons: a
        process that exits does not wait for them)."""
        self.closed.set()

    def follow(self, api: RestClient, unit: str, revision: str, *, seconds: float) -> None:
        """Start a thread watching the instances of ``unit`` after ``revision`` for ``seconds``."""
        client = RestClient(api.servers.attempts(), token=api.token, ca=api.ca, timeout=api.timeout)
        thread = threading.Thread(target=self._read, args=(client, unit, revision, seconds),
                                  name=f"watch-{unit}", daemon=True)
        self.threads.append(thread)
        thread.start()

    def _read(self, client: RestClient, unit: str, revision: str, seconds: float) -> None:
        try:
            for event in client.watch("instances", resource_version=revision, field_selector=f"spec.unit={unit}",
                                      timeout_seconds=max(1, int(seconds) + 1)):
                if self.closed.is_set():
                    return
                if event.get("type") != "BOOKMARK":
                    self.changed.set()
        except Exception:  # noqa: BLE001 - a broken watch only leaves the wait to its polls
            return
        finally:
            client.close()


def watch_instances(api: RestClient, revisions: Mapping[str, str], *, seconds: float) -> InstanceChanges:
    """An ``InstanceChanges`` following each unit of ``revisions`` (unit -> the resourceVersion of
    its instances as last listed) for ``seconds``; one that never wakes for more than
    ``MAX_WATCHED_UNITS`` units or a unit whose revision is unknown (it polls alone)."""
    changes = InstanceChanges()
    if len(revisions) <= MAX_WATCHED_UNITS:
        for unit, revision in revisions.items():
            if revision:
                changes.follow(api, unit, revision, seconds=seconds)
    return changes
