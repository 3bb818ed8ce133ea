"""The REST API against a real etcd: the contract of CONTRACT.md, call by call.

Most tests run the application in-process (aiohttp's test server) over an ``EtcdStore`` on the
session etcd under a prefix of their own, and check etcd directly where "nothing was written"
matters. Process-level behaviour (refusing to start without auth) uses the real
``cp-apiserver``; etcd-down tests stop an etcd of their own.
"""

from __future__ import annotations

import asyncio
import collections
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from apiserver_fixture import write_private
from etcd_fixture import EtcdServer
from inproc_api import ADMIN, NODE_M1, VIEWER, Api, assert_status, start_api, stop_api, unit

from controlplane.api.state import BOOKMARK_SECONDS, REGISTRY
from controlplane.store.etcd import EtcdStore

# ---------------------------------------------------------------- list, get, create


async def test_list_label_and_field_selectors(api: Api) -> None:
    await api.create_unit("web", labels={"app": "web", "tier": "front"}, replicas=2)
    await api.create_unit("api", labels={"app": "api", "tier": "front"})
    await api.create_unit("db", labels={"app": "db", "tier": "back"}, restartPolicy="Never")

    async def names(query: str) -> list[str]:
        status, body = await api.call("GET", "/api/v1/units" + query)
        assert status == 200, body
        assert body["kind"] == "UnitList" and body["apiVersion"] == "v1"
        assert int(body["metadata"]["resourceVersion"]) > 0
        return [item["metadata"]["name"] for item in body["items"]]

    assert await names("") == ["api", "db", "web"]
    assert await names("?labelSelector=tier%3Dfront") == ["api", "web"]
    assert await names("?labelSelector=tier!%3Dfront") == ["db"]
    assert await names("?labelSelector=app+in+(web,db)") == ["db", "web"]
    assert await names("?labelSelector=app+notin+(web,db)") == ["api"]
    assert await names("?labelSelector=tier,!missing") == ["api", "db", "web"]
    assert await names("?labelSelector=!tier") == []
    assert await names("?fieldSelector=spec.replicas%3D2") == ["web"]
    assert await names("?fieldSelector=spec.restartPolicy!%3DNever&labelSelector=tier%3Dfront") == ["api", "web"]
    assert await names("?fieldSelector=metadata.name%3Ddb") == ["db"]
    status, body = await api.call("GET", "/api/v1/units?labelSelector=a+b+c")
    assert_status(body, 400, "BadRequest")
    status, body = await api.call("GET", "/api/v1/units?fieldSelector=spec.replicas")
    assert_status(body, 400, "BadRequest")


async def test_list_paging(api: Api) -> None:
    for i in range(7):
        await api.create_unit(f"u{i}", labels={"odd": str(i % 2)})
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        query = "?limit=3" + (f"&continue={token}" if token else "")
        status, body = await api.call("GET", "/api/v1/units" + query)
        assert status == 200
        pages += 1
        assert len(body["items"]) <= 3
        seen += [i["metadata"]["name"] for i in body["items"]]
        token = body["metadata"].get("continue", "")
        if not token:
            break
    assert seen == [f"u{i}" for i in range(7)] and pages == 3
    # paging with a selector pages over the matching objects only
    status, body = await api.call("GET", "/api/v1/units?limit=2&labelSelector=odd%3D1")
    assert [i["metadata"]["name"] for i in body["items"]] == ["u1", "u3"]
    status, body = await api.call("GET", f"/api/v1/units?limit=2&labelSelector=odd%3D1&continue={body['metadata']['continue']}")
    assert [i["metadata"]["name"] for i in body["items"]] == ["u5"] and "continue" not in body["metadata"]
    for bad in ("?limit=x", "?limit=-1", "?continue=%%%not-a-token"):
        status, body = await api.call("GET", "/api/v1/units" + bad)
        assert status == 400, bad
        assert_status(body, 400, "BadRequest")


async def test_get_create_and_already_exists(api: Api) -> None:
    status, body = await api.call("GET", "/api/v1/units/web")
    assert status == 404
    assert_status(body, 404, "NotFound")
    created = await api.create_unit("web", labels={"app": "web"})
    meta = created["metadata"]
    assert meta["generation"] == 1 and meta["uid"] and meta["creationTimestamp"].endswith("Z")
    assert int(meta["resourceVersion"]) > 0
    assert created["spec"]["replicas"] == 1  # defaulted
    status, got = await api.call("GET", "/api/v1/units/web")
    assert status == 200 and got == created
    status, body = await api.call("POST", "/api/v1/units", body=unit("web"))
    assert status == 409
    assert_status(body, 409, "AlreadyExists")
    assert body["details"] == {"kind": "Unit", "name": "web"}
    stored = json.loads((await api.etcd_keys("units/"))["units/web"])
    assert stored["metadata"]["uid"] == meta["uid"]
    assert "resourceVersion" not in stored["metadata"]


