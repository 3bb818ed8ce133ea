"""Objects the leader cannot write never hold up the others (real etcd, a real cp-apiserver).

The big units are put straight into etcd, as an older version (before the API's object size
limit) would have left them: one of 700 kB, whose instances etcd still takes one at a time but
not 64 to a transaction, and one just under etcd's request limit, whose instance etcd refuses. A normal unit
beside them must still reach its replicas; the refused one says why on itself (a ReplicaFailure
condition and a FailedCreate Event).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from apiserver_fixture import ApiServer
from machine_helper import FakeMachines, call, wait_for

from controlplane.errors import RequestEntityTooLarge
from controlplane.model import new_instance
from controlplane.registry import encode
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


HUGE = "huge" + "-long" * 11  # a long name: an instance repeats it more often than its unit does


def _instance_of(unit: bytes) -> bytes:
    """The instance the leader makes of ``unit``, encoded as the registry stores it."""
    obj = new_instance(json.loads(unit), f"{HUGE}-0", 0, "m1")
    obj["metadata"].update(uid=str(uuid.uuid4()), creationTimestamp="2026-01-01T00:00:00.000000Z", generation=1)
    return encode(dict(obj))


def _put_units_in_etcd(etcd_url: str, prefix: str) -> None:
    """``big`` (700 kB) and ``huge``: so large that etcd refuses its instance (found with puts of
    that instance to a key of the same length outside every resource), while the unit itself,
    and the unit with a condition, still fit."""

    async def put() -> None:
        store = open_store(etcd_url, prefix=prefix)
        await store.connect()
        probe = "probeprobe/" + f"{HUGE}-0"[1:]  # as long as instances/<name>-0
        try:
            await store.create("units/big", _unit("big", 700_000, 2))
            low, high = 1_000_000, 2_000_000
            while high - low > 4:
                middle = (low + high) // 2
                try:
                    await store.create(probe, _instance_of(_unit(HUGE, middle, 1)))
                except RequestEntityTooLarge:
                    high = middle
                    continue
                await store.delete(probe)
                low = middle
            await store.create(f"units/{HUGE}", _unit(HUGE, high + 8, 1))
        finally:
            await store.close()

    asyncio.run(put())


def _instances_of(api: ApiServer, unit: str) -> list[dict[str, Any]]:
    status, obj = call(api.url, "GET", "/api/v1/instances")
    assert status == 200, obj
    return [i for i in obj["items"] if i["spec"]["unit"] == unit and i["spec"]["machine"]]


def test_big_and_unwritable_units_do_not_stop_a_normal_one(api: ApiServer, etcd: Any, unique_prefix: str) -> None:
    with FakeMachines(api.url, ["m1", "m2", "m3"]):
        _put_units_in_etcd(etcd.url, unique_prefix)
        body = {"apiVersion": "v1", "kind": "Unit", "metadata": {"name": "web"},
                "spec": {"image": "local/web:latest", "replicas": 2}}
        status, obj = call(api.url, "POST", "/api/v1/units", body)
        assert status == 201, obj

        wait_for(lambda: len(_instances_of(api, "web")) == 2, timeout=15, what="web bound twice")
        wait_for(lambda: len(_instances_of(api, "big")) == 2, timeout=15, what="big bound twice")

        def failure_condition() -> dict[str, Any] | None:
            _, unit = call(api.url, "GET", f"/api/v1/units/{HUGE}")
            conditions = (unit.get("status") or {}).get("conditions") or []
            return next((c for c in conditions if c["type"] == "ReplicaFailure"), None)

        condition = wait_for(failure_condition, timeout=15, what="ReplicaFailure on huge")
        assert condition["status"] == "True" and condition["reason"] == "FailedCreate"
        assert "too large" in condition["message"]
        assert _instances_of(api, HUGE) == []

        def failed_create_events() -> list[dict[str, Any]]:
            _, events = call(api.url, "GET", "/api/v1/events")
            return [e for e in events["items"] if e["involvedObject"] == {"kind": "Unit", "name": HUGE}
                    and e["reason"] == "FailedCreate"]

        events = wait_for(failed_create_events, timeout=10, what="FailedCreate event")
        assert events[0]["type"] == "Warning" and f"{HUGE}-0" in events[0]["message"]
        # the unit's readiness counts are still kept: the pass went on around the failure
        _, web = call(api.url, "GET", "/api/v1/units/web")
        assert web["status"]["replicas"] == 2
