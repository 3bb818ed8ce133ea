"""The secured-etcd plumbing without an etcd: reading the --etcd-* files, the endpoint scheme
rules, the operator's wording of gRPC's TLS and auth failures (on the texts real gRPC and etcd
produce), and EndpointPool logging in again on a stale token and giving up at once on TLS trouble."""

from __future__ import annotations

import time
from pathlib import Path

import aetcd
import pytest
from tls_helper import Pki, make_pki

from controlplane.errors import StoreUnavailable
from controlplane.store.etcd_access import (
    EtcdAccess,
    StoreConfigError,
    endpoint_scheme,
    explain_refusal,
    explain_transport,
    is_misconfigured,
)
from controlplane.store.etcd_failover import EndpointPool, EtcdAccessDenied

PASSWORD = "s3cret-Pw"

# Texts of real failures (grpcio 1.85 against etcd 3.4), shortened where they are long.
WRONG_CA = ("failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:23791: Tls handshake failed "
            "(TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:1000007d:SSL routines:OPENSSL_internal:"
            "CERTIFICATE_VERIFY_FAILED: unable to get local issuer certificate: OK")
CERT_REFUSED = "failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:23791: Unwrap failed (TSI_DATA_CORRUPTED)"
TLS_TO_PLAIN = ("failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:23792: "
                "Handshake read failed (Socket closed)")
HOSTNAME = ("failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:23791: Custom verification "
            "check failed with error: UNAUTHENTICATED: Hostname Verification Check failed.")
REFUSED = ("failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:23799: "
           "Failed to connect to remote host: Connection refused")
PLAIN_TO_TLS = "failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:23791: Socket closed"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def password_file(tmp_path: Path, text: str = PASSWORD + "\n") -> str:
    path = tmp_path / "pw"
    path.write_text(text)
    return str(path)


def test_from_flags_reads_the_files_and_keeps_secrets_out_of_repr(pki: Pki, tmp_path: Path) -> None:
    access = EtcdAccess.from_flags(etcd_cacert=str(pki.ca), etcd_cert=str(pki.client_cert),
                                   etcd_key=str(pki.client_key), etcd_user="cp",
                                   etcd_password_file=password_file(tmp_path))
    assert access.ca_cert == pki.ca.read_bytes() and access.client_key == pki.client_key.read_bytes()
    assert access.user == "cp" and access.password == PASSWORD  # first line, line end stripped
    assert PASSWORD not in repr(access) and "PRIVATE KEY" not in repr(access)
    assert EtcdAccess.from_flags() == EtcdAccess()