async def test_create_ignores_client_metadata_and_status(api: Api) -> None:
    body = unit("web")
    body["metadata"].update(uid="mine", generation=7, resourceVersion="99", creationTimestamp="1999")
    body["status"] = {"replicas": 5, "readyReplicas": 5}
    status, created = await api.call("POST", "/api/v1/units", body=body)
    assert status == 201, created
    assert created["metadata"]["uid"] != "mine" and created["metadata"]["generation"] == 1
    assert created["metadata"]["creationTimestamp"] != "1999"
    assert created["status"]["replicas"] == 0


# ---------------------------------------------------------------- replace, patch, status, scale, delete


async def test_replace_conflict_leaves_object_unchanged(api: Api) -> None:
    created = await api.create_unit("web", replicas=1)
    rv0 = created["metadata"]["resourceVersion"]
    first = dict(created, spec={**created["spec"], "replicas": 2})
    status, updated = await api.call("PUT", "/api/v1/units/web", body=first)
    assert status == 200, updated
    assert updated["spec"]["replicas"] == 2 and int(updated["metadata"]["resourceVersion"]) > int(rv0)
    stale = dict(created, spec={**created["spec"], "replicas": 9})
    status, body = await api.call("PUT", "/api/v1/units/web", body=stale)
    assert status == 409
    assert_status(body, 409, "Conflict")
    stored = json.loads((await api.etcd_keys("units/"))["units/web"])
    assert stored["spec"]["replicas"] == 2
    status, got = await api.call("GET", "/api/v1/units/web")
    assert got == updated


async def test_replace_ignores_status_and_bumps_generation_on_spec_only(api: Api) -> None:
    created = await api.create_unit("web", labels={"app": "web"})
    # labels only: no generation bump; status in the body is ignored
    body = json.loads(json.dumps(created))
    body["metadata"]["labels"]["tier"] = "front"
    body["status"] = {"replicas": 42, "readyReplicas": 42}
    status, updated = await api.call("PUT", "/api/v1/units/web", body=body)
    assert status == 200, updated
    assert updated["metadata"]["generation"] == 1
    assert updated["metadata"]["labels"] == {"app": "web", "tier": "front"}
    assert updated["status"]["replicas"] == 0
    assert updated["metadata"]["uid"] == created["metadata"]["uid"]
    # same spec again (no resourceVersion: unconditional): still generation 1
    body = json.loads(json.dumps(updated))
    del body["metadata"]["resourceVersion"]
    status, same = await api.call("PUT", "/api/v1/units/web", body=body)
    assert status == 200 and same["metadata"]["generation"] == 1
    # a spec change bumps it
    body["spec"]["image"] = "local/web:2"
    status, changed = await api.call("PUT", "/api/v1/units/web", body=body)
    assert status == 200 and changed["metadata"]["generation"] == 2
    # PUT on a missing object, a name mismatch, a wrong kind
    status, err = await api.call("PUT", "/api/v1/units/nope", body=unit("nope"))
    assert_status(err, 404, "NotFound")
    status, err = await api.call("PUT", "/api/v1/units/web", body=unit("other"))
    assert_status(err, 400, "BadRequest")
    status, err = await api.call("PUT", "/api/v1/units/web", body={**unit("web"), "kind": "Machine"})
    assert_status(err, 400, "BadRequest")


