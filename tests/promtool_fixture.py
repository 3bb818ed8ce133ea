"""promtool for tests, from Debian's ``prometheus`` package without installing it (350 MB with its
web assets): ``apt-get download`` + ``dpkg-deb -x`` into a temp dir, the binary cached in
/tmp/cp-promtool/ (the cache tests/integration/test_metrics.py fills too)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

PROMTOOL_CACHE = Path("/tmp/cp-promtool/promtool")


def promtool_path() -> str:
    """The promtool binary; skips the test when it can be neither found nor fetched."""
    on_path = shutil.which("promtool")
    if on_path:
        return on_path
    if PROMTOOL_CACHE.exists():
        return str(PROMTOOL_CACHE)
    if not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
        pytest.skip("promtool not found and no apt-get/dpkg-deb to fetch Debian's prometheus package")
    with tempfile.TemporaryDirectory(prefix="cp-promtool-") as tmp:
        got = subprocess.run(["apt-get", "download", "prometheus"], cwd=tmp, capture_output=True, text=True,
                             timeout=300)
        debs = list(Path(tmp).glob("prometheus_*.deb"))
        if got.returncode != 0 or not debs:
            pytest.skip(f"apt-get download prometheus failed: {got.stderr.strip()[-500:]}")
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(Path(tmp) / "x")], check=True, timeout=120)
        PROMTOOL_CACHE.parent.mkdir(parents=True, exist_ok=True)
        partial = PROMTOOL_CACHE.with_suffix(".partial")
        shutil.copy2(Path(tmp) / "x" / "usr" / "bin" / "promtool", partial)
        partial.replace(PROMTOOL_CACHE)
    return str(PROMTOOL_CACHE)
