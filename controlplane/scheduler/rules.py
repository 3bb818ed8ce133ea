"""fleet's refused placement combinations, for the API's 422 causes.

These combinations can never be placed, or contradict each other, so the API refuses the unit
up front (fleet refused them too) rather than leaving it pending forever. Kept beside the
filters because it is the same rules read statically; ``schemas.UnitSpecSchema`` calls
``placement_causes`` so the rule lives here only.
"""

from __future__ import annotations

from collections.abc import Mapping
from fnmatch import fnmatchcase
from typing import Any

# fields are relative to the unit spec (the 422 cause says ``spec.placement.machine``, or
# ``spec.template.placement.machine`` inside an Instance)
MACHINE_FIELD = "placement.machine"
MACHINE_OF_FIELD = "placement.machineOf"
PIN_COMBINED = "machine (a pin) cannot be combined with conflicts, machineOf or global"
MACHINE_OF_GLOBAL = "machineOf cannot be combined with global"
MACHINE_OF_CONFLICTS = "machineOf {machine_of!r} is matched by this unit's own conflicts"


def placement_causes(spec: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(field, message)`` for each refused combination in a unit's ``spec`` (wire names:
    ``global``, ``placement``); empty if none. Fields are relative to the spec.

    Refused (fleet's rules): ``machine`` with ``conflicts``, ``machineOf`` or ``global`` (one
    cause); ``global`` with ``machineOf``; a ``machineOf`` that the unit's own ``conflicts`` match.
    """
    placement = spec.get("placement") or {}
    if not isinstance(placement, Mapping):
        return []
    machine = placement.get("machine") or ""
    machine_of = str(placement.get("machineOf") or "")
    conflicts = [str(c) for c in placement.get("conflicts") or ()]
    is_global = bool(spec.get("global", False))
    causes: list[tuple[str, str]] = []
    if machine and (conflicts or machine_of or is_global):
        causes.append((MACHINE_FIELD, PIN_COMBINED))
    if is_global and machine_of:
        causes.append((MACHINE_OF_FIELD, MACHINE_OF_GLOBAL))
    if machine_of and any(fnmatchcase(machine_of, pattern) for pattern in conflicts):
        causes.append((MACHINE_OF_FIELD, MACHINE_OF_CONFLICTS.format(machine_of=machine_of)))
    return causes
