"""TLS for the dev cluster: a cluster CA and the API server's certificate, made by ``cpctl dev up``.

``dev up`` serves the API over HTTPS by default, so the tokens cpctl and the agents send are never
on the wire in clear text, even on one host. It makes, in ``<state folder>/tls/``:

- ``ca.crt`` / ``ca.key``: a self-signed CA (ECDSA P-256, 10 years), the key mode 0600; cpctl (its
  config's ``ca``) and the agents (``--ca``) trust this CA and nothing else for the API server;
- ``apiserver.crt`` / ``apiserver.key``: the server certificate (1 year), signed by that CA, for the
  addresses the API is reached on (subjectAltName: IP 127.0.0.1 and any other given, and DNS
  ``localhost``), for server authentication only.

Made with the ``cryptography`` package's x509 builder; pure functions of (names, addresses, time)
plus one that writes the files.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from controlplane.devproc import write_private

CA_DAYS = 3650
SERVER_DAYS = 365
DEFAULT_IPS = ("127.0.0.1",)
DEFAULT_DNS = ("localhost",)


@dataclass(frozen=True)
class DevTls:
    """Where ``write_dev_tls`` put the files."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "controlplane dev cluster"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign, crl_sign=cert_sign,
                         encipher_only=False, decipher_only=False)


def make_ca(cluster: str, *, now: dt.datetime) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed CA for ``cluster`` (may sign server certificates, no intermediates)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(f"{cluster} cluster CA")
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def make_server_cert(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, *, ips: Sequence[str],
                     dns_names: Sequence[str] = DEFAULT_DNS,
                     now: dt.datetime) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """The API server's certificate for ``ips`` and ``dns_names``, signed by the CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address(ip)) for ip in dict.fromkeys(ips)]
    names += [x509.DNSName(dns) for dns in dict.fromkeys(dns_names)]
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder().subject_name(_name("cp-apiserver")).issuer_name(ca_cert.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=SERVER_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def write_dev_tls(folder: Path, *, cluster: str, ips: Sequence[str] = DEFAULT_IPS,
                  now: dt.datetime | None = None) -> DevTls:
    """Make the CA and the server certificate for ``ips`` (127.0.0.1 always) in ``folder`` (mode 0700)."""
    now = now or dt.datetime.now(dt.UTC)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca_key, ca_cert = make_ca(cluster, now=now)
    key, cert = make_server_cert(ca_key, ca_cert, ips=[*DEFAULT_IPS, *ips], now=now)
    files = DevTls(ca_cert=folder / "ca.crt", ca_key=folder / "ca.key", server_cert=folder / "apiserver.crt",
                   server_key=folder / "apiserver.key")
    write_private(files.ca_key, _key_pem(ca_key))
    write_private(files.server_key, _key_pem(key))
    write_private(files.ca_cert, _cert_pem(ca_cert))
    write_private(files.server_cert, _cert_pem(cert))
    return files
