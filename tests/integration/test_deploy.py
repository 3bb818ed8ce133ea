"""deploy/: the cloud-config template and what join-config renders from it are valid for cloud-init,
and the systemd units pass systemd-analyze.

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
from typing import Any

import pytest
import yaml

from controlplane.joinconfig import PLACEHOLDER, JoinRequest, render_join_config, wheels_of_index

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
UNITS = ["cp-agent.service", "cp-apiserver.service"]
PEM = "-----BEGIN CERTIFICATE-----\nMIIBsample\n-----END CERTIFICATE-----\n"


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


def rendered_sample(**overrides: Any) -> str:
    """What ``cpctl machine join-config`` prints, from the same renderer, for a sample cluster."""
    wheels = wheels_of_index([
        {"file": "controlplane-0.1.0-py3-none-any.whl", "sha256": "a" * 64},
        {"file": "aiohttp-3.9.5-cp311-cp311-manylinux_2_17_x86_64.whl", "sha256": "b" * 64},
    ])
    values: dict[str, Any] = {"machine": "m9", "servers": ("https://10.0.0.1:7070", "https://10.0.0.2:7070"),
                              "node_token": "tok-0123abcd.s3cret", "wheels": wheels,
                              "metadata": {"role": "web"}, "address": "10.0.0.9"}
    values.update(overrides)
    return render_join_config(JoinRequest(**values))


SAMPLES = {
    "template": lambda: (DEPLOY / "cloud-config.yaml").read_text(),
    "rendered": lambda: rendered_sample(),
    "rendered-ca-ssh": lambda: rendered_sample(ca_pem=PEM, docker="ssh://core@10.0.0.20", address=""),
}


@pytest.mark.parametrize("sample", sorted(SAMPLES))
def test_cloud_config_is_valid(sample: str, tmp_path: Path) -> None:
    cloud_init = _cloud_init()
    path = tmp_path / "user-data"
    path.write_text(SAMPLES[sample]())
    proc = subprocess.run([cloud_init, "schema", "--config-file", str(path)],
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
    text = rendered_sample()
    assert PLACEHOLDER.search(text) is None
    doc = yaml.safe_load(text)
    files = {f["path"]: f for f in doc["write_files"]}
    # the unit it installs is the one in deploy/systemd, verbatim
    assert files["/etc/systemd/system/cp-agent.service"]["content"] == (DEPLOY / "systemd/cp-agent.service").read_text()
    assert files["/etc/controlplane/node-token"]["permissions"] == "0600"
    assert "CP_SERVER=https://10.0.0.1:7070,https://10.0.0.2:7070" in files["/etc/controlplane/agent.env"]["content"]
    script = files["/usr/local/sbin/cp-join"]["content"]
    assert "enable --now --no-block cp-agent.service" in script.splitlines()[-2]
    assert script.index("--require-hashes") < script.index("enable --now --no-block cp-agent")
    assert doc["runcmd"] == [["/usr/local/sbin/cp-join"]]
    assert "packages" not in doc and "package_update" not in doc  # nothing from apt unless missing


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
