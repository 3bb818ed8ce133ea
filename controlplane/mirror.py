"""Keep a local dict equal to one resource on the server: list, then watch from the listed revision.

The agent (the instances bound to its machine) and its proxy manager (units, endpoints) both
follow resources this way. The mirror re-lists after 410 Gone, after an error, and after a watch
that stays silent longer than ``silence`` seconds: the server sends a BOOKMARK every few seconds,
so silence means a dead connection (a cut-off machine's socket may never say so itself).
With several API servers (controlplane/client.py), a watch that breaks or falls silent marks its
server failed, so the re-list and the new watch go to the next server: the listed revision is
etcd's, the same on every server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from controlplane.client import Client
from controlplane.errors import CPError, Gone

log = logging.getLogger(__name__)
WATCH_SILENCE_SECONDS = 30.0


async def mirror(
    client: Client,
    resource: str,
    items: dict[str, dict[str, Any]],
    *,
    on_change: Callable[[], None],
    on_listed: Callable[[], None] = lambda: None,
    field_selector: str | None = None,
    keep: Callable[[dict[str, Any]], bool] = lambda obj: True,
    silence: float = WATCH_SILENCE_SECONDS,
) -> None:
    """Follow ``resource`` forever, updating ``items`` (name -> object) in place. ``keep`` drops
    objects the caller no longer wants; ``on_change`` runs after the list and after every change."""
    while True:
        try:
            listed, rv = await client.list_all(resource, field_selector=field_selector)
            items.clear()
            items.update({obj["metadata"]["name"]: obj for obj in listed})
            on_listed()
            on_change()
            events = client.watch(resource, resource_version=rv, field_selector=field_selector,
                                  timeout_seconds=300, read_timeout=silence).__aiter__()
            while True:
                try:  # the client's read timeout fires first; this bounds a client that has none
                    event = await asyncio.wait_for(events.__anext__(), timeout=silence + 1.0)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    log.warning("%s watch silent for %.0fs; re-listing", resource, silence)
                    aclose = getattr(events, "aclose", None)
                    if aclose is not None:
                        with contextlib.suppress(Exception):
                            await aclose()
                    break
                if event["type"] == "BOOKMARK":
                    continue
                obj = event["object"]
                name = obj["metadata"]["name"]
                if event["type"] == "DELETED" or not keep(obj):
                    items.pop(name, None)
                else:
                    items[name] = obj
                on_change()
        except asyncio.CancelledError:
            raise
        except Gone:
            continue
        except CPError as err:
            log.warning("%s watch failed: %s; re-listing", resource, err)
            await asyncio.sleep(0.5)
