"""Waiting until units run: the goal of ``cpctl run``/``apply`` (and ``delete --wait``).

A unit is done when as many up-to-date instances as it wants are Running and ready (the
desired count of a global unit is the instances that exist, once at least one does). The
judgement is a pure function (``unit_progress``); the loop around it polls the API over one
keep-alive connection (two cached reads per unit), which is cheap for one CLI and never misses a
state: often while a container is most likely to become ready (every 25 ms, for one unit, during
the first 3 s), then every 0.1 s (``poll_interval``). Between polls a watch on the units'
instances wakes it as soon as one changes (cli/changes.py), so it sees an instance turn ready a
few ms after the API does instead of up to a poll later. On a terminal the progress is drawn with
rich (imported only here, only then); otherwise a plain line is printed each time it changes. A missed goal raises ``CLIError`` with exit 3 and names, per instance that
is not up, its phase and the scheduler's or agent's message.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from controlplane.errors import NotFound
from controlplane.model import template_of
from controlplane.timeline import mark

from .changes import InstanceChanges, watch_instances
from .common import WaitTimeout, ref
from .rest import RestClient
from .terminal import echo, safe_text

POLL_SECONDS = 0.1  # a poll is two cached reads on the server per unit: cheap
FAST_POLL_SECONDS = 0.025  # per unit waited for, at first: never above 80 reads/s (or the usual pace)
FAST_POLL_FOR = 3.0  # seconds: a local container is usually ready by then


def poll_interval(elapsed: float, units: int) -> float:
    """Pure: the pause before the next poll, ``elapsed`` seconds into a wait for ``units`` units."""
    if elapsed < FAST_POLL_FOR:
        return min(POLL_SECONDS, FAST_POLL_SECONDS * max(1, units))
    return POLL_SECONDS


@dataclass
class UnitProgress:
    name: str
    desired: int
    ready: int
    done: bool
    instances: list[dict[str, Any]] = field(default_factory=list)
    missing: bool = False  # the unit itself is gone

    def summary(self) -> str:
        if self.missing:
            return f"{ref('units', self.name)}: not found"
        return f"{ref('units', self.name)}: {self.ready}/{self.desired} ready"


def _up_to_date(instance: dict[str, Any], generation: int, unit_spec: dict[str, Any]) -> bool:
    """Of the unit's current generation, or carrying its current template: a scale bumps the
    generation but rolls nothing, and the controllers leave such an instance as it is."""
    spec = instance.get("spec") or {}
    if int(spec.get("generation") or 0) >= generation:
        return True
    return "template" in spec and spec["template"] == template_of(unit_spec)


def _is_up(instance: dict[str, Any]) -> bool:
    status = instance.get("status") or {}
    return status.get("phase") == "Running" and bool(status.get("ready"))


def unit_progress(unit: dict[str, Any], instances: list[dict[str, Any]]) -> UnitProgress:
    """Pure: how far ``unit`` is from every wanted instance being Running, ready and of its
    current generation."""
    meta, spec, status = unit.get("metadata") or {}, unit.get("spec") or {}, unit.get("status") or {}
    name = str(meta.get("name") or "")
    generation = int(meta.get("generation") or 0)
    mine = sorted(
        (i for i in instances if (i.get("spec") or {}).get("unit") == name),
        key=lambda i: (int((i.get("spec") or {}).get("index") or 0), (i.get("metadata") or {}).get("name", "")),
    )
    ready = sum(1 for i in mine if _is_up(i) and _up_to_date(i, generation, spec))
    if spec.get("global"):
        observed = int(status.get("observedGeneration") or 0) >= generation > 0
        desired = max(len(mine), int(status.get("replicas") or 0) if observed else 0, 1)
    else:
        replicas = spec.get("replicas")
        desired = int(replicas) if replicas is not None else 1
    return UnitProgress(name=name, desired=desired, ready=ready, done=ready >= desired, instances=mine)


def describe_instance(instance: dict[str, Any]) -> str:
    """``web-0: Pending: 0/4 machines: 2 conflict with web, ...`` (phase, reason, message)."""
    name = (instance.get("metadata") or {}).get("name", "?")
    status = instance.get("status") or {}
    phase = str(status.get("phase") or "Pending")
    if phase == "Running" and not status.get("ready"):
        phase = "Running, not ready"
    text = f"{name}: {phase}"
    if status.get("reason"):
        text += f" ({status['reason']})"
    message = " ".join(str(status.get("message") or "").split())
    if message:
        text += f": {message}"
    return text


def timeout_details(progress: list[UnitProgress]) -> list[str]:
    """The lines under the timeout error: each unfinished unit and its instances that are not up."""
    lines: list[str] = []
    for item in progress:
        if item.done:
            continue
        lines.append(f"  {item.summary()}")
        for inst in item.instances:
            if not _is_up(inst):
                lines.append(f"    {describe_instance(inst)}")
        missing = item.desired - len(item.instances)
        if missing > 0 and not item.missing:
            lines.append(f"    {missing} instance(s) not created yet (is a controller running?)")
    return lines


class Display(Protocol):
    def update(self, progress: list[UnitProgress]) -> None: ...
    def close(self) -> None: ...


class PlainDisplay:
    """One line per change, for pipes and logs."""

    def __init__(self) -> None:
        self._last: dict[str, str] = {}

    def update(self, progress: list[UnitProgress]) -> None:
        for item in progress:
            line = item.summary()
            if self._last.get(item.name) != line:
                self._last[item.name] = line
                echo(line)

    def close(self) -> None:
        pass


class RichDisplay:
    """A live block on a terminal: a line per unit and its instances that are not up."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.live import Live

        self._console = Console()
        self._live = Live(console=self._console, refresh_per_second=8, transient=False)
        self._live.start()

    def update(self, progress: list[UnitProgress]) -> None:
        from rich.text import Text

        text = Text()
        for item in progress:
            mark = "✓" if item.done else "…"
            text.append(safe_text(f"{mark} {item.summary()}", multiline=False) + "\n",
                        style="green" if item.done else "yellow")
            if not item.done:
                for inst in item.instances:
                    if not _is_up(inst):
                        text.append(safe_text(f"    {describe_instance(inst)}", multiline=False) + "\n", style="dim")
        self._live.update(text)

    def close(self) -> None:
        self._live.stop()


