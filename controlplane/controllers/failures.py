"""Writes the leader cannot make, reported on the objects they were for.

A write that etcd refuses for good (an object too large for it, or one that no longer validates
after an upgrade) must not stay a log line, and must not hold up anything else: the unit the write
belongs to gets a ``ReplicaFailure`` condition and a Warning Event (Kubernetes' ReplicaSet does the
same with ``FailedCreate``), and the condition is cleared by the first pass in which that unit's
writes all succeed. Pure: the manager applies what these functions return.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from controlplane.controllers.cluster import Write, WriteOp
from controlplane.errors import CPError, Invalid, RequestEntityTooLarge

FAILURE_CONDITION = "ReplicaFailure"
# failures that a retry cannot fix: reported on the object, not retried with backoff
PERMANENT = (RequestEntityTooLarge, Invalid)

_REASONS = {
    WriteOp.CREATE_INSTANCE: "FailedCreate",
    WriteOp.REPLACE_INSTANCE: "FailedUpdate",
    WriteOp.DELETE_INSTANCE: "FailedDelete",
}


@dataclass(frozen=True)
class WriteFailure:
    """A write for ``unit`` ("" when none) failed: ``message`` (short, for the condition) and
    ``detail`` (which write, for the Event and the log)."""

    unit: str
    reason: str
    message: str
    detail: str


def unit_of(write: Write, instances: Mapping[str, Mapping[str, Any]]) -> str:
    """The unit a write belongs to: its own target for unit writes, else its instance's unit."""
    if write.op in (WriteOp.UNIT_STATUS, WriteOp.ENDPOINTS, WriteOp.DELETE_ENDPOINTS):
        return write.target
    if write.instance is not None:
        return str(write.instance["spec"]["unit"])
    current = instances.get(write.target)
    return str((current or {}).get("spec", {}).get("unit", "")) if current is not None else ""


def failure_of(write: Write, error: CPError, instances: Mapping[str, Mapping[str, Any]]) -> WriteFailure:
    reason = _REASONS.get(write.op, "FailedWrite")
    short = error.causes[0].message if error.causes else error.message  # the why, without the name
    return WriteFailure(unit_of(write, instances), reason, short,
                        f"{write.op.value} {write.target} ({write.reason}) failed: {error.message}")


def with_failure(status: Mapping[str, Any], failure: WriteFailure | None, *, now: str) -> dict[str, Any] | None:
    """The unit status with its ``ReplicaFailure`` condition set to ``failure`` (or removed when
    ``failure`` is None); None when nothing changes."""
    conditions = [c for c in status.get("conditions") or [] if c.get("type") != FAILURE_CONDITION]
    current = next((c for c in status.get("conditions") or [] if c.get("type") == FAILURE_CONDITION), None)
    if failure is None:
        return None if current is None else {**status, "conditions": conditions}
    if current is not None and current.get("message") == failure.message:
        return None
    condition = {"type": FAILURE_CONDITION, "status": "True", "reason": failure.reason,
                 "message": failure.message, "lastTransitionTime": now}
    return {**status, "conditions": [*conditions, condition]}


def has_failure(status: Mapping[str, Any]) -> bool:
    return any(c.get("type") == FAILURE_CONDITION for c in status.get("conditions") or [])
