"""etcd's disk quota exhausted (the NOSPACE alarm): the API says so, and recovers once it is cleared.

etcd runs with a 16 MiB ``--quota-backend-bytes``; large keys written through the store under
another prefix fill it until etcd raises its NOSPACE alarm and refuses every write with
"mvcc: database space exceeded". Writes through the API must then be a readable Status -- 507
InsufficientStorage saying etcd's space quota is exhausted and what clears it -- not a 500, while
reads still work. Once an operator deletes the filler, compacts, defragments and disarms the
alarm, the next write succeeds.
"""

from __future__ import annotations

import asyncio

from apiserver_fixture import ApiServer
from etcd_fixture import EtcdServer
from machine_helper import call

from controlplane.store.etcd import EtcdStore

QUOTA = 16 * 1024 * 1024
CHUNK = b"x" * (512 * 1024)


def unit(name: str) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "Unit", "metadata": {"name": name}, "spec": {"image": "local/web:1"}}


async def fill(url: str, prefix: str) -> int:
    """Write 512 KiB keys under ``prefix`` until etcd refuses for space; how many were written."""
    store = await EtcdStore.open([url], prefix=prefix)
    try:
        for written in range(4 * QUOTA // len(CHUNK)):
            try:
                await store.put(f"filler/{written:04d}", CHUNK)
            except Exception as exc:  # InsufficientStorage, naming etcd's own words
                assert "database space exceeded" in str(exc), repr(exc)
                return written
        raise AssertionError("etcd took four times its quota")
    finally:
        await store.close()


async def empty(url: str, prefix: str, written: int) -> None:
    """Delete the filler (allowed under the alarm) and compact its history away."""
    store = await EtcdStore.open([url], prefix=prefix)
    try:
        for n in range(written):
            await store.delete(f"filler/{n:04d}")
        await store.compact(await store.revision())
    finally:
        await store.close()


def test_a_full_etcd_is_a_readable_507_and_writes_resume_once_it_is_cleared(unique_prefix: str) -> None:
    with EtcdServer(extra_args=["--quota-backend-bytes", str(QUOTA)]) as etcd, \
            ApiServer(etcd.url, unique_prefix, controllers=False) as api:
        assert call(api.url, "POST", "/api/v1/units", unit("before"))[0] == 201
        filler = unique_prefix + "-filler"
        written = asyncio.run(fill(etcd.url, filler))
        assert written > 0
        assert "NOSPACE" in etcd.etcdctl("alarm", "list")

        status, body = call(api.url, "POST", "/api/v1/units", unit("during"))
        assert status == 507, (status, body, api.log_tail())
        assert body["kind"] == "Status" and body["reason"] == "InsufficientStorage", body
        assert "space quota is exhausted" in body["message"] and "alarm disarm" in body["message"], body
        status, body = call(api.url, "PATCH", "/api/v1/units/before", {"spec": {"replicas": 2}},
                            content_type="application/merge-patch+json")
        assert status == 507 and body["reason"] == "InsufficientStorage", (status, body)
        assert call(api.url, "GET", "/api/v1/units/before")[0] == 200  # reads still work

        asyncio.run(empty(etcd.url, filler, written))
        etcd.etcdctl("defrag")
        etcd.etcdctl("alarm", "disarm")
        assert "NOSPACE" not in etcd.etcdctl("alarm", "list")
        status, body = call(api.url, "POST", "/api/v1/units", unit("after"))
        assert status == 201, (status, body, api.log_tail())
        assert call(api.url, "GET", "/api/v1/units/after")[0] == 200