def make_display() -> Display:
    return RichDisplay() if sys.stdout.isatty() else PlainDisplay()


def unit_state(api: RestClient, name: str) -> tuple[UnitProgress, str]:
    """The unit's progress, and the resourceVersion its instances were listed at ("" when the
    unit is gone)."""
    try:
        unit = api.get("units", name)
    except NotFound:
        return UnitProgress(name=name, desired=0, ready=0, done=False, missing=True), ""
    instances, revision = api.list_all("instances", field_selector=f"spec.unit={name}")
    return unit_progress(unit, instances), revision


def wait_for_units(api: RestClient, names: list[str], *, timeout: float, display: Display | None = None) -> None:
    """Return when every unit in ``names`` is done; raise CLIError (exit 3) after ``timeout``."""
    if not names:
        return
    display = display or make_display()
    started = time.monotonic()
    deadline = started + timeout
    progress: list[UnitProgress] = []
    changes: InstanceChanges | None = None
    try:
        while True:
            states = [unit_state(api, name) for name in names]
            progress = [p for p, _ in states]
            display.update(progress)
            if all(p.done for p in progress):
                mark("cpctl.wait.done")
                return
            if time.monotonic() >= deadline:
                break
            now = time.monotonic()
            if changes is None:  # from the first list's revisions: no change between is missed
                changes = watch_instances(api, {n: rv for n, (_, rv) in zip(names, states, strict=True)},
                                          seconds=deadline - now)
            changes.wait(min(poll_interval(now - started, len(names)), max(0.0, deadline - now)))
    finally:
        display.close()
        if changes is not None:
            changes.close()
    undone = [p for p in progress if not p.done]
    raise WaitTimeout(
        f"timed out after {timeout:g}s waiting for " + ", ".join(ref("units", p.name) for p in undone),
        details=timeout_details(progress),
    )


def wait_for_deletion(api: RestClient, resource: str, name: str, *, timeout: float) -> None:
    """Until the object is gone and, for a unit, its instances too; exit 3 after ``timeout``."""
    deadline = time.monotonic() + timeout
    left: list[str] = []
    while True:
        left = []
        try:
            api.get(resource, name)
            left.append(ref(resource, name))
        except NotFound:
            pass
        if resource == "units":
            instances, _ = api.list_all("instances", field_selector=f"spec.unit={name}")
            left += [ref("instances", (i.get("metadata") or {}).get("name", "")) for i in instances]
        if not left or time.monotonic() >= deadline:
            break
        time.sleep(POLL_SECONDS)
    if left:
        raise WaitTimeout(f"timed out after {timeout:g}s waiting for the deletion of {', '.join(left)}")
