"""SIGTERM while etcd is unreachable: cp-apiserver exits within 2 s, not after its store timeouts.

On the way out the server stops its controllers (the leader revokes its lease), its watch
caches and its etcd clients, and aiohttp closes its connections; each of those may wait on an
etcd that no longer answers -- killed (connections refused) or cut off (packets dropped, the
harder case: nothing fails, everything waits). Process supervisors send SIGKILL after a grace
period, and a leader's replacement starts only when its lease expires or is revoked, so the
exit must be prompt either way: with a watch open and a write waiting on etcd at the time.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time

import pytest
from apiserver_fixture import ApiServer
from etcd_fixture import EtcdServer
from fault_servers import ApiWatch, metric
from machine_helper import call, wait_for
from partition import Partition

EXIT_WITHIN = 2.0
UNIT = {"apiVersion": "v1", "kind": "Unit", "metadata": {"name": "late"}, "spec": {"image": "local/web:1"}}


def write_in_background(api: ApiServer) -> threading.Thread:
    """A POST that waits on the lost etcd until the server goes (any outcome is fine)."""

    def post() -> None:
        try:
            call(api.url, "POST", "/api/v1/units", UNIT, timeout=15)
        except OSError:
            pass  # the server closed the connection on its way out

    writer = threading.Thread(target=post, name="late-write", daemon=True)
    writer.start()
    return writer


@pytest.mark.parametrize("how", ["killed", "partitioned"])
def test_sigterm_exits_promptly_when_etcd_is_unreachable(how: str, unique_prefix: str, partition: Partition) -> None:
    with EtcdServer() as etcd, ApiServer(etcd.url, unique_prefix, machine_ttl=5) as api, \
            ApiWatch(api.url, "units") as watch:
        assert api.proc is not None
        wait_for(lambda: metric(api.url, "cp_leader") == 1.0, timeout=10, what="the server to lead")
        if how == "killed":
            etcd.kill(0)
        else:
            partition.port(etcd.members[0].client_port)
        writer = write_in_background(api)
        time.sleep(0.5)  # the write, the lease keeper and the watch caches now wait on etcd
        started = time.monotonic()
        api.proc.send_signal(signal.SIGTERM)
        try:
            code: int | None = api.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            code = None
        took = time.monotonic() - started
        assert code is not None and took < EXIT_WITHIN, (f"exit {code} after {took:.1f} s", api.log_tail())
        assert code == 0, api.log_tail()
        writer.join(5)
        assert not writer.is_alive() and watch.ended(timeout=5)
