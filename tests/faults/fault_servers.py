"""Pieces the etcd-side fault tests share: etcd members' roles, API servers run as their own uid,
a watch through the API followed from a thread, and reading the leader gauge.

    leader_index(cluster)                   # which member leads now (etcdctl endpoint status)
    make_follower(cluster, 0)               # move leadership away from member 0 if it has it
    move_leader(cluster, 0)                 # or to it
    api = UidApiServer(uid, cluster.url, prefix)   # a cp-apiserver whose packets carry ``uid``
    with ApiWatch(api.url, "units") as seen: ...   # seen.events: (type, name, object) as they come
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import urllib.request
from types import TracebackType
from typing import Any

from apiserver_fixture import ApiServer
from etcd_fixture import EtcdCluster
from partition import as_uid


def member_status(cluster: EtcdCluster) -> list[dict[str, Any]]:
    """``etcdctl endpoint status`` of every member, in member order."""
    rows = json.loads(cluster.etcdctl("endpoint", "status", "-w", "json"))
    by_port = {int(r["Endpoint"].rsplit(":", 1)[1]): r["Status"] for r in rows}
    return [by_port[m.client_port] for m in cluster.members]


def leader_index(cluster: EtcdCluster) -> int:
    statuses = member_status(cluster)
    leader = statuses[0]["leader"]
    return next(i for i, s in enumerate(statuses) if s["header"]["member_id"] == leader)


def move_leader(cluster: EtcdCluster, target: int) -> None:
    """Make member ``target`` the leader (etcdctl move-leader), and wait until it is."""
    current = leader_index(cluster)
    if current == target:
        return
    target_id = format(member_status(cluster)[target]["header"]["member_id"], "x")
    cluster.etcdctl("move-leader", target_id, "--endpoints", cluster.members[current].client_url)
    deadline = time.monotonic() + 10
    while leader_index(cluster) != target:
        if time.monotonic() > deadline:
            raise TimeoutError(f"member {target} does not lead")
        time.sleep(0.1)


def make_follower(cluster: EtcdCluster, index: int) -> None:
    """Move leadership off member ``index`` when it leads."""
    if leader_index(cluster) == index:
        move_leader(cluster, (index + 1) % cluster.n)


class UidApiServer(ApiServer):
    """cp-apiserver run as ``uid`` (setpriv), so iptables can cut its own connections off."""

    def __init__(self, uid: int, etcd_url: str, prefix: str, **options: Any) -> None:
        super().__init__(etcd_url, prefix, **options)
        self.uid = uid
        for path in (self.dir, self.token_file):
            os.chown(path, uid, uid)

    def command(self) -> list[str]:
        return [*as_uid(self.uid), *super().command()]


def metric(url: str, name: str, *, token: str = "admin-token") -> float | None:
    """The value of an unlabelled sample ``name`` at ``url``/metrics; None when unreachable."""
    request = urllib.request.Request(url + "/metrics", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    match = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
    return float(match.group(1)) if match else None


class ApiWatch:
    """``GET /api/v1/<resource>?watch=1`` followed in a thread; ``events`` grows as lines arrive."""

    def __init__(self, url: str, resource: str, *, token: str = "admin-token") -> None:
        self.request = urllib.request.Request(f"{url}/api/v1/{resource}?watch=1",
                                              headers={"Authorization": f"Bearer {token}"})
        self.events: list[tuple[str, str, dict[str, Any]]] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"api-watch-{resource}", daemon=True)

    def _run(self) -> None:
        try:
            with urllib.request.urlopen(self.request, timeout=60) as resp:
                for line in resp:
                    if self._stop.is_set():
                        return
                    event = json.loads(line)
                    if event["type"] != "BOOKMARK":
                        self.events.append((event["type"], event["object"]["metadata"]["name"], event["object"]))
        except BaseException as exc:  # reported by the test through .error
            self.error = exc

    def ended(self, *, timeout: float) -> bool:
        """True once the stream has ended (the server closed it, or it failed: see ``error``)."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def names(self, event_type: str = "ADDED") -> set[str]:
        return {name for kind, name, _ in list(self.events) if kind == event_type}

    def __enter__(self) -> ApiWatch:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