async def test_merge_patch(api: Api) -> None:
    created = await api.create_unit("web", labels={"app": "web", "old": "x"}, env={"A": "1"})
    patch = {"metadata": {"labels": {"old": None, "new": "y"}}, "spec": {"replicas": 3, "env": {"B": "2"}}}
    status, patched = await api.call("PATCH", "/api/v1/units/web", body=patch,
                                     content_type="application/merge-patch+json")
    assert status == 200, patched
    assert patched["metadata"]["labels"] == {"app": "web", "new": "y"}
    assert patched["spec"]["replicas"] == 3 and patched["spec"]["env"] == {"A": "1", "B": "2"}
    assert patched["metadata"]["generation"] == 2
    # application/json is not a patch type
    status, err = await api.call("PATCH", "/api/v1/units/web", body={"spec": {"replicas": 4}})
    assert status == 415
    assert_status(err, 415, "UnsupportedMediaType")
    # a patch that makes the object invalid is 422 and writes nothing
    status, err = await api.call("PATCH", "/api/v1/units/web", body={"spec": {"replicas": -1}},
                                 content_type="application/merge-patch+json")
    assert_status(err, 422, "Invalid")
    assert [c["field"] for c in err["details"]["causes"]] == ["spec.replicas"]
    # a patch carrying a stale resourceVersion is a precondition: 409
    stale = {"metadata": {"resourceVersion": created["metadata"]["resourceVersion"]}, "spec": {"replicas": 5}}
    status, err = await api.call("PATCH", "/api/v1/units/web", body=stale,
                                 content_type="application/merge-patch+json")
    assert_status(err, 409, "Conflict")
    stored = json.loads((await api.etcd_keys("units/"))["units/web"])
    assert stored["spec"]["replicas"] == 3
    # ... and a current one applies
    current = {"metadata": {"resourceVersion": patched["metadata"]["resourceVersion"]}, "spec": {"replicas": 5}}
    status, ok = await api.call("PATCH", "/api/v1/units/web", body=current,
                                content_type="application/merge-patch+json")
    assert status == 200 and ok["spec"]["replicas"] == 5
    status, err = await api.call("PATCH", "/api/v1/units/nope", body={}, content_type="application/merge-patch+json")
    assert_status(err, 404, "NotFound")
    status, err = await api.call("PATCH", "/api/v1/units/web", body=[1], content_type="application/merge-patch+json")
    assert_status(err, 400, "BadRequest")


async def test_status_subresource(api: Api) -> None:
    created = await api.create_unit("web")
    body = {"metadata": {"name": "web"}, "spec": {"image": "ignored"},
            "status": {"replicas": 2, "readyReplicas": 1, "observedGeneration": 1}}
    status, updated = await api.call("PUT", "/api/v1/units/web/status", body=body)
    assert status == 200, updated
    assert updated["status"]["replicas"] == 2 and updated["status"]["readyReplicas"] == 1
    assert updated["spec"] == created["spec"] and updated["metadata"]["generation"] == 1
    status, got = await api.call("GET", "/api/v1/units/web/status")
    assert status == 200 and got["status"]["replicas"] == 2
    # stale resourceVersion on /status
    body["metadata"]["resourceVersion"] = created["metadata"]["resourceVersion"]
    status, err = await api.call("PUT", "/api/v1/units/web/status", body=body)
    assert_status(err, 409, "Conflict")
    status, err = await api.call("PUT", "/api/v1/units/web/status",
                                 body={"metadata": {"name": "web"}, "status": {"replicas": "two"}})
    assert_status(err, 422, "Invalid")
    assert [c["field"] for c in err["details"]["causes"]] == ["status.replicas"]
    # the body is validated whole, and names its object
    for bad, field in (({"status": {"replicas": 1}}, "metadata"),
                       ({"metadata": {"name": "web"}, "spec": {"replicas": -1}}, "spec.replicas"),
                       ({"metadata": {"name": "web", "labels": {"a": "b c"}}}, "metadata.labels")):
        status, err = await api.call("PUT", "/api/v1/units/web/status", body=bad)
        assert_status(err, 422, "Invalid")
        assert [c["field"] for c in err["details"]["causes"]] == [field], err
    status, err = await api.call("PUT", "/api/v1/units/nope/status", body={"status": {}})
    assert_status(err, 404, "NotFound")
    status, err = await api.call("GET", "/api/v1/endpoints/web/status")
    assert_status(err, 404, "NotFound")


async def test_scale_subresource(api: Api) -> None:
    await api.create_unit("web", replicas=2)
    status, scale = await api.call("GET", "/api/v1/units/web/scale")
    assert status == 200
    assert scale["kind"] == "Scale" and scale["spec"] == {"replicas": 2} and scale["status"] == {"replicas": 0}
    status, scale = await api.call("PUT", "/api/v1/units/web/scale", body={"spec": {"replicas": 5}})
    assert status == 200 and scale["spec"]["replicas"] == 5
    status, got = await api.call("GET", "/api/v1/units/web")
    assert got["spec"]["replicas"] == 5 and got["metadata"]["generation"] == 2
    for bad in ({"spec": {"replicas": "5"}}, {"spec": {"replicas": -1}}, {"spec": {}}, {"spec": {"replicas": True}}):
        status, err = await api.call("PUT", "/api/v1/units/web/scale", body=bad)
        assert_status(err, 422, "Invalid")
        assert [c["field"] for c in err["details"]["causes"]] == ["spec.replicas"], err
    status, err = await api.call("PUT", "/api/v1/units/web/scale",
                                 body={"metadata": {"resourceVersion": "1"}, "spec": {"replicas": 1}})
    assert_status(err, 409, "Conflict")
    status, err = await api.call("GET", "/api/v1/units/nope/scale")
    assert_status(err, 404, "NotFound")
    status, got = await api.call("GET", "/api/v1/units/web")
    assert got["spec"]["replicas"] == 5


