"""An in-process API server over a real etcd, for the integration tests that call the REST API.

``start_api`` runs the aiohttp application of cp-apiserver in this process (aiohttp's test server)
over an ``EtcdStore`` under a prefix of its own; ``Api`` calls it and shows its raw etcd keys. The
``api`` fixture of tests/integration/conftest.py is built on it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from apiserver_fixture import write_tokens

from controlplane.api.app import make_app
from controlplane.api.auth import TokenTable
from controlplane.store.etcd import EtcdStore

ADMIN = "admin-token"
VIEWER = "viewer-token"
NODE_M1 = "node-m1-token"


class Api:
    """An in-process API server over etcd, and a raw view of its etcd prefix."""

    def __init__(self, client: TestClient, store: EtcdStore, app: web.Application) -> None:
        self.client = client
        self.store = store
        self.app = app

    async def call(
        self,
        method: str,
        path: str,
        *,
        token: str | None = ADMIN,
        body: Any = None,
        data: bytes | None = None,
        content_type: str | None = None,
    ) -> tuple[int, Any]:
        headers: dict[str, str] = {}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if body is not None:
            data = json.dumps(body).encode()
            content_type = content_type or "application/json"
        if content_type:
            headers["Content-Type"] = content_type
        async with self.client.request(method, path, data=data, headers=headers) as resp:
            raw = await resp.read()
            ctype = resp.headers.get("Content-Type", "")
            payload = json.loads(raw) if ctype.startswith("application/json") and raw else raw.decode()
            return resp.status, payload

    async def create_unit(self, name: str, **spec: Any) -> dict[str, Any]:
        labels = spec.pop("labels", {})
        status, obj = await self.call("POST", "/api/v1/units", body=unit(name, labels=labels, **spec))
        assert status == 201, obj
        return obj

    async def etcd_keys(self, prefix: str = "") -> dict[str, bytes]:
        items, _ = await self.store.range(prefix)
        return {kv.key: kv.value for kv in items}


def unit(name: str, *, labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Unit",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"image": "local/web:1", **spec},
    }


def assert_status(payload: Any, code: int, reason: str) -> dict[str, Any]:
    """``payload`` is a Status object with this code and reason."""
    assert isinstance(payload, dict), payload
    assert payload["kind"] == "Status" and payload["apiVersion"] == "v1", payload
    assert payload["status"] == "Failure" and payload["code"] == code and payload["reason"] == reason, payload
    assert payload["message"] and "Traceback" not in payload["message"]
    return payload


def token_table(tmp_path: Path) -> TokenTable:
    path = tmp_path / "tokens.csv"
    write_tokens(path)
    return TokenTable.from_file(path)


async def start_api(
    etcd_url: str, prefix: str, tmp_path: Path, *, timeout: float = 5.0, app_setup: Any = None
) -> tuple[Api, EtcdStore]:
    store = await EtcdStore.open([etcd_url], prefix=prefix, timeout=timeout)
    app = make_app(store, tokens=token_table(tmp_path), config={"machine_ttl": 5})
    if app_setup is not None:
        app_setup(app)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    raw = await EtcdStore.open([etcd_url], prefix=prefix, timeout=timeout)
    return Api(client, raw, app), store


async def stop_api(api: Api, store: EtcdStore) -> None:
    await api.client.close()
    await store.close()
    await api.store.close()
