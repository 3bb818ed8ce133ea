"""Throwaway certificates for TLS tests, made by ``openssl`` in a temp dir.

    pki = make_pki(tmp_dir)
    pki.ca, pki.server_cert, pki.server_key       # etcd's side (subjectAltName IP:127.0.0.1)
    pki.client_cert, pki.client_key               # signed by pki.ca
    pki.other_ca, pki.rogue_cert, pki.rogue_key   # a second CA and a client certificate it signed

Certificates carry both serverAuth and clientAuth, so any of them could be used on either side.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path
    rogue_cert: Path
    rogue_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _make_ca(name: str, base: Path) -> tuple[Path, Path]:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
             "-keyout", f"{name}.key", "-out", f"{name}.crt", cwd=base)
    return base / f"{name}.crt", base / f"{name}.key"


def _make_cert(name: str, ca: tuple[Path, Path], base: Path) -> tuple[Path, Path]:
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=base)
    (base / f"{name}.ext").write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial",
             "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=base)
    return base / f"{name}.crt", base / f"{name}.key"


def make_pki(base: Path) -> Pki:
    base.mkdir(parents=True, exist_ok=True)
    ca = _make_ca("ca", base)
    other = _make_ca("other-ca", base)
    server = _make_cert("server", ca, base)
    client = _make_cert("client", ca, base)
    rogue = _make_cert("rogue", other, base)
    return Pki(ca=ca[0], server_cert=server[0], server_key=server[1], client_cert=client[0],
               client_key=client[1], other_ca=other[0], rogue_cert=rogue[0], rogue_key=rogue[1])