async def test_delete_returns_the_object(api: Api) -> None:
    created = await api.create_unit("web")
    status, deleted = await api.call("DELETE", "/api/v1/units/web")
    assert status == 200
    assert deleted["metadata"]["uid"] == created["metadata"]["uid"] and deleted["kind"] == "Unit"
    assert "units/web" not in await api.etcd_keys("units/")
    status, err = await api.call("GET", "/api/v1/units/web")
    assert_status(err, 404, "NotFound")
    status, err = await api.call("DELETE", "/api/v1/units/web")
    assert_status(err, 404, "NotFound")


# ---------------------------------------------------------------- errors are Status objects


async def test_bad_bodies(api: Api) -> None:
    cases = [
        (b'{"metadata": ', "application/json", 400, "BadRequest"),
        (b"", "application/json", 400, "BadRequest"),
        (b'{"metadata": {"name": "\xff\xfe"}}', "application/json", 400, "BadRequest"),
        (b"[" * 100_000 + b"]" * 100_000, "application/json", 400, "BadRequest"),
        (json.dumps(unit("web")).encode(), "text/plain", 415, "UnsupportedMediaType"),
        (json.dumps(unit("web")).encode(), "application/x-www-form-urlencoded", 415, "UnsupportedMediaType"),
        (json.dumps(unit("web")).encode(), None, 415, "UnsupportedMediaType"),
        (b'"just a string"', "application/json", 400, "BadRequest"),
    ]
    for data, ctype, code, reason in cases:
        status, body = await api.call("POST", "/api/v1/units", data=data, content_type=ctype)
        assert status == code, (data[:40], body)
        assert_status(body, code, reason)
    assert await api.etcd_keys() == {}


async def test_body_over_256_kib(api: Api) -> None:
    big = unit("web")
    big["metadata"]["annotations"] = {"blob": "x" * (256 * 1024)}
    status, body = await api.call("POST", "/api/v1/units", body=big)
    assert status == 413
    assert_status(body, 413, "RequestEntityTooLarge")

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit still holds
        data = json.dumps(big).encode()
        for i in range(0, len(data), 65536):
            yield data[i:i + 65536]

    async with api.client.post("/api/v1/units", data=chunks(), headers={
            "Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"}) as resp:
        assert resp.status == 413
        assert_status(await resp.json(), 413, "RequestEntityTooLarge")
    assert await api.etcd_keys() == {}


async def test_invalid_writes_nothing(api: Api) -> None:
    body = unit("Web!", replicas=-1, ports=[{"containerPort": 0}], placement={"machine": "m1", "conflicts": ["x"]})
    status, err = await api.call("POST", "/api/v1/units", body=body)
    assert status == 422
    assert_status(err, 422, "Invalid")
    fields = sorted(c["field"] for c in err["details"]["causes"])
    # (fleet's combination rules are checked once the fields themselves are valid)
    assert fields == ["metadata.name", "spec.ports[0].containerPort", "spec.replicas"]
    assert all(c["reason"] and c["message"] for c in err["details"]["causes"])
    assert err["details"]["kind"] == "Unit" and err["details"]["name"] == "Web!"
    status, err = await api.call("POST", "/api/v1/units", body=unit("web", bogus=True))
    assert_status(err, 422, "Invalid")
    assert err["details"]["causes"][0] == {"field": "spec.bogus", "reason": "FieldValueNotSupported",
                                           "message": "Unknown field."}
    for body in ({"metadata": 5, "spec": {"image": "x"}}, {"metadata": None}, {"metadata": ["web"]}):
        status, err = await api.call("POST", "/api/v1/units", body=body)
        assert_status(err, 422, "Invalid")
        assert [c["field"] for c in err["details"]["causes"]] == ["metadata"]
    status, err = await api.call("POST", "/api/v1/units", body=unit("web", placement={"machine": "m1"}, **{"global": True}))
    assert_status(err, 422, "Invalid")
    assert [c["field"] for c in err["details"]["causes"]] == ["spec.placement.machine"]
    assert await api.etcd_keys() == {}
    # an invalid replace writes nothing either
    created = await api.create_unit("web")
    before = await api.etcd_keys()
    bad = json.loads(json.dumps(created))
    bad["spec"]["restartPolicy"] = "Sometimes"
    status, err = await api.call("PUT", "/api/v1/units/web", body=bad)
    assert_status(err, 422, "Invalid")
    for patch in ({"metadata": None}, {"metadata": 3}):
        status, err = await api.call("PUT", "/api/v1/units/web", body=patch)
        assert_status(err, 422, "Invalid")
        status, err = await api.call("PATCH", "/api/v1/units/web", body=patch, content_type="application/merge-patch+json")
        assert status in (200, 422), err
    assert await api.etcd_keys() == before


