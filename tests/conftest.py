"""Fixtures shared by every test folder.

- ``etcd`` (session): one real etcd member (tests/etcd_fixture.EtcdServer); tests isolate
  themselves with ``unique_prefix``.
- ``etcd_cluster`` (function): a fresh 3-member etcd cluster to kill members of.
- ``unique_prefix``: a key prefix no other test uses.
- ``apiserver`` (function): a real cp-apiserver process on that etcd and prefix, with the
  tokens of tests/apiserver_fixture.py.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

_TESTS_DIR = str(Path(__file__).resolve().parent)
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

from apiserver_fixture import ApiServer  # noqa: E402
from etcd_fixture import EtcdCluster, EtcdServer  # noqa: E402


@pytest.fixture(scope="session")
def etcd() -> Iterator[EtcdServer]:
    with EtcdServer() as server:
        yield server


@pytest.fixture
def etcd_cluster() -> Iterator[EtcdCluster]:
    with EtcdCluster(n=3) as cluster:
        yield cluster


@pytest.fixture
def unique_prefix() -> str:
    return f"/cp-test/{uuid.uuid4().hex[:12]}"


@pytest.fixture
def apiserver(etcd: EtcdServer, unique_prefix: str) -> Iterator[ApiServer]:
    with ApiServer(etcd.url, unique_prefix) as server:
        yield server
