"""How each typed write of a ``ClusterPlan`` reaches the registry: one call per ``WriteOp``.

Every write is a compare-and-swap through ``Registry.mutate`` (or a create/delete), and each
change function re-checks the object it is given, so a write planned from a slightly stale
snapshot never undoes what happened meanwhile (a bind keeps a binding made by someone else).
Creates go in bulk (``Registry.create_many``): 10,000 new instances are a few hundred etcd
transactions, not 10,000 round trips. Errors propagate to the manager, which logs and counts them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from controlplane.controllers.cluster import Write, WriteOp
from controlplane.errors import AlreadyExists
from controlplane.registry import Registry

Change = Callable[[dict[str, Any]], dict[str, Any] | None]


def set_state(state: str) -> Change:
    def change(obj: dict[str, Any]) -> dict[str, Any] | None:
        if (obj.get("status") or {}).get("state") == state:
            return None
        obj.setdefault("status", {})["state"] = state
        return obj
    return change


def unbind(machine: str) -> Change:
    def change(obj: dict[str, Any]) -> dict[str, Any] | None:
        if obj["spec"].get("machine") != machine:
            return None
        obj["spec"]["machine"] = ""
        obj["status"] = {**(obj.get("status") or {}), "phase": "Pending", "ready": False,
                         "reason": "Rescheduled", "message": f"machine {machine} went away"}
        return obj
    return change


def bind(machine: str, epoch: int) -> Change:
    def change(obj: dict[str, Any]) -> dict[str, Any] | None:
        if obj["spec"].get("machine"):
            return None  # bound meanwhile (another pass or leader): keep that binding
        obj["spec"]["machine"], obj["spec"]["epoch"] = machine, max(epoch, int(obj["spec"].get("epoch") or 0) + 1)
        obj["status"] = {**(obj.get("status") or {}), "phase": "Pending", "reason": "Scheduled",
                         "message": f"bound to {machine}", "reasons": {}}
        return obj
    return change


def replace_with(fresh: dict[str, Any]) -> Change:
    def change(obj: dict[str, Any]) -> dict[str, Any] | None:
        obj["spec"] = fresh["spec"]
        obj["status"] = fresh["status"]
        return obj
    return change


def set_status(status: dict[str, Any]) -> Change:
    def change(obj: dict[str, Any]) -> dict[str, Any] | None:
        obj["status"] = status
        return obj
    return change


async def write_endpoints(registry: Registry, unit: str, eps: list[dict[str, Any]]) -> None:
    if registry.find("endpoints", unit) is None:
        try:
            await registry.create("endpoints", {"metadata": {"name": unit, "labels": {}, "annotations": {}},
                                                "endpoints": eps})
            return
        except AlreadyExists:
            pass

    def change(obj: dict[str, Any]) -> dict[str, Any] | None:
        if obj.get("endpoints") == eps:
            return None
        obj["endpoints"] = eps
        return obj

    await registry.mutate("endpoints", unit, change)


def _payload(value: Any) -> Any:
    if value is None:
        raise ValueError("write without its payload")
    return value


WRITERS: dict[WriteOp, Callable[[Registry, Write], Awaitable[Any]]] = {
    WriteOp.MARK_NOT_READY: lambda reg, w: reg.mutate("machines", w.target, set_state("NotReady")),
    WriteOp.UNBIND: lambda reg, w: reg.mutate("instances", w.target, unbind(w.machine)),
    WriteOp.DELETE_INSTANCE: lambda reg, w: reg.delete("instances", w.target),
    WriteOp.REPLACE_INSTANCE: lambda reg, w: reg.mutate("instances", w.target, replace_with(_payload(w.instance))),
    WriteOp.BIND: lambda reg, w: reg.mutate("instances", w.target, bind(w.machine, w.epoch)),
    WriteOp.INSTANCE_STATUS: lambda reg, w: reg.mutate("instances", w.target, set_status(_payload(w.status))),
    WriteOp.UNIT_STATUS: lambda reg, w: reg.mutate("units", w.target, set_status(_payload(w.status))),
    WriteOp.ENDPOINTS: lambda reg, w: write_endpoints(reg, w.target, _payload(w.endpoints)),
    WriteOp.DELETE_ENDPOINTS: lambda reg, w: reg.delete("endpoints", w.target),
}


async def apply_batch(registry: Registry, batch: Sequence[Write]) -> None:
    """Apply one batch from ``batches``: all the creates in one bulk call, or one other write."""
    if batch[0].op is WriteOp.CREATE_INSTANCE:
        await registry.create_many("instances", [_payload(w.instance) for w in batch])
        return
    [write] = batch
    await WRITERS[write.op](registry, write)


_OP_ORDER = {op: i for i, op in enumerate(WriteOp)}


def batches(writes: Sequence[Write]) -> list[list[Write]]:
    """The calls ``writes`` take, in ``WriteOp`` order (plan order within an op): one per write,
    except the creates, which share one bulk call."""
    out: list[list[Write]] = []
    creates: list[Write] = []
    for write in sorted(writes, key=lambda w: _OP_ORDER[w.op]):
        if write.op is WriteOp.CREATE_INSTANCE:
            if not creates:
                out.append(creates)
            creates.append(write)
        else:
            out.append([write])
    return out