async def test_routing_errors(api: Api) -> None:
    for method, path, code, reason in [
        ("GET", "/api/v1/widgets", 404, "NotFound"),
        ("GET", "/api/v1/widgets/x", 404, "NotFound"),
        ("POST", "/api/v1/widgets", 404, "NotFound"),
        ("GET", "/nothing/here", 404, "NotFound"),
        ("GET", "/api/v1/units/web/nope", 404, "NotFound"),
        ("DELETE", "/api/v1/units", 405, "MethodNotAllowed"),
        ("POST", "/api/v1/units/web", 405, "MethodNotAllowed"),
        ("POST", "/healthz", 405, "MethodNotAllowed"),
        ("DELETE", "/api/v1/units/web/scale", 405, "MethodNotAllowed"),
    ]:
        status, body = await api.call(method, path, body={} if method == "POST" else None)
        assert status == code, (method, path, body)
        assert_status(body, code, reason)


# ---------------------------------------------------------------- auth


async def test_auth_roles(api: Api) -> None:
    await api.create_unit("web")
    status, err = await api.call("GET", "/api/v1/units", token=None)
    assert_status(err, 401, "Unauthorized")
    status, err = await api.call("GET", "/api/v1/units", token="not-a-token")
    assert_status(err, 401, "Unauthorized")
    status, err = await api.call("POST", "/api/v1/units", token=None, body=unit("x"))
    assert_status(err, 401, "Unauthorized")
    for path in ("/healthz", "/readyz", "/openapi.json", "/version"):
        status, _ = await api.call("GET", path, token=None)
        assert status == 200, path
    # /metrics: readers (admin, viewer) only
    status, err = await api.call("GET", "/metrics", token=None)
    assert_status(err, 401, "Unauthorized")
    status, err = await api.call("GET", "/metrics", token=NODE_M1)
    assert_status(err, 403, "Forbidden")
    for token in (VIEWER, ADMIN):
        status, text = await api.call("GET", "/metrics", token=token)
        assert status == 200 and "cp_apiserver_requests_total" in text
    # viewer reads, never writes
    status, _ = await api.call("GET", "/api/v1/units/web", token=VIEWER)
    assert status == 200
    for method, path, body in [
        ("POST", "/api/v1/units", unit("x")),
        ("PUT", "/api/v1/units/web", unit("web")),
        ("DELETE", "/api/v1/units/web", None),
        ("PUT", "/api/v1/units/web/scale", {"spec": {"replicas": 3}}),
        ("POST", "/api/v1/machines/m1/heartbeat", {}),
    ]:
        status, err = await api.call(method, path, token=VIEWER, body=body)
        assert status == 403, (method, path, err)
        assert_status(err, 403, "Forbidden")
    assert sorted(await api.etcd_keys()) == ["units/web"]


