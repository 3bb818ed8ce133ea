"""Key-value storage of the desired and observed state: etcd in production, memory in tests.

``open_store("memory://")`` gives a MemoryStore; ``open_store("http://a:2379,http://b:2379")``
(or a list of URLs) gives an EtcdStore that fails over between them. The etcd module is
imported only when asked for, so processes that never talk to etcd do not load gRPC.
"""

from __future__ import annotations

from controlplane.store.base import KV, Store, WatchEvent
from controlplane.store.lease import LeaseKeeper
from controlplane.store.memory import MemoryStore

__all__ = ["KV", "LeaseKeeper", "MemoryStore", "Store", "WatchEvent", "open_store"]


def open_store(url_or_endpoints: str | list[str], prefix: str = "/cp", *, timeout: float = 5.0) -> Store:
    """A store for ``--etcd``: ``memory://`` or comma-separated etcd URLs.

    The returned EtcdStore connects lazily; ``await store.connect()`` checks that some
    endpoint answers (StoreUnavailable otherwise). ``prefix`` is ignored for memory.
    """
    if isinstance(url_or_endpoints, str):
        if url_or_endpoints.strip().startswith("memory://"):
            return MemoryStore()
        endpoints = [e for e in (part.strip() for part in url_or_endpoints.split(",")) if e]
    else:
        endpoints = [e.strip() for e in url_or_endpoints if e.strip()]
    if not endpoints:
        raise ValueError("no etcd endpoint given")
    from controlplane.store.etcd import EtcdStore

    return EtcdStore(endpoints, prefix=prefix, timeout=timeout)
