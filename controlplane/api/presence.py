"""Cheap machine presence: a heartbeat is one lease keepalive, not a read of the presence key.

A machine's presence is the key ``presence/<machine>`` on an etcd lease (api/machines.py). The
first heartbeat a server sees from a machine reads the key, refreshes the lease it carries or
grants a new one and attaches the key; from then on the server keeps the lease id in memory
(``PresenceLeases``) and a heartbeat is a bare keepalive of it. When the keepalive says the lease
is gone (it expired: the machine was silent past the TTL; or another server replaced it), the
server forgets it and takes the full path again, which ends with the key on a live lease. Every
``verify_after`` seconds a machine's beat takes the full path anyway, so a key that vanished
some other way (nothing in the control plane deletes one) is re-attached within that time.
The answer to the client -- the lease id that carries its presence -- is the same as before.

Several API servers: each keeps its own table; a machine that fails over to another server is
read once there; a lease one server granted is refreshed by any (a keepalive needs no owner).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from controlplane.errors import AlreadyExists, NotFound, ServiceUnavailable
from controlplane.model import presence_key
from controlplane.store.base import Store

PRESENCE_VERIFY_SECONDS = 30.0


@dataclass(frozen=True)
class KnownLease:
    lease: int
    verified_at: float  # when the full path last found (or made) the key on this lease


class PresenceLeases:
    """Pure: which lease carries each machine's presence, as this server last saw it."""

    def __init__(self, *, verify_after: float = PRESENCE_VERIFY_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.verify_after = verify_after
        self.clock = clock
        self._known: dict[str, KnownLease] = {}

    def lease_to_refresh(self, machine: str) -> int:
        """The lease a heartbeat may just keep alive, or 0: the full path is due (unknown, or not
        checked for ``verify_after`` seconds)."""
        known = self._known.get(machine)
        if known is None or self.clock() - known.verified_at >= self.verify_after:
            return 0
        return known.lease

    def remember(self, machine: str, lease: int) -> None:
        """The full path found the key on ``lease`` just now."""
        self._known[machine] = KnownLease(lease, self.clock())

    def forget(self, machine: str, lease: int) -> None:
        """``lease`` is gone (a keepalive said so); unless a newer one is known already."""
        known = self._known.get(machine)
        if known is not None and known.lease == lease:
            del self._known[machine]

    def __len__(self) -> int:
        return len(self._known)


async def attach_presence(store: Store, machine: str, ttl: int) -> int:
    """The full path: refresh the lease the presence key carries, or grant one and attach the key."""
    kv = await store.get(presence_key(machine))
    if kv is not None and kv.lease:
        try:
            if await store.refresh_lease(kv.lease, bulk=True) > 0:
                return kv.lease
        except NotFound:
            pass
    lease = await store.grant_lease(ttl)
    value = json.dumps({"machine": machine, "since": time.time()}).encode()
    try:
        await store.create(presence_key(machine), value, lease=lease)
    except AlreadyExists:
        # another API server attached one between our get and create: use theirs
        await store.revoke_lease(lease)
        kv = await store.get(presence_key(machine))
        if kv is None:
            raise ServiceUnavailable("machine presence changed concurrently; retry the heartbeat") from None
        return kv.lease
    return lease


async def keep_presence(store: Store, leases: PresenceLeases, machine: str, ttl: int) -> int:
    """One heartbeat's presence work: a keepalive of the known lease; the full path when there is
    none, it is due for a check, or the keepalive finds it gone. Returns the lease carrying the key."""
    known = leases.lease_to_refresh(machine)
    if known:
        try:
            if await store.refresh_lease(known, bulk=True) > 0:
                return known
        except NotFound:
            pass
        leases.forget(machine, known)
    lease = await attach_presence(store, machine, ttl)
    leases.remember(machine, lease)
    return lease
