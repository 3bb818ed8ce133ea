"""How the store reaches a secured etcd: TLS material, etcd user auth, and plain words for failures.

The files behind ``--etcd-cacert``, ``--etcd-cert``, ``--etcd-key`` and ``--etcd-password-file``
are read once, at start, into an ``EtcdAccess``; a file that is missing, unreadable or not PEM
is a ``StoreConfigError`` whose one-line message names the flag. The password lives only in
``EtcdAccess.password`` (kept out of its repr): never on a command line, in a log line or in an
error message.

``explain_transport`` turns gRPC's transport errors ("Tls handshake failed (TSI_PROTOCOL_FAILURE):
... CERTIFICATE_VERIFY_FAILED ...") into what an operator can act on, naming the flag to check;
``is_misconfigured`` says which of them no retry cures (TLS trouble), so the store gives up at
once instead of retrying for its whole timeout. ``explain_refusal`` does the same for etcd's
auth answers (wrong password, permission denied). Pure functions on strings: no gRPC here.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit


class StoreConfigError(ValueError):
    """The store's configuration cannot work (bad endpoint list, unreadable file); the message is one line."""


@dataclass(frozen=True)
class EtcdAccess:
    """TLS material (PEM bytes) and etcd user credentials; all empty for a plain, open etcd."""

    ca_cert: bytes | None = None
    client_cert: bytes | None = None
    client_key: bytes | None = field(default=None, repr=False)
    user: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def tls_material(self) -> bool:
        """True when a CA or a client certificate was given (they only make sense with https://)."""
        return self.ca_cert is not None or self.client_cert is not None

    @classmethod
    def from_flags(
        cls,
        *,
        etcd_cacert: str | None = None,
        etcd_cert: str | None = None,
        etcd_key: str | None = None,
        etcd_user: str | None = None,
        etcd_password_file: str | None = None,
    ) -> EtcdAccess:
        """Read and check the files the ``--etcd-*`` flags name (StoreConfigError when one is unusable)."""
        if bool(etcd_cert) != bool(etcd_key):
            raise StoreConfigError("--etcd-cert and --etcd-key go together")
        if bool(etcd_user) != bool(etcd_password_file):
            raise StoreConfigError("--etcd-user and --etcd-password-file go together")
        ca_cert = _read_pem(etcd_cacert, "--etcd-cacert") if etcd_cacert else None
        if etcd_cacert:
            _check(lambda ctx: ctx.load_verify_locations(cafile=etcd_cacert), "--etcd-cacert", etcd_cacert)
        client_cert = _read_pem(etcd_cert, "--etcd-cert") if etcd_cert else None
        client_key = _read_pem(etcd_key, "--etcd-key") if etcd_key else None
        if etcd_cert and etcd_key:
            _check(lambda ctx: ctx.load_cert_chain(etcd_cert, etcd_key), "--etcd-cert/--etcd-key",
                   f"{etcd_cert} and {etcd_key}")
        password = read_password(etcd_password_file) if etcd_password_file else None
        return cls(ca_cert=ca_cert, client_cert=client_cert, client_key=client_key,
                   user=etcd_user or None, password=password)


