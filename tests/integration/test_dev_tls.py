"""HTTPS the way ``cpctl dev up`` sets it up: the CA and server certificate of controlplane/devtls.py,
a real cp-apiserver serving with them, and cpctl, the Client and a real cp-agent trusting the CA.

Without the CA, cpctl fails with one line that says the certificate could not be verified (no
traceback). The agent here also redeems a join token over HTTPS on start (agent/jointoken.py). It
runs against a Docker socket that does not exist: heartbeats need none.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from apiserver_fixture import ApiServer
from etcd_fixture import EtcdServer, free_port
from machine_helper import wait_for

from controlplane.client import Client
from controlplane.devtls import DevTls, write_dev_tls
from controlplane.errors import ServiceUnavailable

CPCTL = [sys.executable, "-m", "controlplane.cli.main"]


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> DevTls:
    return write_dev_tls(tmp_path_factory.mktemp("tls") / "tls", cluster="tlstest")


class HttpsApiServer(ApiServer):
    """cp-apiserver with --tls-cert/--tls-key; ``start()`` waits for /readyz over HTTPS, trusting ``ca``."""

    def __init__(self, etcd_url: str, prefix: str, tls: DevTls) -> None:
        super().__init__(etcd_url, prefix, controllers=False,
                         extra_args=["--tls-cert", str(tls.server_cert), "--tls-key", str(tls.server_key)])
        self.url = self.url.replace("http://", "https://", 1)
        self.ca = tls.ca_cert

    def start(self) -> ApiServer:
        before = os.environ.get("SSL_CERT_FILE")
        os.environ["SSL_CERT_FILE"] = str(self.ca)  # what urllib's readiness check trusts, for now
        try:
            return super().start()
        finally:
            if before is None:
                os.environ.pop("SSL_CERT_FILE", None)
            else:
                os.environ["SSL_CERT_FILE"] = before


@pytest.fixture(scope="module")
def https_api(etcd: EtcdServer, tls: DevTls) -> Iterator[ApiServer]:
    with HttpsApiServer(etcd.url, f"/cp-test/tls-{uuid.uuid4().hex[:8]}", tls) as api:
        yield api


def cpctl(api: ApiServer, *args: str, ca: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = api.env()
    env.pop("CPCTL_CA", None)
    if ca is not None:
        env["CPCTL_CA"] = str(ca)
    return subprocess.run([*CPCTL, *args], env=env, capture_output=True, text=True, timeout=60)


def test_cpctl_trusts_the_cluster_ca_and_nothing_else(https_api: ApiServer, tls: DevTls) -> None:
    assert https_api.url.startswith("https://127.0.0.1:")
    with_flag = subprocess.run([*CPCTL, "--ca", str(tls.ca_cert), "version"], env=https_api.env(),
                               capture_output=True, text=True, timeout=60)
    assert with_flag.returncode == 0 and f"Server Version: 0.1.0 ({https_api.url})" in with_flag.stdout, \
        with_flag.stdout + with_flag.stderr
    assert cpctl(https_api, "get", "units", ca=tls.ca_cert).returncode == 0

    refused = cpctl(https_api, "get", "units")  # the system's CAs do not know the cluster's
    assert refused.returncode == 1 and refused.stdout == ""
    lines = refused.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in refused.stderr, refused.stderr
    assert lines[0].startswith(f"error: cannot reach the server at {https_api.url}: TLS certificate verification "
                               "failed"), lines[0]
    assert "--ca" in lines[0]

    plain = cpctl(https_api, "get", "units", "--server", https_api.url.replace("https://", "http://"))
    assert plain.returncode == 1 and len(plain.stderr.splitlines()) == 1 and "Traceback" not in plain.stderr


def test_the_certificate_names_the_address_and_the_ca_signs_nothing_else(https_api: ApiServer, tls: DevTls) -> None:
    import socket

    context = ssl.create_default_context(cafile=str(tls.ca_cert))
    with socket.create_connection(("127.0.0.1", https_api.port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as conn:
            assert conn.version() in ("TLSv1.2", "TLSv1.3")
    with socket.create_connection(("127.0.0.1", https_api.port), timeout=5) as raw:  # not a name it has
        with pytest.raises(ssl.SSLCertVerificationError):
            context.wrap_socket(raw, server_hostname="apiserver.example")
    assert (os.stat(tls.server_key).st_mode & 0o077) == 0 and (os.stat(tls.ca_key).st_mode & 0o077) == 0


def test_the_client_with_the_ca_heartbeats_and_without_it_is_refused(https_api: ApiServer, tls: DevTls) -> None:
    async def go() -> None:
        async with Client(https_api.url, token="node-m1-token", ca=str(tls.ca_cert)) as node:
            reply = await node.heartbeat("m1", {"address": "127.0.2.1"})
            assert reply["machine"]["status"]["state"] == "Ready"
        async with Client(https_api.url, token="node-m1-token") as untrusting:
            with pytest.raises(ServiceUnavailable, match="TLS certificate verification failed"):
                await untrusting.heartbeat("m1", {"address": "127.0.2.1"})

    asyncio.run(go())


def test_an_agent_with_the_ca_exchanges_its_join_token_and_heartbeats(https_api: ApiServer, tls: DevTls,
                                                                       tmp_path: Path) -> None:
    async def join_token() -> str:
        async with Client(https_api.url, token="admin-token", ca=str(tls.ca_cert)) as admin:
            created = await admin.create("tokens", {"spec": {"role": "node", "machine": "m2", "join": True}})
            return str(created["value"])

    async def machine_state() -> str:
        async with Client(https_api.url, token="admin-token", ca=str(tls.ca_cert)) as admin:
            found = (await admin.list("machines", field_selector="metadata.name=m2"))["items"]
            return str(found[0]["status"]["state"]) if found else ""

    join = asyncio.run(join_token())
    token_file = tmp_path / "token"
    token_file.write_text(join + "\n")
    token_file.chmod(0o600)
    args = [sys.executable, "-m", "agent.main", "--server", https_api.url, "--ca", str(tls.ca_cert),
            "--token-file", str(token_file), "--machine", "m2", "--address", "127.0.0.1",
            "--agent-port", str(free_port()), "--docker", f"unix://{tmp_path}/no-docker.sock",
            "--state-dir", str(tmp_path / "state"), "--cluster", "tlstest"]
    with open(tmp_path / "agent.log", "wb") as log:
        agent = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: asyncio.run(machine_state()) == "Ready", timeout=20, what="machine m2 Ready")
        exchanged = token_file.read_text().strip()
        assert exchanged != join and exchanged.startswith("tok-"), (tmp_path / "agent.log").read_text()[-2000:]
        assert (os.stat(token_file).st_mode & 0o777) == 0o600
    finally:
        agent.terminate()
        agent.wait(10)
