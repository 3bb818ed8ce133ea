"""cp-apiserver against etcd that serves TLS and demands client certificates (``--client-cert-auth``).

Real etcd processes (tests/etcd_fixture.py) with certificates made by openssl (tests/tls_helper.py).
A server with ``--etcd-cacert/--etcd-cert/--etcd-key`` serves and stores; one with a missing or
foreign client certificate, a wrong CA, an unreachable endpoint or a bad flag exits non-zero with
one line on stderr that names what failed, never a traceback. Failover works over TLS.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from apiserver_fixture import ApiServer
from etcd_fixture import EtcdCluster, EtcdServer, free_port
from machine_helper import call, wait_for
from tls_helper import Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_etcd(pki: Pki) -> Iterator[EtcdServer]:
    with EtcdServer(tls=pki) as server:
        yield server


def tls_flags(pki: Pki, *, ca: Path | None = None, cert: Path | None = None, key: Path | None = None) -> list[str]:
    flags = ["--etcd-cacert", str(ca or pki.ca)]
    if cert is not None and key is not None:
        flags += ["--etcd-cert", str(cert), "--etcd-key", str(key)]
    return flags


def unit(name: str) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "Unit", "metadata": {"name": name}, "spec": {"image": "local/web:latest"}}


def create_and_list(api: ApiServer, name: str) -> None:
    status, obj = call(api.url, "POST", "/api/v1/units", unit(name))
    assert status == 201, (obj, api.log_tail())
    status, listed = call(api.url, "GET", "/api/v1/units")
    assert status == 200 and name in [u["metadata"]["name"] for u in listed["items"]], listed


def one_line_failure(api: ApiServer, *, timeout: float = 30) -> str:
    """Run a server that must fail at start; its single stderr line (asserting there is one)."""
    started = time.monotonic()
    done = api.run_until_exit(timeout=timeout)
    lines = done.stderr.strip().splitlines()
    assert done.returncode != 0, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr and len(lines) == 1, done.stderr
    assert lines[0].startswith("cp-apiserver: "), lines
    print(f"{time.monotonic() - started:.1f} s: {lines[0]}")
    return lines[0]


def test_client_certificate_auth_serves_readyz_and_stores_units(tls_etcd: EtcdServer, pki: Pki,
                                                                unique_prefix: str) -> None:
    assert tls_etcd.url.startswith("https://127.0.0.1:")
    flags = tls_flags(pki, cert=pki.client_cert, key=pki.client_key)
    with ApiServer(tls_etcd.url, unique_prefix, extra_args=flags) as api:
        with urllib.request.urlopen(api.url + "/readyz", timeout=5) as resp:
            assert resp.status == 200
        create_and_list(api, "web")
    # and it really is in that etcd, under the prefix
    assert f"{unique_prefix}/units/web" in tls_etcd.etcdctl("get", "--prefix", "--keys-only", unique_prefix)


@pytest.mark.parametrize(("case", "expected"), [
    ("no client certificate", "TLS handshake failed: etcd wants a client certificate (give --etcd-cert and --etcd-key)"),
    ("certificate of another CA", "TLS handshake failed: etcd refused our client certificate (check --etcd-cert"),
    ("wrong --etcd-cacert", "TLS handshake failed: certificate verify failed: unable to get local issuer "
                            "certificate (check --etcd-cacert)"),
])
def test_tls_mistakes_end_in_one_line(tls_etcd: EtcdServer, pki: Pki, unique_prefix: str, case: str,
                                      expected: str) -> None:
    flags = {
        "no client certificate": tls_flags(pki),
        "certificate of another CA": tls_flags(pki, cert=pki.rogue_cert, key=pki.rogue_key),
        "wrong --etcd-cacert": tls_flags(pki, ca=pki.other_ca, cert=pki.client_cert, key=pki.client_key),
    }[case]
    api = ApiServer(tls_etcd.url, unique_prefix, extra_args=flags)
    started = time.monotonic()
    line = one_line_failure(api)
    assert line.startswith(f"cp-apiserver: etcd at {tls_etcd.url}: {expected}"), line
    assert time.monotonic() - started < 15  # gives up at once, does not retry a handshake no retry cures


def test_unreachable_tls_endpoint_and_bad_flags_end_in_one_line(pki: Pki, tls_etcd: EtcdServer,
                                                                 unique_prefix: str, tmp_path: Path) -> None:
    dead = f"https://127.0.0.1:{free_port()}"
    good = tls_flags(pki, cert=pki.client_cert, key=pki.client_key)
    line = one_line_failure(ApiServer(dead, unique_prefix, extra_args=good))
    assert line == f"cp-apiserver: etcd at {dead}: connection refused"

    mixed = f"{tls_etcd.url},http://127.0.0.1:{free_port()}"
    line = one_line_failure(ApiServer(mixed, unique_prefix, extra_args=good))
    assert line == "cp-apiserver: --etcd mixes http:// and https:// endpoints; use one scheme for all"

    missing = tmp_path / "nope.crt"
    line = one_line_failure(ApiServer(tls_etcd.url, unique_prefix, extra_args=tls_flags(
        pki, cert=missing, key=pki.client_key)))
    assert line == f"cp-apiserver: --etcd-cert {missing}: cannot read: No such file or directory"

    line = one_line_failure(ApiServer(tls_etcd.url, unique_prefix, extra_args=["--etcd-cert", str(pki.client_cert)]))
    assert line == "cp-apiserver: --etcd-cert and --etcd-key go together"


def test_first_endpoint_down_then_the_other(tls_etcd: EtcdServer, pki: Pki, unique_prefix: str) -> None:
    dead = f"https://127.0.0.1:{free_port()}"
    flags = tls_flags(pki, cert=pki.client_cert, key=pki.client_key)
    with ApiServer(f"{dead},{tls_etcd.url}", unique_prefix, extra_args=flags) as api:
        create_and_list(api, "web")
        assert f"etcd at {dead} failed (connection refused); switching to {tls_etcd.url}" in api.log_tail(200)


@pytest.mark.slow
def test_tls_cluster_survives_the_loss_of_the_connected_member(pki: Pki, unique_prefix: str) -> None:
    flags = tls_flags(pki, cert=pki.client_cert, key=pki.client_key)
    with EtcdCluster(n=3, tls=pki) as cluster, ApiServer(cluster.url, unique_prefix, extra_args=flags,
                                                         controllers=False) as api:
        create_and_list(api, "before")
        cluster.kill(0)  # the store starts on the first endpoint

        def created() -> bool:
            try:
                status, _ = call(api.url, "POST", "/api/v1/units", unit("after"), timeout=10)
            except OSError:  # this attempt outlived the client's timeout while the store failed over
                return False
            return status in (201, 409)  # 409: an earlier attempt landed

        wait_for(created, timeout=20, interval=0.2, what="a create after the member died")
        status, listed = call(api.url, "GET", "/api/v1/units")
        assert status == 200 and {"before", "after"} <= {u["metadata"]["name"] for u in listed["items"]}
        assert f"etcd at {cluster.urls[0]} failed" in api.log_tail(200)
