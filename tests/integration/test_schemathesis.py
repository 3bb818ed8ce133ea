"""A bounded schemathesis pass, every check included, against a live cp-apiserver with the
committed OpenAPI document.

``--checks all``: server errors, responses the spec does not describe (status code, content type,
headers, body schema), undeclared methods, authentication that is ignored, schema-violating data
accepted (``negative_data_rejection``) and schema-valid data refused (``positive_data_acceptance``).
The few rules the document can state only in words (the body's name is the URL's, a merge patch is
valid only if its result is, ...) are recognised by schemathesis_hooks.py, which drops exactly
those refusals; schemathesis reports how many it dropped. The run is bounded by time (~45 s) and
seeded, so it stays reproducible; bench/README.md ("Schemathesis") has the longer pass.
"""

from __future__ import annotations

import os
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
HOOKS = Path(__file__).with_name("schemathesis_hooks.py")


def schemathesis_binary() -> str:
    found = shutil.which("schemathesis") or str(Path(sys.executable).with_name("schemathesis"))
    if not Path(found).exists():
        pytest.skip("schemathesis is not installed (pip install schemathesis)")
    return found


def schemathesis_command(url: str, *, seconds: int, seed: int | None = 1) -> list[str]:
    """The run of this test and of bench/README.md's longer pass (``seed=None``: a new one each time)."""
    return [
        schemathesis_binary(), "run", str(SPEC), "--url", url,
        "-H", "Authorization: Bearer admin-token",
        "--checks", "all", "--phases", "examples,coverage,fuzzing,stateful",
        "--max-time", str(seconds), *(["--seed", str(seed)] if seed is not None else []),
        "--request-timeout", "10",
        "--workers", "1",  # CPython 3.11's ast.parse is not thread-safe; hypothesis calls it while drawing
        "--exclude-path-regex", "/log$",  # proxied to an agent; there is none here
        "--suppress-health-check", "all",
    ]


@pytest.fixture
def live_api(etcd: EtcdServer, unique_prefix: str) -> Iterator[ApiServer]:
    with ApiServer(etcd.url, unique_prefix, controllers=False) as server:
        yield server


def test_schemathesis_every_check(live_api: ApiServer) -> None:
    env = {**os.environ, "SCHEMATHESIS_HOOKS": str(HOOKS)}
    proc = subprocess.run(schemathesis_command(live_api.url, seconds=45), capture_output=True, text=True,
                          timeout=150, cwd=ROOT, env=env)
    tail = "\n".join(line[:400] for line in proc.stdout.splitlines()[-80:])
    assert proc.returncode == 0, f"schemathesis found failures:\n{tail}\n{proc.stderr[-2000:]}\n{live_api.log_tail()}"
    assert " passed" in proc.stdout and "generated" in proc.stdout, tail
