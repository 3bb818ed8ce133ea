"""``local/client:latest`` for tests that fetch a URL from inside a container: local/web plus the
host's GNU wget, dynamically linked, with the glibc name-service modules it resolves names with
(and busybox's ``rm``, so a benchmark can take a readiness file away).

Why not local/web's own ``wget``: busybox-static's wget crashes (SIGSEGV) in these containers,
even on an IP address (/work/shared/env/MACHINE.md says so too), so a test of name resolution
needs a client that resolves names as an ordinary application does (glibc's getaddrinfo reading
/etc/resolv.conf). Built without any registry, idempotently (a label carries the inputs' hash).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from docker_fixture import build_local_images

IMAGE = "local/client:latest"
WGET = Path("/usr/bin/wget")
NSS = ("libnss_dns.so.2", "libnss_files.so.2", "libresolv.so.2")


def _libraries() -> list[Path]:
    out = subprocess.run(["ldd", str(WGET)], capture_output=True, text=True, check=True).stdout
    found = {Path(part) for line in out.splitlines() for part in line.split() if part.startswith("/")}
    libc_dir = next((p.parent for p in found if p.name.startswith("libc.so")), Path("/lib/x86_64-linux-gnu"))
    found.update(libc_dir / name for name in NSS if (libc_dir / name).exists())
    return sorted(found)


def build_client_image() -> str:
    """Build (or keep) ``local/client:latest``; skip the test when the host has no GNU wget."""
    build_local_images()
    if not WGET.exists():
        pytest.skip("GNU wget not installed on the host (apt-get install -y wget)")
    files = [WGET, *_libraries()]
    digest = hashlib.sha256(Path(__file__).read_bytes())
    for path in files:
        digest.update(path.read_bytes())
    want = digest.hexdigest()[:16]
    have = subprocess.run(["docker", "image", "inspect", "-f", '{{ index .Config.Labels "cp.build-hash" }}', IMAGE],
                          capture_output=True, text=True).stdout.strip()
    if have == want:
        return IMAGE
    with tempfile.TemporaryDirectory(prefix="cp-client-image-") as folder:
        root = Path(folder) / "root"
        for path in files:
            target = root / path.relative_to("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path.resolve(), target)
        (root / "bin").mkdir(exist_ok=True)
        (root / "bin" / "rm").symlink_to("busybox")  # benchmarks toggle readiness by a file
        (root / "etc").mkdir(exist_ok=True)
        (root / "etc" / "nsswitch.conf").write_text("hosts: files dns\n")
        (Path(folder) / "Dockerfile").write_text(
            f"FROM local/web:latest\nCOPY root/ /\nLABEL cp.build-hash={want}\nENV PATH=/usr/bin:/bin\n")
        proc = subprocess.run(["docker", "build", "-q", "-t", IMAGE, folder], capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            pytest.fail(f"building {IMAGE} failed:\n{proc.stdout}\n{proc.stderr}")
    return IMAGE
