"""A REAL boot: a fresh Debian system joins the cluster from `cpctl machine join-config` alone.

The machine is a Debian bookworm rootfs (mmdebstrap, imported as ``local/debian-boot``, cached by
its recipe) booted with systemd as PID 1 in a container (MACHINE.md's recipe: --network host, the
host's Docker socket, cgroups of the host; --privileged does not work here), the rendered
cloud-config as its NoCloud seed. Its cloud-init downloads the wheels from a real cp-apiserver's
/dist/ (on real etcd, listening on 127.0.0.1, which --network host reaches), installs cp-agent in
a venv with no package index, and starts it under systemd. The test only waits: the machine must
register and be Ready, and an instance pinned to it (local/web:latest) must run, be ready, and
answer on the address join-config gave it. No hand step.

Skipped only when this system lacks something it cannot get: a Docker engine, or mmdebstrap and
a reachable Debian mirror (the reason says which). Run it alone: it boots a whole system.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from apiserver_fixture import ApiServer
from etcd_fixture import EtcdServer

pytestmark = [pytest.mark.slow, pytest.mark.docker]

REPO = Path(__file__).resolve().parents[2]
WHEELHOUSE = REPO / "build" / "wheelhouse"
IMAGE = "local/debian-boot:latest"
PACKAGES = "systemd,systemd-sysv,cloud-init,python3,python3-venv,locales,curl,ca-certificates"
RECIPE = ["mmdebstrap", "--variant=minbase", f"--include={PACKAGES}", "bookworm"]
MIRROR_TROUBLE = ("Failed to fetch", "Could not resolve", "Temporary failure", "Unable to connect",
                  "Connection failed", "Connection timed out", "Network is unreachable", "No route to host")
BOOT_SECONDS = 420


def run(cmd: list[str], *, timeout: float = 120, check: bool = False, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=check, **kw)


def have_docker() -> bool:
    return shutil.which("docker") is not None and run(["docker", "info"]).returncode == 0


def ensure_mmdebstrap() -> str:
    found = shutil.which("mmdebstrap")
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("mmdebstrap is not installed and cannot be installed here (not root or no apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-qq", "mmdebstrap"]
    if run(cmd, env=env, timeout=900).returncode != 0:
        run(["apt-get", "update", "-qq"], env=env, timeout=900)
        got = run(cmd, env=env, timeout=900)
        if got.returncode != 0:
            pytest.skip(f"mmdebstrap cannot be installed (apt-get: {got.stderr.strip()[-300:]})")
    return shutil.which("mmdebstrap") or pytest.skip("mmdebstrap installed but not on PATH")


@pytest.fixture(scope="module")
def boot_image(tmp_path_factory: pytest.TempPathFactory) -> str:
    """local/debian-boot, rebuilt only when the recipe changed (its hash is the image's label)."""
    if not have_docker():
        pytest.skip("no Docker engine (docker info failed)")
    recipe = hashlib.sha256(json.dumps(RECIPE).encode()).hexdigest()[:16]
    label = run(["docker", "image", "inspect", "-f", '{{ index .Config.Labels "cp.recipe" }}', IMAGE])
    if label.returncode == 0 and label.stdout.strip() == recipe:
        return IMAGE
    mmdebstrap = ensure_mmdebstrap()
    rootfs = tmp_path_factory.mktemp("debian-boot") / "rootfs.tar"
    built = run([mmdebstrap, *RECIPE[1:], str(rootfs)], timeout=1200)
    if built.returncode != 0:
        out = built.stdout + built.stderr
        if any(sign in out for sign in MIRROR_TROUBLE):
            pytest.skip(f"mmdebstrap cannot reach the Debian mirror: {out.strip()[-300:]}")
        pytest.fail(f"mmdebstrap failed:\n{out[-3000:]}")
    run(["docker", "import", "-c", f"LABEL cp.recipe={recipe}", str(rootfs), IMAGE], timeout=600, check=True)
    rootfs.unlink()
    return IMAGE


@pytest.fixture(scope="module")
def wheelhouse() -> Path:
    """The wheelhouse `make wheelhouse` fills (tools/wheelhouse.py: a no-op when it is current)."""
    got = run([sys.executable, str(REPO / "tools" / "wheelhouse.py"), str(WHEELHOUSE)], timeout=900)
    assert got.returncode == 0, got.stderr
    return WHEELHOUSE


@pytest.fixture(scope="module")
def web_image() -> None:
    if run(["docker", "image", "inspect", "local/web:latest"]).returncode != 0:
        got = run([str(REPO / "deploy" / "images" / "build-local")], timeout=600)
        assert got.returncode == 0, got.stderr


def api_call(api: ApiServer, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(api.url + path, data=data, method=method, headers={
        "Authorization": f"Bearer {api.admin_token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def cpctl(api: ApiServer, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "-m", "controlplane.cli.main", *args], env=api.env(), timeout=timeout)


def node_token_args(api: ApiServer, machine: str) -> list[str]:
    """Through the token API when the server has it (join-config then creates a join token); else a
    node line added to the server's token file, passed with --node-token."""
    code, _ = api_call(api, "GET", "/api/v1/tokens")
    if code == 200:
        return []
    token = f"node-{machine}-{uuid.uuid4().hex}"
    lines = api.token_file.read_text() + f"{token},node-{machine},node,{machine}\n"
    api.reload_tokens(lines)
    return ["--node-token", token]


def boot(image: str, seed: Path, name: str) -> None:
    run(["docker", "run", "-d", "--name", name, "--label", "cp-boot-test=1",
         "--cap-add", "SYS_ADMIN", "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
         "--cgroupns=host", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw",
         "--tmpfs", "/run", "--tmpfs", "/run/lock", "--tmpfs", "/tmp", "--network", "host",
         "-v", f"{seed}:/var/lib/cloud/seed/nocloud:ro", "-v", "/var/run/docker.sock:/var/run/docker.sock",
         image, "/sbin/init"], check=True)


def diagnostics(container: str, api: ApiServer) -> str:
    parts = []
    for cmd in (["cloud-init", "status", "--long"], ["tail", "-n", "60", "/var/log/cloud-init-output.log"],
                ["journalctl", "-u", "cp-agent", "--no-pager", "-n", "40"]):
        got = run(["docker", "exec", container, *cmd], timeout=30)
        parts.append(f"$ {' '.join(cmd)}\n{got.stdout}{got.stderr}")
    parts.append(f"--- cp-apiserver log\n{api.log_tail()}")
    return "\n".join(parts)


def wait_for(what: str, check: Any, *, timeout: float, explain: Any) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(1.0)
    pytest.fail(f"{what} not within {timeout:.0f}s\n{explain()}")


@pytest.fixture
def cluster(etcd: EtcdServer, unique_prefix: str, wheelhouse: Path) -> Iterator[ApiServer]:
    with ApiServer(etcd.url, unique_prefix, extra_args=["--wheelhouse", str(wheelhouse)]) as api:
        yield api


# long: one story, told in order: render, boot, wait for the machine, run an instance there, clean up
def test_a_fresh_debian_machine_joins_and_runs_an_instance(
        boot_image: str, web_image: None, cluster: ApiServer, tmp_path: Path) -> None:
    api = cluster
    machine = f"boot-{uuid.uuid4().hex[:6]}"
    address = f"127.0.{random.randint(200, 250)}.{random.randint(2, 250)}"  # its own loopback address
    rendered = cpctl(api, "machine", "join-config", machine, "--address", address, "--metadata", "role=boot",
                     *node_token_args(api, machine))
    assert rendered.returncode == 0, rendered.stderr
    assert rendered.stdout.startswith("#cloud-config") and "{{" not in rendered.stdout
    if shutil.which("cloud-init"):  # tests/integration/test_deploy.py installs it; here a bonus check
        (tmp_path / "user-data").write_text(rendered.stdout)
        schema = run(["cloud-init", "schema", "--config-file", str(tmp_path / "user-data")])
        assert schema.returncode == 0, schema.stdout + schema.stderr
    seed = tmp_path / "seed"
    seed.mkdir()
    (seed / "user-data").write_text(rendered.stdout)
    (seed / "meta-data").write_text(f"instance-id: {machine}\n")
    container = f"cp-boot-{machine}"
    unit = f"web-{machine}"
    try:
        boot(boot_image, seed, container)

        def ready() -> bool:
            code, obj = api_call(api, "GET", f"/api/v1/machines/{machine}")
            return code == 200 and (obj.get("status") or {}).get("state") == "Ready"

        wait_for(f"machine {machine} Ready", ready, timeout=BOOT_SECONDS, explain=lambda: diagnostics(container, api))
        code, obj = api_call(api, "GET", f"/api/v1/machines/{machine}")
        assert obj["status"]["address"] == address and obj["metadata"]["labels"] == {"role": "boot"}
        mode = run(["docker", "exec", container, "stat", "-c", "%a %U", "/etc/controlplane/node-token"])
        assert mode.stdout.split() == ["600", "root"], mode.stdout + mode.stderr

        started = cpctl(api, "run", unit, "--image", "local/web:latest", "--port", "8080", "--health-http", "/",
                        "--machine", machine, "--timeout", "120", timeout=180)
        assert started.returncode == 0, started.stdout + started.stderr + diagnostics(container, api)

        def running() -> dict[str, Any] | None:
            code, inst = api_call(api, "GET", f"/api/v1/instances/{unit}-0")
            status = (inst or {}).get("status") or {} if code == 200 else {}
            return inst if status.get("phase") == "Running" and status.get("ready") else None

        inst = wait_for(f"instance {unit}-0 Running and ready", running, timeout=120,
                        explain=lambda: diagnostics(container, api))
        assert inst["spec"]["machine"] == machine
        port = inst["status"]["hostPorts"][0]["hostPort"]
        assert inst["status"]["address"] == address
        with urllib.request.urlopen(f"http://{address}:{port}/", timeout=10) as resp:
            assert f"{unit}-0 on {machine}".encode() in resp.read()
    finally:
        run(["docker", "rm", "-f", container], timeout=120)
        ids = run(["docker", "ps", "-aq", "--filter", f"label=cp.machine={machine}"]).stdout.split()
        if ids:
            run(["docker", "rm", "-f", *ids], timeout=120)