async def test_node_token_own_machine_only(api: Api) -> None:
    beat = {"address": "127.0.1.1", "capacity": {"cpu": 2.0, "memoryMB": 1024}, "agentVersion": "t"}
    status, body = await api.call("POST", "/api/v1/machines/m1/heartbeat", token=NODE_M1, body=beat)
    assert status == 200, body
    assert body["machine"]["status"]["state"] == "Ready" and body["leaseTTL"] == 5
    status, err = await api.call("POST", "/api/v1/machines/m2/heartbeat", token=NODE_M1, body=beat)
    assert_status(err, 403, "Forbidden")
    status, body = await api.call("POST", "/api/v1/machines/m2/heartbeat", token="node-m2-token", body=beat)
    assert status == 200
    status, machine = await api.call("GET", "/api/v1/machines/m1", token=NODE_M1)
    assert status == 200
    status, updated = await api.call("PUT", "/api/v1/machines/m1/status", token=NODE_M1,
                                     body={"metadata": {"name": "m1"},
                                           "status": {**machine["status"], "agentVersion": "t2"}})
    assert status == 200, updated
    assert updated["status"]["agentVersion"] == "t2"
    status, err = await api.call("PUT", "/api/v1/machines/m2/status", token=NODE_M1,
                                 body={"status": {"state": "NotReady"}})
    assert_status(err, 403, "Forbidden")
    # machine spec, units: forbidden
    status, err = await api.call("PUT", "/api/v1/machines/m1", token=NODE_M1, body=machine)
    assert_status(err, 403, "Forbidden")
    status, err = await api.call("POST", "/api/v1/units", token=NODE_M1, body=unit("web"))
    assert_status(err, 403, "Forbidden")
    await api.create_unit("web")
    status, _ = await api.call("GET", "/api/v1/units/web", token=NODE_M1)
    assert status == 200
    status, err = await api.call("DELETE", "/api/v1/units/web", token=NODE_M1)
    assert_status(err, 403, "Forbidden")
    # instance status: only when bound to m1
    for name, machine_name in (("web-0", "m1"), ("web-1", "m2"), ("web-2", "")):
        status, _ = await api.call("POST", "/api/v1/instances", body={
            "metadata": {"name": name}, "spec": {"unit": "web", "index": int(name[-1]), "machine": machine_name}})
        assert status == 201
    running = {"status": {"phase": "Running", "ready": True}}
    status, ok = await api.call("PUT", "/api/v1/instances/web-0/status", token=NODE_M1,
                                body={"metadata": {"name": "web-0"}, **running})
    assert status == 200 and ok["status"]["phase"] == "Running"
    for name in ("web-1", "web-2"):
        status, err = await api.call("PUT", f"/api/v1/instances/{name}/status", token=NODE_M1,
                                     body={"metadata": {"name": name}, **running})
        assert_status(err, 403, "Forbidden")
    status, err = await api.call("PUT", "/api/v1/instances/web-0", token=NODE_M1, body={
        "metadata": {"name": "web-0"}, "spec": {"unit": "web", "index": 0, "machine": "m2"}})
    assert_status(err, 403, "Forbidden")


