"""Objects the leader cannot write never hold up the others (real etcd, a real cp-apiserver).

The units are put straight into etcd, as an older version (before the API's 256 KiB object limit)
could have left them: one of 700 kB, and one just within the limit whose instance is not. A normal unit
beside them must still reach its replicas; the refused one says why on itself (a ReplicaFailure
condition and a FailedCreate Event).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from apiserver_fixture import ApiServer
from machine_helper import FakeMachines, call, wait_for

from controlplane.model import MAX_OBJECT_BYTES, new_instance
from controlplane.store import open_store


@pytest.fixture
def api(etcd: Any, unique_prefix: str) -> Iterator[ApiServer]:
    with ApiServer(etcd.url, unique_prefix, machine_ttl=3) as server:
        yield server


def _unit(name: str, env_bytes: int, replicas: int) -> bytes:
    unit = {"apiVersion": "v1", "kind": "Unit",
            "metadata": {"name": name, "uid": str(uuid.uuid4()), "generation": 1, "labels": {}, "annotations": {},
                         "creationTimestamp": "2026-01-01T00:00:00.000000Z"},
            "spec": {"image": "local/web:latest", "command": [], "env": {"BLOB": "x" * env_bytes}, "ports": [],
                     "replicas": replicas, "global": False, "resources": {"cpu": 0.0, "memoryMB": 0},
                     "restartPolicy": "Always",
                     "placement": {"spread": "preferred", "conflicts": [], "machineMetadata": {}, "machineOf": "",
                                   "machine": ""}},
            "status": {"replicas": 0, "readyReplicas": 0, "observedGeneration": 0, "conditions": []}}
    return json.dumps(unit, separators=(",", ":")).encode()


MID = "mid" + "-long" * 11  # a long name: an instance repeats it more often than its unit does
CONDITION_ROOM = 220  # bytes a ReplicaFailure condition (its message: the why, ~80 bytes) adds to the unit


def _instance_of(unit: bytes) -> bytes:
    """The instance the leader makes of ``unit``, encoded as the registry stores it (unchecked)."""
    obj = new_instance(json.loads(unit), f"{MID}-0", 0, "m1")
    obj["metadata"].update(uid=str(uuid.uuid4()), creationTimestamp="2026-01-01T00:00:00.000000Z", generation=1)
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def _mid_env_bytes() -> int:
    """An env size at which the unit (with room for its condition) is within the object size limit
    and its instance is not."""
    for size in range(MAX_OBJECT_BYTES - 2000, MAX_OBJECT_BYTES):
        unit = _unit(MID, size, 1)
        if len(_instance_of(unit)) > MAX_OBJECT_BYTES:
            assert len(unit) + CONDITION_ROOM <= MAX_OBJECT_BYTES, "no size fits: lengthen MID"
            return size
    raise AssertionError("no size found")


def _put_units_in_etcd(etcd_url: str, prefix: str) -> None:
    """``big`` (700 kB, as an older version without the 256 KiB limit could leave it: no
    instance of it can be written, nor its own status) and ``mid`` (within the limit, its
    instance just over it)."""

    async def put() -> None:
        store = open_store(etcd_url, prefix=prefix)
        await store.connect()
        try:
            await store.create("units/big", _unit("big", 700_000, 2))
            await store.create(f"units/{MID}", _unit(MID, _mid_env_bytes(), 1))
        finally:
            await store.close()

    asyncio.run(put())


def _instances_of(api: ApiServer, unit: str) -> list[dict[str, Any]]:
    status, obj = call(api.url, "GET", "/api/v1/instances")
    assert status == 200, obj
    return [i for i in obj["items"] if i["spec"]["unit"] == unit and i["spec"]["machine"]]


def _events(api: ApiServer, unit: str, reason: str) -> list[dict[str, Any]]:
    _, events = call(api.url, "GET", "/api/v1/events")
    return [e for e in events["items"] if e["involvedObject"] == {"kind": "Unit", "name": unit}
            and e["reason"] == reason]


def test_units_the_leader_cannot_write_do_not_stop_a_normal_one(api: ApiServer, etcd: Any, unique_prefix: str) -> None:
    with FakeMachines(api.url, ["m1", "m2", "m3"]):
        _put_units_in_etcd(etcd.url, unique_prefix)
        body = {"apiVersion": "v1", "kind": "Unit", "metadata": {"name": "web"},
                "spec": {"image": "local/web:latest", "replicas": 2}}
        status, obj = call(api.url, "POST", "/api/v1/units", body)
        assert status == 201, obj
        wait_for(lambda: len(_instances_of(api, "web")) == 2, timeout=15, what="web bound twice")

        # mid: its instance is refused; the unit says why, as a condition and an Event
        def failure_condition() -> dict[str, Any] | None:
            _, unit = call(api.url, "GET", f"/api/v1/units/{MID}")
            conditions = (unit.get("status") or {}).get("conditions") or []
            return next((c for c in conditions if c["type"] == "ReplicaFailure"), None)

        condition = wait_for(failure_condition, timeout=15, what="ReplicaFailure on mid")
        assert condition["status"] == "True" and condition["reason"] == "FailedCreate"
        assert "over the limit" in condition["message"]
        events = wait_for(lambda: _events(api, MID, "FailedCreate"), timeout=10, what="FailedCreate on mid")
        assert events[0]["type"] == "Warning" and f"{MID}-0" in events[0]["message"]

        # big: not even its own status can be written; the Event still says why, once
        events = wait_for(lambda: _events(api, "big", "FailedCreate"), timeout=10, what="FailedCreate on big")
        assert "big-0" in events[0]["message"] or "big-1" in events[0]["message"]
        assert _instances_of(api, "big") == [] and _instances_of(api, MID) == []
        time.sleep(2)  # passes go on (a resync at least); the same failure is not reported again
        assert len(_events(api, "big", "FailedCreate")) == 1
        _, web = call(api.url, "GET", "/api/v1/units/web")
        assert web["status"]["replicas"] == 2
