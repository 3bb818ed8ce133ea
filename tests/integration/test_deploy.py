"""deploy/: the cloud-config is valid for cloud-init, and the systemd units pass systemd-analyze.

`cloud-init` is installed when missing (as root, with apt-get); the test is skipped only when it
cannot be installed. `systemd-analyze verify` runs when present, on copies of the units whose
ExecStart points at this environment's console scripts (the real paths live under /opt).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
UNITS = ["cp-agent.service", "cp-apiserver.service"]


def _cloud_init() -> str:
    found = shutil.which("cloud-init")
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("cloud-init not installed and cannot be installed here")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "cloud-init"]
    if subprocess.run(cmd, capture_output=True, env=env, timeout=600).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, env=env, timeout=600)
        if subprocess.run(cmd, capture_output=True, env=env, timeout=600).returncode != 0:
            pytest.skip("cloud-init could not be installed (apt-get failed)")
    found = shutil.which("cloud-init")
    if not found:
        pytest.skip("cloud-init installed but not on PATH")
    return found


def test_cloud_config_is_valid() -> None:
    cloud_init = _cloud_init()
    proc = subprocess.run([cloud_init, "schema", "--config-file", str(DEPLOY / "cloud-config.yaml")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Valid cloud-config" in proc.stdout


def test_cloud_init_rejects_a_broken_config(tmp_path: Path) -> None:
    """The check above means something: the same schema run refuses a bad document."""
    cloud_init = _cloud_init()
    bad = tmp_path / "bad.yaml"
    bad.write_text("#cloud-config\npackages: 42\nwrite_files: [{permissions: 600}]\n")
    proc = subprocess.run([cloud_init, "schema", "--config-file", str(bad)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0


def test_cloud_config_content() -> None:
    doc = yaml.safe_load((DEPLOY / "cloud-config.yaml").read_text())
    files = {f["path"]: f for f in doc["write_files"]}
    # the unit it installs is the one in deploy/systemd, verbatim
    assert files["/etc/systemd/system/cp-agent.service"]["content"] == (DEPLOY / "systemd/cp-agent.service").read_text()
    assert files["/etc/controlplane/node-token"]["permissions"] == "0600"
    assert "CP_SERVER=" in files["/etc/controlplane/agent.env"]["content"]
    assert {"python3", "python3-venv", "docker.io"} <= set(doc["packages"])
    commands = [" ".join(c) if isinstance(c, list) else c for c in doc["runcmd"]]
    assert any("enable --now cp-agent.service" in c for c in commands)
    assert commands.index(next(c for c in commands if "pip install" in c and "CP_PACKAGE" in c)) < len(commands) - 1


@pytest.mark.parametrize("unit", UNITS)
def test_systemd_unit_verifies(unit: str, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not available")
    bindir = Path(sys.executable).parent
    if not (bindir / unit.removesuffix(".service")).exists():
        pytest.skip(f"{unit.removesuffix('.service')} console script not installed next to {sys.executable}")
    text = (DEPLOY / "systemd" / unit).read_text().replace("/opt/controlplane/bin/", f"{bindir}/")
    copy = tmp_path / unit
    copy.write_text(text)
    proc = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    # verify exits 0 on mere parse warnings ("Unknown key", "Failed to parse"): treat any line
    # about our file as a failure too
    ours = [line for line in out.splitlines() if unit in line or str(copy) in line]
    assert proc.returncode == 0 and not ours, out