def test_server_refuses_to_start_without_auth(etcd: EtcdServer, unique_prefix: str, tmp_path: Path) -> None:
    base = [sys.executable, "-m", "controlplane.api.server", "--etcd", etcd.url, "--etcd-prefix", unique_prefix,
            "--listen", "127.0.0.1:0", "--no-controllers"]
    proc = subprocess.run(base, capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0
    assert "--token-file" in proc.stderr
    bad = tmp_path / "bad.csv"
    write_private(bad, "tok,someone,superuser\n")
    proc = subprocess.run([*base, "--token-file", str(bad)], capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0 and "role" in proc.stderr
    proc = subprocess.run([*base, "--token-file", str(tmp_path / "missing.csv")], capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode != 0


# ---------------------------------------------------------------- watch


async def read_events(resp: aiohttp.ClientResponse, count: int, within: float = 5.0) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(within):
        while len(events) < count:
            line = await resp.content.readline()
            if not line:
                break
            events.append(json.loads(line))
    return events


def auth(token: str = ADMIN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_watch_from_resource_version(api: Api) -> None:
    first = await api.create_unit("a")
    rv = first["metadata"]["resourceVersion"]
    await api.create_unit("b", labels={"app": "b"})
    await api.call("PATCH", "/api/v1/units/a", body={"spec": {"replicas": 2}}, content_type="application/merge-patch+json")
    await api.call("DELETE", "/api/v1/units/b")
    async with api.client.get(f"/api/v1/units?watch=1&resourceVersion={rv}", headers=auth(VIEWER)) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("application/json")
        events = await read_events(resp, 3)
        assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
            ("ADDED", "b"), ("MODIFIED", "a"), ("DELETED", "b")]
        revs = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
        assert revs == sorted(revs) and revs[0] > int(rv)
        # live events follow
        await api.create_unit("c")
        (live,) = await read_events(resp, 1)
        assert live["type"] == "ADDED" and live["object"]["metadata"]["name"] == "c"
    # a watch from "now" lists current objects as ADDED first, filtered by selectors
    async with api.client.get("/api/v1/units?watch=1&labelSelector=app%21%3Db", headers=auth()) as resp:
        events = await read_events(resp, 2)
        assert sorted(e["object"]["metadata"]["name"] for e in events) == ["a", "c"]
        assert {e["type"] for e in events} == {"ADDED"}
    async with api.client.get("/api/v1/units?watch=1&resourceVersion=abc", headers=auth()) as resp:
        assert_status(await resp.json(), 400, "BadRequest")
    async with api.client.get("/api/v1/units?watch=1") as resp:
        assert_status(await resp.json(), 401, "Unauthorized")


async def test_watch_bookmarks_and_timeout(etcd: EtcdServer, unique_prefix: str, tmp_path: Path) -> None:
    def fast_bookmarks(app: web.Application) -> None:
        app[BOOKMARK_SECONDS] = 0.2

    api, store = await start_api(etcd.url, unique_prefix, tmp_path, app_setup=fast_bookmarks)
    try:
        created = await api.create_unit("a")
        started = time.monotonic()
        rv = created["metadata"]["resourceVersion"]
        async with api.client.get(f"/api/v1/units?watch=1&resourceVersion={rv}&timeoutSeconds=1",
                                  headers=auth()) as resp:
            lines = [json.loads(line) for line in (await resp.read()).splitlines()]
        elapsed = time.monotonic() - started
        assert 0.9 <= elapsed < 3, elapsed
        bookmarks = [e for e in lines if e["type"] == "BOOKMARK"]
        assert len(bookmarks) >= 3, lines
        assert all(int(b["object"]["metadata"]["resourceVersion"]) >= int(rv) for b in bookmarks)
        assert bookmarks[0]["object"]["kind"] == "Unit"
    finally:
        await stop_api(api, store)


async def test_watch_gone_for_compacted_revision(etcd: EtcdServer, unique_prefix: str, tmp_path: Path) -> None:
    api, store = await start_api(etcd.url, unique_prefix, tmp_path)
    try:
        old = (await api.create_unit("a"))["metadata"]["resourceVersion"]
        for i in range(3):
            await api.create_unit(f"b{i}")
    finally:
        await stop_api(api, store)
    # compact etcd past ``old`` and restart: the new server's window starts after it
    raw = await EtcdStore.open([etcd.url], prefix=unique_prefix)
    try:
        await raw.compact(await raw.revision())
    finally:
        await raw.close()
    api, store = await start_api(etcd.url, unique_prefix, tmp_path)
    try:
        async with api.client.get(f"/api/v1/units?watch=1&resourceVersion={old}", headers=auth()) as resp:
            assert resp.status == 410
            assert_status(await resp.json(), 410, "Gone")
        # a list gives a fresh resourceVersion to watch from
        status, listing = await api.call("GET", "/api/v1/units")
        fresh = listing["metadata"]["resourceVersion"]
        async with api.client.get(f"/api/v1/units?watch=1&resourceVersion={fresh}", headers=auth()) as resp:
            assert resp.status == 200
            await api.create_unit("c")
            (event,) = await read_events(resp, 1)
            assert event["object"]["metadata"]["name"] == "c"
    finally:
        await stop_api(api, store)


async def test_watch_gone_when_window_overflows(etcd: EtcdServer, unique_prefix: str, tmp_path: Path) -> None:
    api, store = await start_api(etcd.url, unique_prefix, tmp_path)
    try:
        cache = api.app[REGISTRY].caches["units"]
        cache.events = collections.deque(maxlen=3)
        first = (await api.create_unit("w0"))["metadata"]["resourceVersion"]
        for i in range(1, 6):
            await api.create_unit(f"w{i}")
        async with api.client.get(f"/api/v1/units?watch=1&resourceVersion={first}", headers=auth()) as resp:
            assert_status(await resp.json(), 410, "Gone")
        # the last 3 events are still in the window
        status, listing = await api.call("GET", "/api/v1/units?labelSelector=")
        names = [i["metadata"]["name"] for i in listing["items"]]
        rv_w2 = next(i for i in listing["items"] if i["metadata"]["name"] == "w2")["metadata"]["resourceVersion"]
        assert names == [f"w{i}" for i in range(6)]
        async with api.client.get(f"/api/v1/units?watch=1&resourceVersion={rv_w2}", headers=auth()) as resp:
            assert resp.status == 200
            events = await read_events(resp, 3)
            assert [e["object"]["metadata"]["name"] for e in events] == ["w3", "w4", "w5"]
    finally:
        await stop_api(api, store)


async def test_watch_resume_loses_nothing(api: Api) -> None:
    status, listing = await api.call("GET", "/api/v1/units")
    rv = listing["metadata"]["resourceVersion"]
    total = 60
    writer_done = asyncio.Event()

    async def writer() -> None:
        for i in range(total):
            await api.create_unit(f"r{i:03d}")
            if i % 10 == 0:
                await asyncio.sleep(0.01)
        writer_done.set()

    task = asyncio.create_task(writer())
    seen: list[str] = []
    try:
        # read a few events per connection, drop it, resume from the last resourceVersion seen
        while len(seen) < total:
            async with api.client.get(f"/api/v1/units?watch=1&resourceVersion={rv}", headers=auth()) as resp:
                assert resp.status == 200
                for event in await read_events(resp, min(7, total - len(seen)), within=10):
                    if event["type"] == "BOOKMARK":
                        continue
                    seen.append(event["object"]["metadata"]["name"])
                    rv = event["object"]["metadata"]["resourceVersion"]
    finally:
        await task
    assert seen == [f"r{i:03d}" for i in range(total)]


# ---------------------------------------------------------------- health, readiness, etcd down


async def test_health_and_openapi(api: Api) -> None:
    status, text = await api.call("GET", "/healthz", token=None)
    assert status == 200 and text == "ok"
    status, text = await api.call("GET", "/readyz", token=None)
    assert status == 200 and text == "ok"
    status, doc = await api.call("GET", "/openapi.json", token=None)
    assert status == 200 and doc["openapi"].startswith("3.1")
    assert "/api/v1/units/{name}" in doc["paths"]


async def test_etcd_down_is_503(unique_prefix: str, tmp_path: Path) -> None:
    with EtcdServer() as own:
        api, store = await start_api(own.url, unique_prefix, tmp_path, timeout=1.0)
        try:
            await api.create_unit("web")
            own.kill(0)
            status, text = await api.call("GET", "/readyz", token=None)
            assert status == 503
            assert_status(text, 503, "ServiceUnavailable")
            # to a caller without a token (or with a node's), only "not ready": no etcd address, no error
            assert text["message"] == "not ready" and "details" not in text, text
            status, text = await api.call("GET", "/readyz", token=NODE_M1)
            assert text["message"] == "not ready", text
            status, text = await api.call("GET", "/readyz", token=VIEWER)
            assert status == 503 and text["message"].startswith("not ready: the store is unreachable"), text
            status, text = await api.call("GET", "/readyz", token="not-a-token")
            assert_status(text, 401, "Unauthorized")
            status, text = await api.call("GET", "/healthz", token=None)
            assert status == 200
            for method, path, body in [
                ("POST", "/api/v1/units", unit("other")),
                ("PUT", "/api/v1/units/web", unit("web", replicas=3)),
                ("DELETE", "/api/v1/units/web", None),
                ("PUT", "/api/v1/units/web/scale", {"spec": {"replicas": 2}}),
                ("POST", "/api/v1/machines/m1/heartbeat", {"address": "127.0.1.1"}),
            ]:
                started = time.monotonic()
                status, err = await api.call(method, path, body=body)
                assert status == 503, (method, path, err)
                assert_status(err, 503, "ServiceUnavailable")
                assert time.monotonic() - started < 10
            # the watch cache still answers reads of what it has
            status, got = await api.call("GET", "/api/v1/units/web")
            assert status == 200
            # and it comes back when etcd does
            own.restart(0)
            deadline = time.monotonic() + 20
            while True:
                status, created = await api.call("POST", "/api/v1/units", body=unit("later"))
                if status == 201 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            assert status == 201, created
            status, _ = await api.call("GET", "/readyz", token=None)
            assert status == 200
        finally:
            await stop_api(api, store)


async def test_dry_run_covers_events_too(api: Api) -> None:
    """Events are written through their own path (repeats are counted): a dry run stores none, and
    a dryRun value other than All is refused there as everywhere."""
    event = {"apiVersion": "v1", "kind": "Event", "metadata": {"name": "dry-e1"}, "type": "Normal",
             "reason": "Started", "involvedObject": {"kind": "Instance", "name": "web-0"}, "message": "m"}
    before = await api.etcd_keys()
    status, body = await api.call("POST", "/api/v1/events?dryRun=All", body=event)
    assert status == 201 and body["metadata"]["name"] == "dry-e1", body
    status, body = await api.call("POST", "/api/v1/events?dryRun=%0E", body=event)
    assert_status(body, 400, "BadRequest")
    assert await api.etcd_keys() == before
    status, body = await api.call("POST", "/api/v1/events", body=event)
    assert status == 201 and await api.etcd_keys() != before
