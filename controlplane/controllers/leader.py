"""Leader election on an etcd lease: one API server runs the scheduler and controllers.

Campaign: grant a lease, create the key ``leader`` attached to it (create only if absent).
The winner keeps the lease alive (LeaseKeeper) and leads until the lease is lost; the others
watch the key and campaign again the moment it is deleted, which etcd does by itself when the
leader dies and its lease expires -- so a kill -9'd leader is replaced within the lease TTL.

A leader cut off from etcd steps down on its own before its lease can expire there: the keeper
gives the lease up when no refresh has been confirmed for half a TTL (store/lease.py), so the
leader stops its controllers while etcd still holds the key for it, and its successor, which
can only win once the lease has expired, never leads at the same time. On shutdown the lease
is revoked (bounded by the keeper's ``revoke_timeout``) so a successor need not wait the TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable

from controlplane.errors import AlreadyExists, Gone, StoreUnavailable
from controlplane.store.base import Store
from controlplane.store.lease import LeaseKeeper

log = logging.getLogger(__name__)
LEADER_KEY = "leader"


def candidate_id(listen: str = "") -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{listen}"


async def _wait_for_vacancy(store: Store) -> None:
    """Return when the leader key is absent (now, or after a DELETE event)."""
    while True:
        kv = await store.get(LEADER_KEY)
        if kv is None:
            return
        try:
            async for event in store.watch(LEADER_KEY, start_revision=kv.mod_revision + 1):
                if event.type == "DELETE" and event.kv.key == LEADER_KEY:
                    return
        except Gone:
            continue


async def campaign_forever(
    store: Store,
    *,
    identity: str,
    ttl: int,
    lead: Callable[[asyncio.Event], Awaitable[None]],
    on_change: Callable[[bool], None] = lambda leading: None,
) -> None:
    """Campaign, lead while the lease holds, and campaign again after losing it. ``lead`` gets an
    event that is set when leadership is lost; it must return soon after."""
    while True:
        try:
            await _wait_for_vacancy(store)
            lost = asyncio.Event()
            keeper = LeaseKeeper(store, ttl=ttl, on_lost=lost.set)
            await keeper.start()
            try:
                value = json.dumps({"identity": identity}).encode()
                await store.create(LEADER_KEY, value, lease=keeper.lease_id)
            except AlreadyExists:
                await keeper.stop(revoke=True)
                continue
            except BaseException:
                # e.g. a timeout after etcd applied the create: the key may exist on our lease.
                # Never leave that lease kept alive by a keeper nobody stops (the key would block
                # every campaign, ours included, for as long as this process lives): revoke it.
                with contextlib.suppress(Exception):
                    await keeper.stop(revoke=True)
                raise
            log.info("%s is now the leader", identity)
            on_change(True)
            try:
                await lead(lost)
            finally:
                on_change(False)
                log.info("%s stopped leading", identity)
                with contextlib.suppress(Exception):
                    await keeper.stop(revoke=True)
        except asyncio.CancelledError:
            raise
        except StoreUnavailable as err:
            log.warning("leader election: store unavailable: %s", err)
            await asyncio.sleep(0.5)
        except Exception:
            log.exception("leader election failed; retrying")
            await asyncio.sleep(0.5)
