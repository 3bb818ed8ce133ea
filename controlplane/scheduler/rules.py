"""fleet's refused placement combinations, for the API's 422 causes.

These combinations can never be placed, or contradict each other, so the API refuses the unit
up front (fleet refused them too) rather than leaving it pending forever. Kept beside the
filters because it is the same rules read statically.
"""

from __future__ import annotations

from collections.abc import Mapping
from fnmatch import fnmatchcase
from typing import Any

PLACEMENT = "spec.placement"


def placement_causes(spec: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(field, message)`` for each refused combination in a unit's ``spec``; empty if none.

    Refused (fleet's rules): ``machine`` with ``conflicts``, ``machineOf`` or ``global``;
    ``global`` with ``machineOf``; a ``machineOf`` that the unit's own ``conflicts`` match.
    """
    placement = spec.get("placement") or {}
    if not isinstance(placement, Mapping):
        return []
    machine = placement.get("machine") or ""
    machine_of = placement.get("machineOf") or ""
    conflicts = [str(c) for c in placement.get("conflicts") or ()]
    is_global = bool(spec.get("global", False))
    causes: list[tuple[str, str]] = []
    if machine:
        if conflicts:
            causes.append((f"{PLACEMENT}.machine", f"may not be combined with {PLACEMENT}.conflicts"))
        if machine_of:
            causes.append((f"{PLACEMENT}.machine", f"may not be combined with {PLACEMENT}.machineOf"))
        if is_global:
            causes.append((f"{PLACEMENT}.machine", "may not be combined with spec.global"))
    if is_global and machine_of:
        causes.append((f"{PLACEMENT}.machineOf", "may not be combined with spec.global"))
    if machine_of:
        for pattern in conflicts:
            if fnmatchcase(str(machine_of), pattern):
                causes.append(
                    (
                        f"{PLACEMENT}.machineOf",
                        f"{machine_of!r} is matched by {PLACEMENT}.conflicts {pattern!r}: "
                        "the unit could never be placed",
                    )
                )
                break
    return causes
