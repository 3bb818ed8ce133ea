"""Events on the good path, end to end but light: a real cp-apiserver, two real agents on Docker.

After a clean run, ``cpctl describe instance`` lists what the scheduler and the agent did
(Scheduled, Pulled, Created, Started, Ready); a scale-down and a delete leave Killing about the
instances stopped; a crash loop's Started is one Event counted up, not one object per restart.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from cluster_fixture import LocalCluster
from etcd_fixture import EtcdServer

pytestmark = pytest.mark.docker

LIFECYCLE = ("Scheduled", "Pulled", "Created", "Started", "Ready")


@pytest.fixture(scope="module")
def cluster(etcd: EtcdServer) -> Iterator[LocalCluster]:
    with LocalCluster(etcd.url, f"/cp-test/events-{uuid.uuid4().hex[:8]}", machines=2,
                      agent_args=["--metrics-listen", "off"]) as local:
        yield local


def events_about(cluster: LocalCluster, name: str) -> list[dict[str, Any]]:
    items = cluster.api_get(f"events?fieldSelector=involvedObject.name={name}")["items"]
    return list(items)


def reasons(cluster: LocalCluster, name: str) -> set[str]:
    return {str(e["reason"]) for e in events_about(cluster, name)}


def test_describe_lists_the_lifecycle_and_killing_after_scale_down_and_delete(cluster: LocalCluster) -> None:
    run = cluster.cpctl("run", "desc", "--image", "local/web:latest", "--replicas", "2", "--port", "8080",
                        "--health-http", "/", "--timeout", "60")
    assert run.returncode == 0, run.stderr + cluster.logs()
    cluster.wait_for(lambda: all(set(LIFECYCLE) <= reasons(cluster, f"desc-{i}") for i in (0, 1)),
                     timeout=30, what="the lifecycle events of desc-0 and desc-1")
    machine = cluster.instances("desc")[0]["spec"]["machine"]
    described = cluster.cpctl("describe", "instance", "desc-0")
    assert described.returncode == 0, described.stderr
    events = described.stdout.split("Events:", 1)[1]
    for reason in LIFECYCLE:
        assert re.search(rf"\bNormal\s+{reason}\b", events), described.stdout
    assert f"Successfully assigned desc-0 to {machine}" in events
    assert "Container image \"local/web:latest\" already present on machine" in events

    # --wait: the instance that stays is of the same template, though the scale bumped the
    # unit's generation (the wait used to miss it and time out)
    scaled = cluster.cpctl("scale", "desc", "--replicas", "1", "--wait", "--timeout", "30s")
    assert scaled.returncode == 0, scaled.stderr
    cluster.wait_for(lambda: "Killing" in reasons(cluster, "desc-1"), timeout=30, what="Killing about desc-1")
    listed = cluster.cpctl("get", "events")
    assert re.search(r"Normal\s+Killing\s+instance/desc-1\s+Stopping container \w+: instance desc-1 is no "
                     r"longer desired on this machine", listed.stdout), listed.stdout

    deleted = cluster.cpctl("delete", "unit", "desc")
    assert deleted.returncode == 0, deleted.stderr
    cluster.wait_for(lambda: "Killing" in reasons(cluster, "desc-0"), timeout=30, what="Killing about desc-0")


def test_a_crash_loop_counts_its_restarts_on_one_event(cluster: LocalCluster) -> None:
    run = cluster.cpctl("run", "crashy", "--image", "local/web:latest", "--no-wait", "--", "sh", "-c", "exit 3")
    assert run.returncode == 0, run.stderr

    def started() -> dict[str, Any] | None:
        found = [e for e in events_about(cluster, "crashy-0") if e["reason"] == "Started"]
        return found[0] if len(found) == 1 and int(found[0]["count"]) >= 3 else None

    event = cluster.wait_for(started, timeout=40, what="one Started event with count >= 3")
    assert event["lastTimestamp"] > event["timestamp"]
    described = cluster.cpctl("describe", "instance", "crashy-0")
    assert re.search(r"\(x\d+ over \d+s\)\s+Normal\s+Started", described.stdout), described.stdout
    cluster.cpctl("delete", "unit", "crashy")
