"""Long-lived background tasks started through one guard that logs when they die (kopf's aiotasks).

Here, not in api/ or controllers/, so the process shell (api/) and the leader's loops
(controllers/) share it without the controllers importing the API.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

log = logging.getLogger(__name__)


def guarded(coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
    """Start a long-lived task that logs when it dies."""

    async def run() -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("task %s died", name)
            raise

    return asyncio.create_task(run(), name=name)
