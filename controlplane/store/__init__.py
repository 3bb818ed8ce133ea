"""Key-value storage of the desired and observed state: etcd in production, memory in tests.

``open_store("memory://")`` gives a MemoryStore; ``open_store("http://a:2379,http://b:2379")``
(or a list of URLs) gives an EtcdStore that fails over between them; ``https://`` endpoints and
etcd users take an ``EtcdAccess`` (``EtcdAccess.from_flags`` reads the ``--etcd-*`` files). The
etcd module is imported only when asked for, so processes that never talk to etcd do not load gRPC.
"""

from __future__ import annotations

import os

from controlplane.store.base import KV, Store, WatchEvent
from controlplane.store.etcd_access import EtcdAccess, StoreConfigError
from controlplane.store.lease import LeaseKeeper
from controlplane.store.memory import MemoryStore

__all__ = [
    "KV", "EtcdAccess", "LeaseKeeper", "MemoryStore", "Store", "StoreConfigError", "WatchEvent", "open_store",
]


def open_store(
    url_or_endpoints: str | list[str],
    prefix: str = "/cp",
    *,
    timeout: float = 5.0,
    access: EtcdAccess | None = None,
) -> Store:
    """A store for ``--etcd``: ``memory://`` or comma-separated etcd URLs (all http:// or all https://).

    The returned EtcdStore connects lazily; ``await store.connect()`` checks that some
    endpoint answers (StoreUnavailable otherwise). ``prefix`` and ``access`` are ignored for
    memory. A bad endpoint list is a StoreConfigError (a ValueError) with a one-line message.
    """
    if isinstance(url_or_endpoints, str):
        if url_or_endpoints.strip().startswith("memory://"):
            return MemoryStore()
        endpoints = [e for e in (part.strip() for part in url_or_endpoints.split(",")) if e]
    else:
        endpoints = [e.strip() for e in url_or_endpoints if e.strip()]
    if not endpoints:
        raise StoreConfigError("no etcd endpoint given")
    # gRPC's C core writes its own log lines (a failed TLS handshake: several) to stderr, which
    # would break our one-line errors; the store reports every failure itself. It reads this
    # once, when first imported; GRPC_VERBOSITY=ERROR in the environment brings them back.
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    from controlplane.store.etcd import EtcdStore

    return EtcdStore(endpoints, prefix=prefix, timeout=timeout, access=access)