def _read(path: str, flag: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise StoreConfigError(f"{flag} {path}: cannot read: {exc.strerror or exc}") from None


def _read_pem(path: str, flag: str) -> bytes:
    data = _read(path, flag)
    if b"-----BEGIN " not in data:
        raise StoreConfigError(f"{flag} {path}: not a PEM file")
    return data


def _check(load: Callable[[ssl.SSLContext], None], flag: str, what: str) -> None:
    """Let Python's ssl parse the PEM files now, so a bad one is a clear error and never reaches gRPC."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        load(context)
    except (ssl.SSLError, OSError) as exc:
        raise StoreConfigError(f"{flag} {what}: unusable ({exc})") from None


def read_password(path: str) -> str:
    """The first line of the password file, without its line end; never echoed anywhere."""
    try:
        lines = _read(path, "--etcd-password-file").decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise StoreConfigError(f"--etcd-password-file {path}: not UTF-8 text") from None
    password = lines[0] if lines else ""
    if not password:
        raise StoreConfigError(f"--etcd-password-file {path}: empty")
    return password


def endpoint_scheme(endpoints: Iterable[str], access: EtcdAccess) -> str:
    """``"http"`` or ``"https"`` for the endpoint list: one scheme for all, matching the TLS flags.

    A bare ``host:port`` is http. Credentials in a URL are refused without echoing the URL.
    """
    schemes: set[str] = set()
    for endpoint in endpoints:
        text = endpoint.strip()
        parts = urlsplit(text if "//" in text else "http://" + text)
        if parts.username is not None or parts.password is not None:
            raise StoreConfigError("credentials in an --etcd URL are not supported; "
                                   "use --etcd-user and --etcd-password-file")
        schemes.add(parts.scheme)
    if schemes == {"http", "https"}:
        raise StoreConfigError("--etcd mixes http:// and https:// endpoints; use one scheme for all")
    scheme = schemes.pop() if len(schemes) == 1 else "http"
    if scheme == "http" and access.tls_material:
        raise StoreConfigError("--etcd-cacert/--etcd-cert/--etcd-key need https:// etcd endpoints")
    return scheme


# -- explaining failures ------------------------------------------------------------------

_TLS_SIGNS = ("CERTIFICATE_VERIFY_FAILED", "Hostname Verification", "TSI_DATA_CORRUPTED",
              "Unwrap failed", "Handshake read failed", "Tls handshake failed", "SSL_ERROR")


def is_misconfigured(details: str) -> bool:
    """True for transport failures no retry cures: the TLS handshake itself failed."""
    return any(sign in details for sign in _TLS_SIGNS)


def explain_transport(details: str, *, scheme: str, access: EtcdAccess) -> str | None:
    """An operator's reading of a gRPC transport failure, or None when we have nothing better."""
    if "CERTIFICATE_VERIFY_FAILED" in details:
        reason = details.split("CERTIFICATE_VERIFY_FAILED", 1)[1].strip(": ").removesuffix(": OK")
        hint = "check --etcd-cacert" if access.ca_cert else "give --etcd-cacert"
        return f"TLS handshake failed: certificate verify failed{': ' + reason if reason else ''} ({hint})"
    if "Hostname Verification" in details:
        return ("TLS handshake failed: etcd's certificate does not name this host "
                "(its subjectAltName must list the endpoint's IP or DNS name)")
    if "TSI_DATA_CORRUPTED" in details or "Unwrap failed" in details:
        if access.client_cert is None:
            return "TLS handshake failed: etcd wants a client certificate (give --etcd-cert and --etcd-key)"
        return ("TLS handshake failed: etcd refused our client certificate "
                "(check --etcd-cert/--etcd-key: signed by a CA etcd trusts?)")
    if "Handshake read failed" in details or "Tls handshake failed" in details:
        return "TLS handshake failed: the endpoint closed the connection (does it serve plain http://?)"
    if "Connection refused" in details:
        return "connection refused"
    if "Socket closed" in details and scheme == "http":
        return "connection closed by the endpoint (if etcd serves TLS, use https:// and --etcd-cacert)"
    if "Deadline Exceeded" in details or "DEADLINE_EXCEEDED" in details:
        return "no answer in time"
    return None


def explain_refusal(code: str, details: str, *, access: EtcdAccess) -> str | None:
    """An operator's reading of etcd refusing us for auth reasons, or None when it is something else."""
    if "authentication failed" in details:
        return (f"etcd user {access.user!r} could not log in: wrong user name or password "
                "(check --etcd-user and --etcd-password-file)")
    if "authentication is not enabled" in details:
        return "--etcd-user is given but etcd has authentication disabled (etcdctl auth enable)"
    if code == "PERMISSION_DENIED" or "permission denied" in details:
        if access.user is None:
            return ("permission denied: etcd has authentication enabled "
                    "(give --etcd-user and --etcd-password-file)")
        return (f"permission denied for etcd user {access.user!r} "
                "(grant its role readwrite on the cluster's key prefix)")
    if code == "UNAUTHENTICATED" or "invalid auth token" in details:
        return "etcd does not accept our auth token even after logging in again"
    return None


def needs_new_token(details: str) -> bool:
    """etcd said our token expired (simple tokens live --auth-token-ttl) or predates an auth change."""
    return "invalid auth token" in details or "revision of auth store is old" in details
