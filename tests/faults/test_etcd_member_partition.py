"""An etcd member cut off from its peers while cp-apiserver talks to it.

The member stays alive and answers its clients, but has no leader (or, when it led, loses its
quorum): writes through it never commit and a watch on it never delivers again -- unless the
client asks etcd to refuse requests without a leader (the ``hasleader`` gRPC metadata), which
makes etcd fail them with "etcdserver: no leader". The API server must move both its writes
and its watch caches to a healthy member within its store timeout (5 s), and no write it
acknowledged (201) may be lost.

The member runs as its own uid, so the partition (tests/faults/partition.py) also cuts the
connections it opened to its peers, not only those its peers opened to it.
"""

from __future__ import annotations

import time

import pytest
from apiserver_fixture import ApiServer
from etcd_fixture import EtcdCluster
from fault_servers import ApiWatch, make_follower, move_leader
from machine_helper import call, wait_for
from partition import Partition, spare_uid

STORE_TIMEOUT = 5.0  # cp-apiserver's per-request etcd timeout (open_store's default)
WRITES = 12


def unit(name: str) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "Unit", "metadata": {"name": name}, "spec": {"image": "local/web:1"}}


def cut_from_peers(partition: Partition, cluster: EtcdCluster, index: int) -> None:
    member = cluster.members[index]
    assert member.run_as is not None
    partition.port(member.peer_port)
    partition.uid_to_ports(member.run_as, [m.peer_port for i, m in enumerate(cluster.members) if i != index])


def write_units(api: ApiServer, names: list[str]) -> tuple[dict[str, int], list[float]]:
    """POST each unit once; (name -> status, seconds each request took)."""
    statuses: dict[str, int] = {}
    took: list[float] = []
    for name in names:
        started = time.monotonic()
        status, body = call(api.url, "POST", "/api/v1/units", unit(name), timeout=4 * STORE_TIMEOUT)
        took.append(time.monotonic() - started)
        statuses[name] = status
        assert status == 201 or (status in (503, 504) and body["kind"] == "Status"), (name, status, body)
    return statuses, took


def stored_names(cluster: EtcdCluster, prefix: str) -> set[str]:
    keys = cluster.etcdctl("get", "--prefix", "--keys-only", f"{prefix}/units/").split()
    return {key.rsplit("/", 1)[1] for key in keys}


@pytest.mark.parametrize("role", ["follower", "leader"])
def test_writes_and_watches_leave_a_member_cut_from_its_peers(role: str, unique_prefix: str,
                                                              partition: Partition) -> None:
    with EtcdCluster(3, run_as={0: spare_uid()}) as cluster:
        if role == "follower":
            make_follower(cluster, 0)
        else:
            move_leader(cluster, 0)
        # the store starts on the first endpoint: member 0
        with ApiServer(cluster.url, unique_prefix, controllers=False) as api, ApiWatch(api.url, "units") as watch:
            before, _ = write_units(api, ["before-0", "before-1"])
            assert set(before.values()) == {201}
            wait_for(lambda: {"before-0", "before-1"} <= watch.names(), timeout=5, what="the watch to start")

            cut_from_peers(partition, cluster, 0)
            cut_at = time.monotonic()
            statuses, took = write_units(api, [f"during-{i:02d}" for i in range(WRITES)])
            acked = {name for name, status in statuses.items() if status == 201}
            # each write is answered within the store's timeout (plus a little for the retry)
            assert max(took) < STORE_TIMEOUT + 2, (took, api.log_tail())
            assert len(acked) >= WRITES - 2, (statuses, api.log_tail())
            # the API's own reads and watches (its watch caches) have left member 0
            wait_for(lambda: all(call(api.url, "GET", f"/api/v1/units/{n}")[0] == 200 for n in acked),
                     timeout=max(1.0, cut_at + 3 * STORE_TIMEOUT - time.monotonic()),
                     what=f"every acknowledged unit readable through the API\n{api.log_tail()}")
            wait_for(lambda: acked <= watch.names(), timeout=5, what="the API watch to deliver every write")
            assert watch.error is None, watch.error

            partition.heal()
            cluster.wait_healthy()
            assert acked | {"before-0", "before-1"} <= stored_names(cluster, unique_prefix)

