"""cpctl end to end: the real entry point (``python -m controlplane.cli.main``) in a subprocess
against a real cp-apiserver (scheduler and controllers included) on a real etcd.

One server serves the whole module (each test uses names of its own) because starting one
per test would cost more than the tests. Tests that need a machine play its agent through
``controlplane.client.Client`` with that machine's node token: heartbeats, and instance
status writes where an instance must become Running and ready. No Docker is involved.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from apiserver_fixture import ApiServer
from etcd_fixture import EtcdServer

from controlplane.client import Client
from controlplane.errors import BadRequest, Forbidden, NotFound, ServiceUnavailable

CPCTL = [sys.executable, "-m", "controlplane.cli.main"]


@pytest.fixture(scope="module")
def server(etcd: EtcdServer) -> Iterator[ApiServer]:
    with ApiServer(etcd.url, f"/cp-test/cli-{uuid.uuid4().hex[:8]}") as api:
        yield api


def cpctl(
    server: ApiServer, *args: str, token: str = "admin-token", stdin: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CPCTL, *args], env=server.env(token), input=stdin, capture_output=True, text=True, timeout=timeout
    )


def admin(server: ApiServer) -> Client:
    return Client(server.url, token="admin-token")


async def heartbeat(server: ApiServer, machine: str, labels: dict[str, str], *, address: str = "127.0.1.9") -> None:
    async with Client(server.url, token=f"node-{machine}-token") as node:
        await node.heartbeat(machine, {"address": address, "labels": labels,
                                       "capacity": {"cpu": 4, "memoryMB": 4096}})


async def until(check: Any, *, timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll the async ``check`` until it returns something truthy."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        result = await check()
        if result:
            return result
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def get_or_none(server: ApiServer, resource: str, name: str) -> dict[str, Any] | None:
    async with admin(server) as api:
        try:
            return await api.get(resource, name)
        except NotFound:
            return None


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


# --- run -----------------------------------------------------------------------------------------

async def test_run_no_wait_creates_the_unit(server: ApiServer) -> None:
    result = cpctl(server, "run", "web", "--image", "local/web:latest", "--replicas", "2", "--port", "8080",
                   "--health-http", "/", "--constraint", "role=web", "--constraint", "role=edge",
                   "--env", "GREETING=hello", "--label", "app=web", "--no-wait", "--", "httpd", "-f", "-p", "8080")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "unit/web created"
    unit = await get_or_none(server, "units", "web")
    assert unit is not None
    spec = unit["spec"]
    assert spec["image"] == "local/web:latest" and spec["replicas"] == 2
    assert spec["ports"] == [{"containerPort": 8080, "hostPort": 0, "protocol": "tcp"}]
    assert spec["health"]["http"] == {"path": "/", "port": 8080}
    assert spec["placement"]["machineMetadata"] == {"role": ["web", "edge"]}
    assert spec["command"] == ["httpd", "-f", "-p", "8080"]
    assert spec["env"] == {"GREETING": "hello"}
    assert unit["metadata"]["labels"] == {"app": "web"}


async def test_run_proxy_units(server: ApiServer) -> None:
    assert cpctl(server, "run", "px-lb", "--lb", "px", "--replicas", "2", "--expose", "someapp",
                 "--no-wait").returncode == 0
    assert cpctl(server, "run", "px-edge", "--edge", "mywebsite.com", "--port", "80:8088", "--global",
                 "--no-wait").returncode == 0
    lb = await get_or_none(server, "units", "px-lb")
    edge = await get_or_none(server, "units", "px-edge")
    assert lb and lb["spec"]["proxy"] == {"kind": "loadbalancer", "target": "px", "port": 80}
    assert lb["spec"]["expose"]["host"] == "someapp"
    assert edge and edge["spec"]["proxy"] == {"kind": "edge", "domain": "mywebsite.com", "port": 80}
    assert edge["spec"]["ports"][0]["hostPort"] == 8088 and edge["spec"]["global"] is True


async def test_invalid_name_is_one_status_line_and_nothing_stored(server: ApiServer) -> None:
    result = cpctl(server, "run", "Web!", "--image", "x", "--no-wait")
    assert result.returncode == 1
    line = one_error_line(result.stderr)
    assert "Web!" in line and "is invalid: metadata.name: must be a DNS-1123 label" in line
    assert result.stdout == ""
    async with admin(server) as api:
        items, _ = await api.list_all("units")
    assert all(u["metadata"]["name"] != "Web!" for u in items)


async def test_invalid_combination_names_the_field(server: ApiServer) -> None:
    result = cpctl(server, "run", "pinned", "--image", "x", "--machine", "m1", "--conflicts", "db-*", "--no-wait")
    assert result.returncode == 1
    assert "spec.placement.machine" in one_error_line(result.stderr)
    assert await get_or_none(server, "units", "pinned") is None


def test_usage_errors_exit_2_and_send_nothing(server: ApiServer) -> None:
    for args in (["run", "bad-port", "--image", "x", "--port", "abc"], ["run", "no-image"],
                 ["run", "two-proxies", "--lb", "a", "--edge", "b.com"], ["get", "pods"], ["scale", "web"],
                 ["run", "hc", "--image", "x", "--health-http", "/"]):
        result = cpctl(server, *args)
        assert result.returncode == 2, (args, result.stderr)
        assert "Usage:" in result.stderr
    assert asyncio.run(get_or_none(server, "units", "bad-port")) is None


def test_viewer_is_refused_a_write(server: ApiServer) -> None:
    result = cpctl(server, "run", "by-viewer", "--image", "x", "--no-wait", token="viewer-token")
    assert result.returncode == 1
    assert one_error_line(result.stderr) == 'error: user "viewer" (viewer) cannot create units'
    assert asyncio.run(get_or_none(server, "units", "by-viewer")) is None
    assert cpctl(server, "get", "units", token="viewer-token").returncode == 0


def test_unreachable_server() -> None:
    result = subprocess.run([*CPCTL, "--server", "http://127.0.0.1:1", "get", "units"],
                            capture_output=True, text=True, timeout=30, env={"HOME": "/nonexistent",
                                                                             "PATH": "/usr/bin:/bin"})
    assert result.returncode == 1
    assert one_error_line(result.stderr).startswith("error: cannot reach the server at http://127.0.0.1:1: ")


# --- waiting -------------------------------------------------------------------------------------

async def test_run_wait_times_out_with_the_placement_reason(server: ApiServer) -> None:
    # Relies on the leader's controllers (they create web-0 and the scheduler writes why it
    # stays Pending); role=nowhere matches no machine whatever other tests registered.
    result = cpctl(server, "run", "stuck", "--image", "x", "--constraint", "role=nowhere", "--timeout", "2")
    assert result.returncode == 3, result.stderr
    assert "unit/stuck created" in result.stdout
    assert "error: timed out after 2s waiting for unit/stuck" in result.stderr
    assert "stuck-0: Pending" in result.stderr
    assert "machines" in result.stderr  # e.g. "0/2 machines: 2 lack role=nowhere"
    assert "Traceback" not in result.stderr


async def test_run_wait_succeeds_when_the_instance_runs(server: ApiServer) -> None:
    """Play m2's agent: heartbeat, and report the instance bound to m2 Running and ready."""
    await heartbeat(server, "m2", {"role": "wait-test"})
    proc = await asyncio.create_subprocess_exec(
        *CPCTL, "run", "waited", "--image", "x", "--constraint", "role=wait-test", "--timeout", "30",
        env=server.env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    communicate = asyncio.ensure_future(proc.communicate())
    async with Client(server.url, token="node-m2-token") as node:
        while not communicate.done():
            await node.heartbeat("m2", {"address": "127.0.1.2", "labels": {"role": "wait-test"}})
            items, _ = await node.list_all("instances", field_selector="spec.unit=waited,spec.machine=m2")
            for inst in items:
                if not (inst["status"].get("phase") == "Running" and inst["status"].get("ready")):
                    inst["status"].update({"phase": "Running", "ready": True, "address": "127.0.1.2"})
                    await node.put_status("instances", inst["metadata"]["name"], inst)
            await asyncio.wait([communicate], timeout=0.3)
    stdout, stderr = await communicate
    assert proc.returncode == 0, stderr.decode()
    assert "unit/waited created" in stdout.decode()
    assert "unit/waited: 1/1 ready" in stdout.decode()


# --- apply ---------------------------------------------------------------------------------------

APPLY = """\
apiVersion: v1
kind: Unit
metadata: {name: api, labels: {app: api, tier: back}}
spec: {image: local/web:1, replicas: 1, ports: [{containerPort: 8080}]}
---
kind: Unit
metadata: {name: db, labels: {app: db, tier: back}}
spec:
  image: local/db:1
  placement: {conflicts: ["api*"]}
"""


async def test_apply_creates_then_configures(server: ApiServer, tmp_path: Any) -> None:
    path = tmp_path / "units.yaml"
    path.write_text(APPLY)
    first = cpctl(server, "apply", "-f", str(path), "--no-wait")
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == ["unit/api created", "unit/db created"]
    again = cpctl(server, "apply", "-f", str(path), "--no-wait")
    assert again.stdout.splitlines() == ["unit/api unchanged", "unit/db unchanged"]
    changed = cpctl(server, "apply", "-f", "-", "--no-wait", stdin=APPLY.replace("replicas: 1", "replicas: 3"))
    assert changed.returncode == 0, changed.stderr
    assert changed.stdout.splitlines() == ["unit/api configured", "unit/db unchanged"]
    api = await get_or_none(server, "units", "api")
    assert api and api["spec"]["replicas"] == 3 and api["metadata"]["generation"] == 2


async def test_apply_json_and_invalid(server: ApiServer) -> None:
    good = json.dumps({"apiVersion": "v1", "kind": "Unit", "metadata": {"name": "from-json"}, "spec": {"image": "x"}})
    result = cpctl(server, "apply", "-f", "-", "--no-wait", stdin=good)
    assert (result.returncode, result.stdout.strip()) == (0, "unit/from-json created")
    bad = json.dumps({"kind": "Unit", "metadata": {"name": "bad-replicas"}, "spec": {"image": "x", "replicas": -1}})
    result = cpctl(server, "apply", "-f", "-", "--no-wait", stdin=bad)
    assert result.returncode == 1
    assert "spec.replicas" in one_error_line(result.stderr)
    assert await get_or_none(server, "units", "bad-replicas") is None
    result = cpctl(server, "apply", "-f", "-", stdin="kind: Unit\nmetadata: [\n")
    assert result.returncode == 1 and "not valid YAML" in one_error_line(result.stderr)


# --- get, describe -------------------------------------------------------------------------------

def test_get_in_every_output_format(server: ApiServer) -> None:
    assert cpctl(server, "run", "fmt", "--image", "img:1", "--replicas", "3", "--label", "app=fmt",
                 "--no-wait").returncode == 0
    table = cpctl(server, "get", "units", "fmt")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["NAME", "REPLICAS", "IMAGE", "AGE"]
    assert lines[1].split()[:3] == ["fmt", "0/3", "img:1"]  # no agent reports its instances Running
    wide = cpctl(server, "get", "u", "-o", "wide").stdout.splitlines()
    assert wide[0].split() == ["NAME", "REPLICAS", "IMAGE", "AGE", "PORTS", "PLACEMENT", "LABELS"]
    one = json.loads(cpctl(server, "get", "unit", "fmt", "-o", "json").stdout)
    assert one["kind"] == "Unit" and one["spec"]["replicas"] == 3
    listed = json.loads(cpctl(server, "get", "units", "-o", "json").stdout)
    assert listed["kind"] == "UnitList" and "fmt" in [u["metadata"]["name"] for u in listed["items"]]
    assert yaml.safe_load(cpctl(server, "get", "units", "fmt", "-o", "yaml").stdout)["metadata"]["name"] == "fmt"
    assert "unit/fmt" in cpctl(server, "get", "units", "-o", "name").stdout.splitlines()
    instances = cpctl(server, "get", "i", "--field-selector", "spec.unit=fmt", "-o", "wide")
    assert instances.stdout.splitlines()[0].split()[:3] == ["NAME", "UNIT", "MACHINE"]
    missing = cpctl(server, "get", "unit", "nope")
    assert missing.returncode == 1 and one_error_line(missing.stderr) == 'error: units "nope" not found'


def test_get_label_selector(server: ApiServer) -> None:
    for name, app in (("sel-a", "alpha"), ("sel-b", "beta"), ("sel-c", "gamma")):
        assert cpctl(server, "run", name, "--image", "x", "--label", f"app={app}", "--label", "sel=yes",
                     "--no-wait").returncode == 0
    assert cpctl(server, "get", "units", "-l", "app=alpha", "-o", "name").stdout.split() == ["unit/sel-a"]
    both = cpctl(server, "get", "units", "-l", "sel=yes,app in (alpha,gamma)", "-o", "name").stdout.split()
    assert both == ["unit/sel-a", "unit/sel-c"]
    none = cpctl(server, "get", "units", "-l", "app=nothing")
    assert none.returncode == 0 and none.stdout == "" and "No units found" in none.stderr
    bad = cpctl(server, "get", "units", "-l", "app in (")
    assert bad.returncode == 1 and one_error_line(bad.stderr).startswith("error: invalid label selector")


async def test_get_watch_prints_changes(server: ApiServer) -> None:
    proc = await asyncio.create_subprocess_exec(
        *CPCTL, "get", "units", "-l", "watched=yes", "-w", "--watch-timeout", "3", "-o", "name",
        env=server.env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    await asyncio.sleep(1.0)
    async with admin(server) as api:
        await api.create("units", {"kind": "Unit", "metadata": {"name": "watched", "labels": {"watched": "yes"}},
                                   "spec": {"image": "x"}})
    stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=20)
    assert proc.returncode == 0, stderr.decode()
    assert "unit/watched" in stdout.decode().split()


async def test_describe_unit_and_instance(server: ApiServer) -> None:
    assert cpctl(server, "run", "desc", "--image", "x", "--constraint", "role=nowhere", "--no-wait").returncode == 0

    async def placed_reason() -> str:
        inst = await get_or_none(server, "instances", "desc-0")
        return str((inst or {}).get("status", {}).get("message") or "")

    before = await until(placed_reason, what="desc-0's placement message")
    unit = cpctl(server, "describe", "unit", "desc")
    assert unit.returncode == 0, unit.stderr
    assert "Name:           desc" in unit.stdout and "Spec:" in unit.stdout and "Status:" in unit.stdout
    assert "Instances:" in unit.stdout and "desc-0" in unit.stdout
    inst = cpctl(server, "describe", "i", "desc-0")
    assert inst.returncode == 0, inst.stderr
    # The message is the scheduler's live reason, and other tests' machines go NotReady while this one
    # runs (the server is shared): the line shows the message of just before or just after the call.
    after = await placed_reason()
    placement = [line for line in inst.stdout.splitlines() if line.startswith("Placement:")]
    assert placement and placement[0].removeprefix("Placement:").strip() in {before, after}, inst.stdout
    assert "Events:" in inst.stdout


# --- scale, delete -------------------------------------------------------------------------------

async def test_scale(server: ApiServer) -> None:
    assert cpctl(server, "run", "scaled", "--image", "x", "--no-wait").returncode == 0
    result = cpctl(server, "scale", "scaled", "--replicas", "4")
    assert (result.returncode, result.stdout.strip()) == (0, "unit/scaled scaled to 4")
    unit = await get_or_none(server, "units", "scaled")
    assert unit and unit["spec"]["replicas"] == 4
    missing = cpctl(server, "scale", "no-such-unit", "--replicas", "1")
    assert missing.returncode == 1 and "not found" in one_error_line(missing.stderr)


async def test_delete(server: ApiServer) -> None:
    assert cpctl(server, "run", "doomed", "--image", "x", "--replicas", "2", "--no-wait").returncode == 0

    async def instances_exist() -> bool:
        async with admin(server) as api:
            items, _ = await api.list_all("instances", field_selector="spec.unit=doomed")
        return len(items) == 2

    await until(instances_exist, what="doomed's instances")
    result = cpctl(server, "delete", "unit", "doomed", "--wait", "--timeout", "20")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "unit/doomed deleted"
    assert await get_or_none(server, "units", "doomed") is None
    assert await get_or_none(server, "instances", "doomed-0") is None
    again = cpctl(server, "delete", "u", "doomed")
    assert again.returncode == 1 and one_error_line(again.stderr) == 'error: units "doomed" not found'


# --- machines ------------------------------------------------------------------------------------

async def test_cordon_uncordon_and_fleet_views(server: ApiServer) -> None:
    await heartbeat(server, "m1", {"role": "cordon-test", "region": "eu"}, address="127.0.1.1")
    result = cpctl(server, "cordon", "m1")
    assert (result.returncode, result.stdout.strip()) == (0, "machine/m1 cordoned")
    machine = await get_or_none(server, "machines", "m1")
    assert machine and machine["spec"]["unschedulable"] is True
    row = next(line for line in cpctl(server, "get", "m").stdout.splitlines() if line.startswith("m1 "))
    assert row.split()[:5] == ["m1", "Ready", "127.0.1.1", "region=eu,role=cordon-test", "no"]
    assert cpctl(server, "uncordon", "m1").stdout.strip() == "machine/m1 uncordoned"
    machine = await get_or_none(server, "machines", "m1")
    assert machine and machine["spec"]["unschedulable"] is False
    refused = cpctl(server, "cordon", "m1", token="viewer-token")
    assert refused.returncode == 1 and "cannot patch machines/m1" in one_error_line(refused.stderr)
    machines = cpctl(server, "list-machines").stdout.splitlines()
    assert machines[0].split() == ["MACHINE", "IP", "METADATA"]
    assert ["m1", "127.0.1.1", "region=eu,role=cordon-test"] in [line.split() for line in machines]
    units = cpctl(server, "list-units").stdout.splitlines()
    assert units[0].split() == ["UNIT", "MACHINE", "ACTIVE", "SUB"]
    assert cpctl(server, "cordon", "no-such-machine").returncode == 1


async def test_drain_moves_instances_off(server: ApiServer) -> None:
    await heartbeat(server, "m3", {"role": "drain-test"}, address="127.0.1.3")
    assert cpctl(server, "run", "drained", "--image", "x", "--constraint", "role=drain-test",
                 "--no-wait").returncode == 0

    async def bound() -> bool:
        await heartbeat(server, "m3", {"role": "drain-test"}, address="127.0.1.3")
        inst = await get_or_none(server, "instances", "drained-0")
        return bool(inst and inst["spec"]["machine"] == "m3")

    await until(bound, what="drained-0 bound to m3")
    result = cpctl(server, "drain", "m3")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()  # other tests' units may have landed on m3 too
    assert lines[0] == "machine/m3 cordoned" and lines[-1] == "machine/m3 drained"
    assert "instance/drained-0 evicted" in lines

    async def replaced_and_pending() -> bool:
        inst = await get_or_none(server, "instances", "drained-0")
        return bool(inst and not inst["spec"]["machine"] and inst["status"].get("message"))

    await until(replaced_and_pending, what="drained-0 recreated and unplaceable (its only machine is cordoned)")


def test_logs_of_an_unplaced_instance_is_refused(server: ApiServer) -> None:
    assert cpctl(server, "run", "nolog", "--image", "x", "--constraint", "role=nowhere", "--no-wait").returncode == 0

    async def exists() -> dict[str, Any] | None:
        return await get_or_none(server, "instances", "nolog-0")

    asyncio.run(until(exists, what="nolog-0"))
    result = cpctl(server, "logs", "nolog-0")
    assert result.returncode == 1
    assert "not bound to a machine" in one_error_line(result.stderr)


def test_version(server: ApiServer) -> None:
    result = cpctl(server, "version")
    assert result.returncode == 0
    assert result.stdout.splitlines()[0] == "Client Version: 0.1.0"
    assert result.stdout.splitlines()[1].startswith("Server Version: 0.1.0")
    assert json.loads(cpctl(server, "version", "-o", "json").stdout)["server"]["version"] == "0.1.0"


# --- the Client underneath -----------------------------------------------------------------------

async def test_client_pages_errors_and_watch(server: ApiServer) -> None:
    async with admin(server) as api:
        for i in range(5):
            await api.create("units", {"kind": "Unit", "metadata": {"name": f"page-{i}", "labels": {"page": "yes"}},
                                       "spec": {"image": "x", "replicas": 0}})
        page = await api.list("units", label_selector="page=yes", limit=2)
        assert len(page["items"]) == 2 and page["metadata"]["continue"]
        items, revision = await api.list_all("units", label_selector="page=yes", page_size=2)
        assert [u["metadata"]["name"] for u in items] == [f"page-{i}" for i in range(5)]
        with pytest.raises(NotFound):
            await api.get("units", "page-99")
        with pytest.raises(BadRequest):
            await api.list("units", label_selector="a in (")
        patched = await api.patch("units", "page-0", {"metadata": {"labels": {"patched": "yes"}}})
        assert patched["metadata"]["labels"] == {"page": "yes", "patched": "yes"}
        scale = await api.put_scale("page-1", 3)
        assert scale["spec"]["replicas"] == 3 and (await api.get_scale("page-1"))["spec"]["replicas"] == 3
        events = []
        async for event in api.watch("units", resource_version=revision, label_selector="page=yes",
                                     timeout_seconds=1):
            if event["type"] != "BOOKMARK":
                events.append((event["type"], event["object"]["metadata"]["name"]))
        # the unit controller's status writes show up as well
        assert {("MODIFIED", "page-0"), ("MODIFIED", "page-1")} <= set(events)
        await api.delete("units", "page-4")
    async with Client(server.url, token="viewer-token") as viewer:
        with pytest.raises(Forbidden):
            await viewer.delete("units", "page-3")
    async with Client("http://127.0.0.1:1", timeout=2) as nowhere:
        with pytest.raises(ServiceUnavailable, match="cannot reach the server at http://127.0.0.1:1"):
            await nowhere.get("units", "x")