@pytest.mark.parametrize(("flags", "message"), [
    ({"etcd_cert": "c.pem"}, "--etcd-cert and --etcd-key go together"),
    ({"etcd_user": "cp"}, "--etcd-user and --etcd-password-file go together"),
    ({"etcd_cacert": "/nonexistent/ca.pem"}, "--etcd-cacert /nonexistent/ca.pem: cannot read: No such file"),
    ({"etcd_user": "cp", "etcd_password_file": "/nonexistent/pw"}, "--etcd-password-file /nonexistent/pw: cannot read"),
])
def test_from_flags_refuses_in_one_line(flags: dict[str, str], message: str) -> None:
    with pytest.raises(StoreConfigError) as caught:
        EtcdAccess.from_flags(**flags)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_from_flags_checks_pem_contents(pki: Pki, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("hello\n")
    with pytest.raises(StoreConfigError, match="--etcd-cacert .*junk.pem: not a PEM file"):
        EtcdAccess.from_flags(etcd_cacert=str(junk))
    with pytest.raises(StoreConfigError, match="--etcd-cert/--etcd-key .*: unusable .*KEY_VALUES_MISMATCH"):
        EtcdAccess.from_flags(etcd_cert=str(pki.client_cert), etcd_key=str(pki.rogue_key))
    with pytest.raises(StoreConfigError, match="empty"):
        EtcdAccess.from_flags(etcd_user="cp", etcd_password_file=password_file(tmp_path, "\n"))


def test_endpoint_scheme_rules() -> None:
    plain, tls = EtcdAccess(), EtcdAccess(ca_cert=b"-----BEGIN CERTIFICATE-----")
    assert endpoint_scheme(["10.0.0.1:2379", "http://10.0.0.2:2379"], plain) == "http"
    assert endpoint_scheme(["https://a:2379", "https://b:2379"], tls) == "https"
    assert endpoint_scheme(["https://a:2379"], plain) == "https"  # the system's CAs
    with pytest.raises(StoreConfigError, match="mixes http:// and https://"):
        endpoint_scheme(["https://a:2379", "http://b:2379"], plain)
    with pytest.raises(StoreConfigError, match="need https://"):
        endpoint_scheme(["http://a:2379"], tls)
    with pytest.raises(StoreConfigError) as caught:
        endpoint_scheme([f"https://cp:{PASSWORD}@a:2379"], plain)
    assert PASSWORD not in str(caught.value) and "--etcd-password-file" in str(caught.value)


def test_tls_failures_are_explained_and_marked_incurable() -> None:
    with_cert = EtcdAccess(ca_cert=b"x", client_cert=b"x", client_key=b"x")
    ca_only = EtcdAccess(ca_cert=b"x")

    def explain(details: str, access: EtcdAccess = with_cert, scheme: str = "https") -> str | None:
        return explain_transport(details, scheme=scheme, access=access)

    assert explain(WRONG_CA) == ("TLS handshake failed: certificate verify failed: unable to get local issuer "
                                 "certificate (check --etcd-cacert)")
    assert explain(WRONG_CA, EtcdAccess()).endswith("(give --etcd-cacert)")  # type: ignore[union-attr]
    assert "etcd refused our client certificate" in str(explain(CERT_REFUSED))
    assert "etcd wants a client certificate (give --etcd-cert and --etcd-key)" in str(explain(CERT_REFUSED, ca_only))
    assert "does it serve plain http://" in str(explain(TLS_TO_PLAIN))
    assert "subjectAltName" in str(explain(HOSTNAME))
    assert explain(REFUSED) == "connection refused"
    assert "use https://" in str(explain(PLAIN_TO_TLS, EtcdAccess(), "http"))
    assert explain("something else entirely") is None
    assert all(is_misconfigured(d) for d in (WRONG_CA, CERT_REFUSED, TLS_TO_PLAIN, HOSTNAME))
    assert not any(is_misconfigured(d) for d in (REFUSED, PLAIN_TO_TLS, "Deadline Exceeded"))


def test_auth_refusals_are_explained() -> None:
    user = EtcdAccess(user="cp", password=PASSWORD)
    wrong = explain_refusal("INVALID_ARGUMENT", "etcdserver: authentication failed, invalid user ID or password",
                            access=user)
    assert wrong is not None and "'cp' could not log in" in wrong and PASSWORD not in wrong
    assert "authentication disabled" in str(explain_refusal(
        "FAILED_PRECONDITION", "etcdserver: authentication is not enabled", access=user))
    assert "grant its role readwrite" in str(explain_refusal("PERMISSION_DENIED", "etcdserver: permission denied",
                                                              access=user))
    assert "give --etcd-user" in str(explain_refusal("PERMISSION_DENIED", "etcdserver: permission denied",
                                                      access=EtcdAccess()))
    assert explain_refusal("NOT_FOUND", "etcdserver: requested lease not found", access=user) is None


async def test_a_stale_token_means_log_in_again_and_repeat() -> None:
    pool = EndpointPool(["https://127.0.0.1:1"], timeout=5, access=EtcdAccess(user="cp", password=PASSWORD))
    client = pool.client(0)
    logins: list[int] = []

    async def reauthenticate(seen_generation: int) -> None:
        logins.append(seen_generation)
        client.auth_generation += 1

    client.reauthenticate = reauthenticate  # type: ignore[method-assign]
    calls = 0

    async def op(c: aetcd.Client, retrying: bool) -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise aetcd.exceptions.UnauthenticatedError("etcdserver: invalid auth token")
        return "ok"

    try:
        assert await pool.call(op) == "ok"
        assert logins == [0] and calls == 2

        async def always_stale(c: aetcd.Client, retrying: bool) -> None:
            raise aetcd.exceptions.UnauthenticatedError("etcdserver: invalid auth token")

        with pytest.raises(EtcdAccessDenied, match="even after logging in again"):
            await pool.call(always_stale)
    finally:
        await pool.close()


async def test_refusals_and_tls_failures_end_the_call_at_once() -> None:
    pool = EndpointPool(["https://127.0.0.1:1", "https://127.0.0.1:2"], timeout=30,
                        access=EtcdAccess(user="cp", password=PASSWORD))

    async def wrong_password(c: aetcd.Client, retrying: bool) -> None:
        raise aetcd.exceptions.InvalidArgumentError("etcdserver: authentication failed, invalid user ID or password")

    async def wrong_ca(c: aetcd.Client, retrying: bool) -> None:
        raise aetcd.ConnectionFailedError(WRONG_CA)

    started = time.monotonic()
    try:
        with pytest.raises(EtcdAccessDenied, match="^etcd at https://127.0.0.1:1: etcd user 'cp' could not log in"):
            await pool.call(wrong_password)
        with pytest.raises(StoreUnavailable) as caught:
            await pool.call(wrong_ca)
    finally:
        await pool.close()
    assert time.monotonic() - started < 5  # not the 30 s timeout: no retry cures a wrong CA
    message = str(caught.value)
    assert "etcd at https://127.0.0.1:1: TLS handshake failed" in message
    assert "etcd at https://127.0.0.1:2: TLS handshake failed" in message and "\n" not in message
