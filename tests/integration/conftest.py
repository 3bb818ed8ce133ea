"""The integration tests' own fixtures.

The etcd fixtures (``etcd``, ``etcd_cluster``, ``unique_prefix``) live in tests/conftest.py,
shared with tests/e2e; see tests/etcd_fixture.py for the servers themselves. ``api`` is the API
server in-process (inproc_api.py), shared by test_api.py and test_api_limits.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from etcd_fixture import EtcdServer
from inproc_api import Api, start_api, stop_api


@pytest.fixture
async def api(etcd: EtcdServer, unique_prefix: str, tmp_path: Path) -> AsyncIterator[Api]:
    """The API server in-process over the session etcd, under a prefix of its own."""
    server, store = await start_api(etcd.url, unique_prefix, tmp_path)
    try:
        yield server
    finally:
        await stop_api(server, store)
