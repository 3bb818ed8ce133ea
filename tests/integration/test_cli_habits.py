"""cpctl's kubectl habits end to end (issue 13): merging apply, several -f and -f DIR, --dry-run,
diff, label/annotate, edit and rollout status|history|undo, through the real entry point against a
real cp-apiserver (controllers included) on a real etcd. Machines are played through their node
tokens (heartbeats, instance status writes); no Docker is involved.
"""

from __future__ import annotations

import asyncio
import json
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from apiserver_fixture import ApiServer
from etcd_fixture import EtcdServer

from controlplane.client import Client
from controlplane.errors import NotFound

CPCTL = [sys.executable, "-m", "controlplane.cli.main"]


@pytest.fixture(scope="module")
def server(etcd: EtcdServer) -> Iterator[ApiServer]:
    with ApiServer(etcd.url, f"/cp-test/habits-{uuid.uuid4().hex[:8]}") as api:
        yield api


def cpctl(server: ApiServer, *args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> Any:
    import subprocess

    return subprocess.run([*CPCTL, *args], env={**server.env("admin-token"), **(env or {})}, input=stdin,
                          capture_output=True, text=True, timeout=60)


async def get_or_none(server: ApiServer, resource: str, name: str) -> dict[str, Any] | None:
    async with Client(server.url, token="admin-token") as api:
        try:
            return await api.get(resource, name)
        except NotFound:
            return None


def unit_yaml(name: str, *, image: str = "local/web:1", extra: str = "") -> str:
    return f"kind: Unit\nmetadata: {{name: {name}}}\nspec:\n  image: {image}\n{extra}"


# --- apply merges --------------------------------------------------------------------------------

async def test_reapplying_a_machine_keeps_its_cordon(server: ApiServer, tmp_path: Path) -> None:
    async with Client(server.url, token="node-m3-token") as node:
        await node.heartbeat("m3", {"address": "127.0.1.3", "labels": {}, "capacity": {"cpu": 4, "memoryMB": 4096}})
    path = tmp_path / "m3.yaml"
    path.write_text("kind: Machine\nmetadata: {name: m3, labels: {disk: ssd}}\n")
    first = cpctl(server, "apply", "-f", str(path))
    assert (first.returncode, first.stdout.strip()) == (0, "machine/m3 configured"), first.stderr
    assert cpctl(server, "cordon", "m3").returncode == 0
    path.write_text("kind: Machine\nmetadata: {name: m3, labels: {disk: ssd, zone: a}}\n")
    again = cpctl(server, "apply", "-f", str(path))
    assert (again.returncode, again.stdout.strip()) == (0, "machine/m3 configured"), again.stderr
    machine = await get_or_none(server, "machines", "m3")
    assert machine is not None
    assert machine["spec"]["unschedulable"] is True
    assert machine["metadata"]["labels"] == {"disk": "ssd", "zone": "a"}


async def test_apply_removes_what_the_file_no_longer_says(server: ApiServer, tmp_path: Path) -> None:
    path = tmp_path / "u.yaml"
    path.write_text(unit_yaml("merge", extra="  env: {A: '1', B: '2'}\n"))
    assert cpctl(server, "apply", "-f", str(path), "--no-wait").stdout.strip() == "unit/merge created"
    assert cpctl(server, "scale", "merge", "--replicas", "3").returncode == 0  # the file names no replicas
    path.write_text(unit_yaml("merge", extra="  env: {A: '1'}\n"))
    result = cpctl(server, "apply", "-f", str(path), "--no-wait")
    assert result.stdout.strip() == "unit/merge configured", result.stderr
    unit = await get_or_none(server, "units", "merge")
    assert unit is not None and unit["spec"]["env"] == {"A": "1"} and unit["spec"]["replicas"] == 3
    assert cpctl(server, "apply", "-f", str(path), "--no-wait").stdout.strip() == "unit/merge unchanged"


async def test_several_files_and_a_directory_all_or_nothing(server: ApiServer, tmp_path: Path) -> None:
    one, two = tmp_path / "one.yaml", tmp_path / "two.json"
    one.write_text(unit_yaml("multi-a"))
    two.write_text(json.dumps({"kind": "Unit", "metadata": {"name": "multi-b"}, "spec": {"image": "x"}}))
    result = cpctl(server, "apply", "-f", str(one), "-f", str(two), "--no-wait")
    assert result.stdout.splitlines() == ["unit/multi-a created", "unit/multi-b created"], result.stderr
    folder = tmp_path / "dir"
    folder.mkdir()
    (folder / "1-good.yaml").write_text(unit_yaml("dir-good"))
    (folder / "2-bad.yaml").write_text(unit_yaml("dir-bad", extra="  replicas: -1\n"))
    refused = cpctl(server, "apply", "-f", str(folder), "--no-wait")
    assert refused.returncode == 1 and "2-bad.yaml" in refused.stderr and "spec.replicas" in refused.stderr
    assert await get_or_none(server, "units", "dir-good") is None  # nothing was sent
    (folder / "2-bad.yaml").unlink()
    assert cpctl(server, "apply", "-f", str(folder), "--no-wait").stdout.strip() == "unit/dir-good created"


# --- dry runs ------------------------------------------------------------------------------------

async def test_server_dry_run_writes_nothing(server: ApiServer, tmp_path: Path) -> None:
    path = tmp_path / "dry.yaml"
    path.write_text(unit_yaml("dry"))
    result = cpctl(server, "apply", "-f", str(path), "--dry-run=server")
    assert (result.returncode, result.stdout.strip()) == (0, "unit/dry created (server dry run)"), result.stderr
    assert await get_or_none(server, "units", "dry") is None
    run = cpctl(server, "run", "dry-run", "--image", "x", "--dry-run=server")
    assert run.stdout.strip() == "unit/dry-run created (server dry run)"
    assert await get_or_none(server, "units", "dry-run") is None
    secret = cpctl(server, "create", "secret", "dry-secret", "--from-literal", "k=v", "--dry-run=server")
    assert secret.stdout.strip() == "secret/dry-secret created (server dry run)"
    assert await get_or_none(server, "secrets", "dry-secret") is None
    invalid = cpctl(server, "run", "Dry_Bad", "--image", "x", "--dry-run=server")
    assert invalid.returncode == 1 and "metadata.name" in invalid.stderr  # validated all the same

    assert cpctl(server, "apply", "-f", str(path), "--no-wait").returncode == 0
    before = await get_or_none(server, "units", "dry")
    path.write_text(unit_yaml("dry", image="local/web:2"))
    changed = cpctl(server, "apply", "-f", str(path), "--dry-run=server")
    assert changed.stdout.strip() == "unit/dry configured (server dry run)", changed.stderr
    assert cpctl(server, "scale", "dry", "--replicas", "4", "--dry-run=server").stdout.strip() == \
        "unit/dry scaled to 4 (server dry run)"
    assert cpctl(server, "delete", "unit", "dry", "--dry-run=server").stdout.strip() == \
        "unit/dry deleted (server dry run)"
    after = await get_or_none(server, "units", "dry")
    assert before is not None and after is not None  # the controllers write status meanwhile: not compared
    assert (after["spec"], after["metadata"]["generation"]) == (before["spec"], before["metadata"]["generation"])
    missing = cpctl(server, "delete", "unit", "no-such-unit", "--dry-run=server")
    assert missing.returncode == 1 and "not found" in missing.stderr


def test_client_dry_run_sends_nothing(server: ApiServer, tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(unit_yaml("client-dry"))
    nowhere = {"CPCTL_SERVER": "http://127.0.0.1:9"}  # nothing listens: any request would fail
    result = cpctl(server, "apply", "-f", str(path), "--dry-run=client", env=nowhere)
    assert result.returncode == 0, result.stderr
    assert "name: client-dry" in result.stdout and "controlplane.io/last-applied-configuration" in result.stdout
    run = cpctl(server, "run", "client-dry", "--image", "x", "--dry-run", env=nowhere)
    assert run.returncode == 0 and "image: x" in run.stdout
    assert cpctl(server, "delete", "unit", "x", "--dry-run=client", env=nowhere).stdout.strip() == \
        "unit/x deleted (dry run)"
    secret = cpctl(server, "create", "secret", "s", "--from-literal", "k=hunter2", "--dry-run=client", env=nowhere)
    assert secret.returncode == 0 and "hunter2" not in secret.stdout
    secret_file = tmp_path / "s.yaml"
    secret_file.write_text("kind: Secret\nmetadata: {name: s}\ndata: {k: hunter2}\n")
    applied = cpctl(server, "apply", "-f", str(secret_file), "--dry-run=client", env=nowhere)
    assert applied.returncode == 0 and "k: <redacted>" in applied.stdout and "hunter2" not in applied.stdout


def test_the_server_refuses_an_unknown_dry_run_value(server: ApiServer) -> None:
    request = urllib.request.Request(f"{server.url}/api/v1/units?dryRun=Some", method="POST",
                                     data=json.dumps({"metadata": {"name": "q"}, "spec": {"image": "x"}}).encode(),
                                     headers={"Authorization": "Bearer admin-token", "Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request, timeout=10)
    assert raised.value.code == 400
    assert "dryRun" in json.loads(raised.value.read())["message"]


# --- diff ----------------------------------------------------------------------------------------

async def test_diff_exit_codes(server: ApiServer, tmp_path: Path) -> None:
    path = tmp_path / "d.yaml"
    path.write_text(unit_yaml("differ", extra="  replicas: 2\n"))
    new = cpctl(server, "diff", "-f", str(path))
    assert new.returncode == 1 and "+++ merged/unit/differ" in new.stdout and "+  image: local/web:1" in new.stdout
    assert cpctl(server, "apply", "-f", str(path), "--no-wait").returncode == 0
    same = cpctl(server, "diff", "-f", str(path))
    assert (same.returncode, same.stdout) == (0, ""), same.stderr
    path.write_text(unit_yaml("differ", image="local/web:2"))
    changed = cpctl(server, "diff", "-f", str(path))
    assert changed.returncode == 1
    assert "-  image: local/web:1" in changed.stdout and "+  image: local/web:2" in changed.stdout
    assert "-  replicas: 2" in changed.stdout  # removed from the file: the server re-defaults it
    unit = await get_or_none(server, "units", "differ")
    assert unit is not None and unit["spec"]["image"] == "local/web:1"  # diff changed nothing
    path.write_text("kind: Unit\nmetadata: {name: differ}\nspec: {image: x, replicas: -1}\n")
    assert cpctl(server, "diff", "-f", str(path)).returncode == 2


# --- label, annotate, edit -----------------------------------------------------------------------

async def test_label_and_annotate(server: ApiServer) -> None:
    assert cpctl(server, "run", "tagged", "--image", "x", "--no-wait").returncode == 0
    assert cpctl(server, "label", "unit", "tagged", "team=a", "tier=web").stdout.strip() == "unit/tagged labeled"
    refused = cpctl(server, "label", "unit", "tagged", "team=b")
    assert refused.returncode == 1 and "--overwrite" in refused.stderr
    assert cpctl(server, "label", "u", "tagged", "team=b", "--overwrite").returncode == 0
    assert cpctl(server, "label", "unit", "tagged", "tier-").stdout.strip() == "unit/tagged labeled"
    unit = await get_or_none(server, "units", "tagged")
    assert unit is not None and unit["metadata"]["labels"] == {"team": "b"}
    assert cpctl(server, "annotate", "unit", "tagged", "note=hello world").stdout.strip() == "unit/tagged annotated"
    assert cpctl(server, "annotate", "unit", "tagged", "note=hello world").stdout.strip() == "unit/tagged not annotated"
    unit = await get_or_none(server, "units", "tagged")
    assert unit is not None and unit["metadata"]["annotations"]["note"] == "hello world"
    bad = cpctl(server, "label", "unit", "tagged", "bad key=x")
    assert bad.returncode == 1 and "labels" in bad.stderr  # the server's 422
    assert cpctl(server, "label", "unit", "tagged", "novalue").returncode == 2


def write_editor(tmp_path: Path, body: str) -> dict[str, str]:
    script = tmp_path / "editor.py"
    script.write_text(f"import sys, pathlib\np = pathlib.Path(sys.argv[1])\n{body}\n")
    return {"EDITOR": f"{sys.executable} {script}"}


async def test_edit(server: ApiServer, tmp_path: Path) -> None:
    assert cpctl(server, "run", "edited", "--image", "local/web:1", "--no-wait").returncode == 0
    unchanged = cpctl(server, "edit", "unit", "edited", env=write_editor(tmp_path, "pass"))
    assert (unchanged.returncode, unchanged.stdout.strip()) == (0, "Edit cancelled, no changes made.")
    change = "p.write_text(p.read_text().replace('local/web:1', 'local/web:2'))"
    result = cpctl(server, "edit", "unit", "edited", env=write_editor(tmp_path, change))
    assert (result.returncode, result.stdout.strip()) == (0, "unit/edited edited"), result.stderr
    unit = await get_or_none(server, "units", "edited")
    assert unit is not None and unit["spec"]["image"] == "local/web:2"
    invalid = "p.write_text(p.read_text().replace('replicas: 1', 'replicas: -1'))"
    refused = cpctl(server, "edit", "unit", "edited", env=write_editor(tmp_path, invalid))
    assert refused.returncode == 1 and "spec.replicas" in refused.stderr
    kept = Path(refused.stderr.split("your changes are kept in ")[1].strip())
    assert "replicas: -1" in await asyncio.to_thread(kept.read_text)
    await asyncio.to_thread(kept.unlink)


# --- rollout -------------------------------------------------------------------------------------

async def play_agent(server: ApiServer, machine: str, unit: str, done: asyncio.Future[Any], *, address: str) -> None:
    """Until ``done``: heartbeat ``machine`` and report the instances of ``unit`` on it Running and ready."""
    async with Client(server.url, token=f"node-{machine}-token") as node:
        while not done.done():
            await node.heartbeat(machine, {"address": address, "labels": {"role": unit},
                                           "capacity": {"cpu": 4, "memoryMB": 4096}})
            items, _ = await node.list_all("instances", field_selector=f"spec.unit={unit},spec.machine={machine}")
            for inst in items:
                if not (inst["status"].get("phase") == "Running" and inst["status"].get("ready")):
                    inst["status"].update({"phase": "Running", "ready": True, "address": address})
                    await node.put_status("instances", inst["metadata"]["name"], inst)
            await asyncio.wait([done], timeout=0.2)


async def cpctl_while_agent_runs(server: ApiServer, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(*CPCTL, *args, env=server.env("admin-token"),
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    communicate = asyncio.ensure_future(proc.communicate())
    await play_agent(server, "m5", "rolled", communicate, address="127.0.1.5")
    stdout, stderr = await communicate
    return int(proc.returncode or 0), stdout.decode(), stderr.decode()


async def test_rollout_history_undo_and_status(server: ApiServer, tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    placement = "  placement: {machineMetadata: {role: [rolled]}, spread: none}\n"
    for image in ("local/web:1", "local/web:2", "local/web:3"):
        path.write_text(unit_yaml("rolled", image=image, extra=placement))
        assert cpctl(server, "apply", "-f", str(path), "--no-wait").returncode == 0
    assert cpctl(server, "scale", "rolled", "--replicas", "2").returncode == 0  # not a rollout
    history = cpctl(server, "rollout", "history", "rolled")
    assert history.returncode == 0, history.stderr
    rows = [line.split()[:2] for line in history.stdout.splitlines()[1:]]
    assert rows == [["1", "1"], ["2", "2"], ["3", "3"]]
    shown = cpctl(server, "rollout", "history", "rolled", "--revision", "1")
    assert "image: local/web:1" in shown.stdout and "replicas" not in shown.stdout

    undo = cpctl(server, "rollout", "undo", "rolled")
    assert undo.stdout.strip() == "unit/rolled rolled back to revision 2", undo.stderr
    unit = await get_or_none(server, "units", "rolled")
    assert unit is not None and unit["spec"]["image"] == "local/web:2" and unit["spec"]["replicas"] == 2
    assert cpctl(server, "rollout", "undo", "rolled", "--to-revision", "1", "--dry-run=server").returncode == 0
    unit = await get_or_none(server, "units", "rolled")
    assert unit is not None and unit["spec"]["image"] == "local/web:2"
    assert cpctl(server, "rollout", "undo", "rolled", "--to-revision", "1").returncode == 0
    unit = await get_or_none(server, "units", "rolled")
    assert unit is not None and unit["spec"]["image"] == "local/web:1"
    rows = [line.split()[:1] for line in cpctl(server, "rollout", "history", "rolled").stdout.splitlines()[1:]]
    assert rows == [["1"], ["2"], ["3"], ["4"], ["5"]]
    assert cpctl(server, "rollout", "undo", "rolled", "--to-revision", "9").returncode == 1

    missed = cpctl(server, "rollout", "status", "rolled", "--timeout", "0.5")  # no machine runs it yet
    assert missed.returncode == 3, missed.stderr
    code, stdout, stderr = await cpctl_while_agent_runs(server, "rollout", "status", "rolled", "--timeout", "40")
    assert code == 0, stderr
    assert stdout.strip().endswith("unit/rolled successfully rolled out")
    async with Client(server.url, token="admin-token") as api:
        items, _ = await api.list_all("instances", field_selector="spec.unit=rolled")
    assert len(items) == 2 and {i["spec"]["template"]["image"] for i in items} == {"local/web:1"}
    assert cpctl(server, "rollout", "status", "no-such-unit").returncode == 1


async def test_a_deleted_unit_takes_its_history_along(server: ApiServer, tmp_path: Path) -> None:
    from controlplane.model import unit_revisions_key
    from controlplane.store.etcd import EtcdStore

    path = tmp_path / "h.yaml"
    for image in ("local/web:1", "local/web:2"):
        path.write_text(unit_yaml("short-lived", image=image))
        assert cpctl(server, "apply", "-f", str(path), "--no-wait").returncode == 0
    assert len(cpctl(server, "rollout", "history", "short-lived").stdout.splitlines()) == 3  # header + 2
    store = await EtcdStore.open([server.etcd_url], prefix=server.prefix)
    try:
        assert await store.get(unit_revisions_key("short-lived")) is not None
        assert cpctl(server, "delete", "unit", "short-lived").returncode == 0
        assert await store.get(unit_revisions_key("short-lived")) is None
    finally:
        await store.close()
    assert cpctl(server, "apply", "-f", str(path), "--no-wait").returncode == 0
    rows = cpctl(server, "rollout", "history", "short-lived").stdout.splitlines()[1:]
    assert [row.split()[0] for row in rows] == ["1"]
    assert cpctl(server, "rollout", "undo", "short-lived").returncode == 1  # nothing earlier to go back to
