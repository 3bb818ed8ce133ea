"""Fixtures shared by the unit tests: a started Registry over a MemoryStore."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from controlplane.registry import Registry
from controlplane.store.memory import MemoryStore


@pytest.fixture
async def registry() -> AsyncIterator[Registry]:
    reg = Registry(MemoryStore())
    await reg.start()
    try:
        yield reg
    finally:
        await reg.stop()
