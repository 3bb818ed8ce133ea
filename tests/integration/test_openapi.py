"""The committed OpenAPI document (api-spec/openapi.yaml) is what the server serves, and is valid.

Regenerate it with ``python -m controlplane.api.openapi > api-spec/openapi.yaml``.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import yaml
from apiserver_fixture import ApiServer
from openapi_spec_validator import validate

from controlplane.api.openapi import openapi_document

SPEC = Path(__file__).resolve().parents[2] / "api-spec" / "openapi.yaml"


def test_committed_spec_is_what_the_server_serves(apiserver: ApiServer) -> None:
    with urllib.request.urlopen(apiserver.url + "/openapi.json", timeout=5) as resp:
        assert resp.status == 200
        served = json.loads(resp.read())
    committed = yaml.safe_load(SPEC.read_text())
    assert served == committed, (
        "api-spec/openapi.yaml is stale: run `python -m controlplane.api.openapi > api-spec/openapi.yaml`"
    )
    assert served == openapi_document()


def test_committed_spec_validates() -> None:
    doc = yaml.safe_load(SPEC.read_text())
    validate(doc)
    assert doc["openapi"].startswith("3.1")
    for resource in ("machines", "units", "instances", "endpoints", "events"):
        assert f"/api/v1/{resource}" in doc["paths"]
        assert f"/api/v1/{resource}/{{name}}" in doc["paths"]
    assert "/api/v1/units/{name}/scale" in doc["paths"]
    assert "Status" in doc["components"]["schemas"]
