"""fleet unit files against a real cp-apiserver: ``cpctl apply -f X.service`` creates the units the
seed scenario's files mean, and the scheduler places them as fleet would have (machines played
through the API, no Docker); then, with real agents on Docker, someapp's two instances run on two
different machines (its ``Conflicts=someapp@*``)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from apiserver_fixture import ApiServer
from cluster_fixture import LocalCluster
from etcd_fixture import EtcdServer
from machine_helper import FakeMachines, call, wait_for

FLEET = Path(__file__).resolve().parents[1] / "fixtures" / "fleet"
CPCTL = [sys.executable, "-m", "controlplane.cli.main"]
LABELS = {"m1": {"role": "edge", "region": "eu"}, "m2": {"role": "lb"}, "m3": {"role": "lb"},
          "m4": {"role": "edge", "region": "us"}, "m5": {"role": "edge", "region": "asia"}}


def cpctl(server: ApiServer, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CPCTL, *args], env=server.env("admin-token"), capture_output=True, text=True,
                          timeout=60)


def placed(server: ApiServer, unit: str) -> dict[str, str]:
    """instance -> machine, of the unit's instances."""
    status, body = call(server.url, "GET", f"/api/v1/instances?fieldSelector=spec.unit={unit}")
    assert status == 200, body
    return {i["metadata"]["name"]: i["spec"]["machine"] for i in body["items"]}


@pytest.fixture
def server(etcd: EtcdServer) -> Iterator[ApiServer]:
    with ApiServer(etcd.url, f"/cp-test/fleet-{uuid.uuid4().hex[:8]}") as api:
        yield api


def test_apply_the_seed_unit_files_and_see_them_placed(server: ApiServer) -> None:
    with FakeMachines(server.url, sorted(LABELS), labels=LABELS):
        for name in ("someapp@.service", "someapp-lb@.service", "edge.service"):
            converted = cpctl(server, "convert", str(FLEET / name))
            assert converted.returncode == 0, converted.stderr
            applied = cpctl(server, "apply", "-f", str(FLEET / name), "--no-wait")
            unit = name.split("@")[0].removesuffix(".service")
            assert applied.returncode == 0, applied.stderr
            assert applied.stdout.strip() == f"unit/{unit} created"
            assert applied.stderr == converted.stderr  # the same warnings, one line each
            status, stored = call(server.url, "GET", f"/api/v1/units/{unit}")
            assert status == 200
            wanted = yaml.safe_load(converted.stdout)["spec"]
            assert {k: stored["spec"][k] for k in wanted if k != "placement"} == \
                {k: v for k, v in wanted.items() if k != "placement"}
            for key, value in wanted.get("placement", {}).items():
                assert stored["spec"]["placement"][key] == value
        assert "warning: someapp-lb@.service: docker run -v /etc/someapp-lb:/etc/nginx/conf.d: not mapped" in \
            cpctl(server, "apply", "-f", str(FLEET / "someapp-lb@.service"), "--no-wait").stderr.splitlines()
        for unit in ("someapp", "someapp-lb"):
            scaled = cpctl(server, "scale", unit, "--replicas", "2")
            assert scaled.returncode == 0, scaled.stderr

        def all_placed() -> dict[str, dict[str, str]] | None:
            got = {unit: placed(server, unit) for unit in ("someapp", "someapp-lb", "edge")}
            ok = len(got["someapp"]) == 2 and len(got["someapp-lb"]) == 2 and len(got["edge"]) == 2
            return got if ok and all(all(m.values()) for m in got.values()) else None

        got = wait_for(all_placed, timeout=20, interval=0.1, what="every instance placed")
    assert len(set(got["someapp"].values())) == 2  # Conflicts=someapp@*: never two on one machine
    assert sorted(got["someapp-lb"].values()) == ["m2", "m3"]  # role=lb, one each
    assert sorted(got["edge"].values()) == ["m1", "m4"]  # Global: every role=edge machine in eu or us


def test_a_unit_file_that_cannot_be_converted_is_one_error_line(server: ApiServer, tmp_path: Path) -> None:
    bad = tmp_path / "node.service"
    bad.write_text("[Service]\nExecStart=/usr/bin/node server.js\n")
    result = cpctl(server, "apply", "-f", str(bad), "--no-wait")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"error: {bad}: line 2: ExecStart is not /usr/bin/docker run ...: cannot convert"]
    assert call(server.url, "GET", "/api/v1/units/node")[0] == 404


@pytest.mark.docker
def test_someapp_instances_run_on_different_machines(etcd: EtcdServer) -> None:
    with LocalCluster(etcd.url, f"/cp-test/fleet-run-{uuid.uuid4().hex[:8]}", machines=2,
                      agent_args=["--metrics-listen", "off"]) as cluster:
        applied = cluster.cpctl("apply", "-f", str(FLEET / "someapp@.service"), "--no-wait")
        assert applied.returncode == 0, applied.stderr
        scaled = cluster.cpctl("scale", "someapp", "--replicas", "2")
        assert scaled.returncode == 0, scaled.stderr + cluster.logs()
        def both_running() -> list[dict[str, Any]] | None:
            items = cluster.instances("someapp")
            up = [i for i in items if i["status"]["phase"] == "Running" and i["status"]["ready"]]
            return up if len(items) == len(up) == 2 else None

        running = cluster.wait_for(both_running, timeout=60, what="both someapp instances running")
        assert {i["spec"]["machine"] for i in running} == {"m1", "m2"}
        assert [len(cluster.containers(machine)) for machine in ("m1", "m2")] == [1, 1]
