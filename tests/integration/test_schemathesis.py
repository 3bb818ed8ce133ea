"""A bounded schemathesis pass against a live cp-apiserver with the committed OpenAPI document.

Fails on any server error (5xx), any response the spec does not describe (status code, content
type, headers, body schema) and any wrong answer to an undeclared method. The two checks about
how strict validation is (``positive_data_acceptance``, ``negative_data_rejection``) are left to
the full run described in bench/README.md ("Schemathesis"): the spec cannot express the server's
cross-field rules (fleet's placement combinations, "exactly one probe", metadata.name matching
the URL), so a schema-valid body can rightly be refused with 422.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from apiserver_fixture import ApiServer
from etcd_fixture import EtcdServer

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "api-spec" / "openapi.yaml"
CHECKS = ",".join([
    "not_a_server_error", "status_code_conformance", "content_type_conformance",
    "response_headers_conformance", "response_schema_conformance", "unsupported_method",
    "allow_header_conformance",
])


def schemathesis_binary() -> str:
    found = shutil.which("schemathesis") or str(Path(sys.executable).with_name("schemathesis"))
    if not Path(found).exists():
        pytest.skip("schemathesis is not installed (pip install schemathesis)")
    return found


@pytest.fixture
def live_api(etcd: EtcdServer, unique_prefix: str) -> Iterator[ApiServer]:
    with ApiServer(etcd.url, unique_prefix, controllers=False) as server:
        yield server


def test_schemathesis_bounded(live_api: ApiServer) -> None:
    cmd = [
        schemathesis_binary(), "run", str(SPEC), "--url", live_api.url,
        "-H", "Authorization: Bearer admin-token",
        "--checks", CHECKS, "--phases", "examples,coverage,fuzzing",
        "--max-examples", "15", "--max-time", "45", "--seed", "1",
        "--request-timeout", "10", "--workers", "2",
        "--exclude-path-regex", "/log$",  # proxied to an agent; there is none here
        "--suppress-health-check", "all",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    tail = "\n".join(proc.stdout.splitlines()[-80:])
    assert proc.returncode == 0, f"schemathesis found failures:\n{tail}\n{proc.stderr[-2000:]}\n{live_api.log_tail()}"
