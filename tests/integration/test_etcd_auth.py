"""cp-apiserver as an etcd user (``--etcd-user`` + ``--etcd-password-file``) on etcd with auth enabled.

One real etcd (TLS with client certificates, tests/etcd_fixture.py) with ``root`` and a non-root
user ``cp`` whose role may read and write only under the test prefixes, and tokens that expire
after 2 s without use (``--auth-token-ttl 2``) so that every pause in a test makes the store log
in again. Shown: the API creates, lists and watches; the leader (a lease) binds an instance to a
machine that heartbeats; writes, new watches and lease refreshes after the token expired work;
a wrong password or a prefix outside the role is one line on stderr; the password is never in
the server's log nor in its command line.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from apiserver_fixture import ApiServer
from etcd_fixture import EtcdServer
from machine_helper import FakeMachines, call, wait_for
from tls_helper import Pki, make_pki

from controlplane.store import EtcdAccess, open_store
from controlplane.store.base import WatchEvent

TOKEN_TTL = 2
ROLE_PREFIX = "/cp-test/"  # tests/conftest.py's unique_prefix lives under it
PASSWORD = "pw-" + secrets.token_urlsafe(12)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def auth_etcd(pki: Pki) -> Iterator[EtcdServer]:
    root_password = secrets.token_urlsafe(12)
    with EtcdServer(tls=pki, extra_args=["--auth-token-ttl", str(TOKEN_TTL)]) as server:
        server.etcdctl("user", "add", f"root:{root_password}", "--interactive=false")
        server.etcdctl("user", "grant-role", "root", "root")
        server.etcdctl("role", "add", "cp-role")
        server.etcdctl("role", "grant-permission", "cp-role", "--prefix=true", "readwrite", ROLE_PREFIX)
        server.etcdctl("user", "add", f"cp:{PASSWORD}", "--interactive=false")
        server.etcdctl("user", "grant-role", "cp", "cp-role")
        server.etcdctl("auth", "enable")
        yield server


@pytest.fixture(scope="module")
def password_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("secret") / "etcd-password"
    path.write_text(PASSWORD + "\n")
    path.chmod(0o600)
    return path


def flags(pki: Pki, password_file: Path, *, user: str = "cp") -> list[str]:
    return ["--etcd-cacert", str(pki.ca), "--etcd-cert", str(pki.client_cert), "--etcd-key", str(pki.client_key),
            "--etcd-user", user, "--etcd-password-file", str(password_file)]


def create_unit(api: ApiServer, name: str, replicas: int = 1) -> None:
    body = {"apiVersion": "v1", "kind": "Unit", "metadata": {"name": name},
            "spec": {"image": "local/web:latest", "replicas": replicas}}
    status, obj = call(api.url, "POST", "/api/v1/units", body)
    assert status == 201, (obj, api.log_tail())


def unit_names(api: ApiServer) -> set[str]:
    status, listed = call(api.url, "GET", "/api/v1/units")
    assert status == 200, listed
    return {u["metadata"]["name"] for u in listed["items"]}


def assert_password_nowhere(api: ApiServer) -> None:
    assert api.proc is not None
    cmdline = Path(f"/proc/{api.proc.pid}/cmdline").read_bytes().decode()
    assert "--etcd-password-file" in cmdline and PASSWORD not in cmdline
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    assert "controlplane.api.server" in ps and PASSWORD not in ps
    assert PASSWORD not in api.log_path.read_text(errors="replace")


def test_an_etcd_user_serves_watches_and_leads(auth_etcd: EtcdServer, pki: Pki, password_file: Path,
                                               unique_prefix: str) -> None:
    with ApiServer(auth_etcd.url, unique_prefix, machine_ttl=2, extra_args=flags(pki, password_file)) as api:
        create_unit(api, "first")
        assert unit_names(api) == {"first"}
        request = urllib.request.Request(api.url + "/api/v1/units?watch=1",
                                         headers={"Authorization": "Bearer admin-token"})
        with urllib.request.urlopen(request, timeout=10) as stream:
            assert json.loads(stream.readline())["object"]["metadata"]["name"] == "first"  # listed as ADDED
            create_unit(api, "second")
            # the controllers may write first's status meanwhile (a MODIFIED of first): the next event
            # about another unit is second's ADDED
            events = (json.loads(stream.readline()) for _ in range(20))
            event = next(e for e in events if e["object"]["metadata"]["name"] != "first")
            assert (event["type"], event["object"]["metadata"]["name"]) == ("ADDED", "second")
        # the leader (elected through an etcd lease) binds an instance once a machine heartbeats
        with FakeMachines(api.url, ["m1"], interval=0.5):
            create_unit(api, "web")

            def bound() -> str | None:
                status, obj = call(api.url, "GET", "/api/v1/instances")
                assert status == 200, obj
                return next((i["spec"]["machine"] for i in obj["items"]
                             if i["spec"]["unit"] == "web" and i["spec"]["machine"]), None)

            assert wait_for(bound, timeout=15, what="web's instance bound to m1") == "m1"
        assert_password_nowhere(api)
    assert f"{unique_prefix}/units/web" in auth_etcd.etcdctl("get", "--prefix", "--keys-only", unique_prefix,
                                                             user=f"cp:{PASSWORD}")


def test_a_write_after_the_token_expired_works(auth_etcd: EtcdServer, pki: Pki, password_file: Path,
                                               unique_prefix: str) -> None:
    with ApiServer(auth_etcd.url, unique_prefix, controllers=False, extra_args=flags(pki, password_file)) as api:
        create_unit(api, "before")
        time.sleep(TOKEN_TTL + 1.5)  # nothing uses the token: etcd forgets it
        create_unit(api, "after")
        assert unit_names(api) == {"before", "after"}
        assert "auth token was stale; logged in again as 'cp'" in api.log_tail(200)
        assert_password_nowhere(api)


async def test_store_watches_and_leases_survive_token_expiry(auth_etcd: EtcdServer, pki: Pki,
                                                             password_file: Path, unique_prefix: str) -> None:
    access = EtcdAccess.from_flags(etcd_cacert=str(pki.ca), etcd_cert=str(pki.client_cert),
                                   etcd_key=str(pki.client_key), etcd_user="cp",
                                   etcd_password_file=str(password_file))
    store = open_store(auth_etcd.url, unique_prefix, access=access)
    seen: dict[str, list[bytes]] = {"early": [], "late": []}

    async def collect(name: str, start: int) -> None:
        async for event in store.watch("k", start_revision=start):
            assert isinstance(event, WatchEvent)
            seen[name].append(event.kv.value)

    tasks = []
    try:
        first = await store.put("k", b"1")
        lease = await store.grant_lease(30)
        tasks.append(asyncio.create_task(collect("early", first + 1)))
        await asyncio.sleep(TOKEN_TTL + 1.5)
        second = await store.put("k", b"2")  # stale token: logs in again, repeats
        await asyncio.sleep(TOKEN_TTL + 1.5)
        # a new watch, its first request since the token expired: etcd refuses it on the stream
        tasks.append(asyncio.create_task(collect("late", second + 1)))
        await asyncio.sleep(0.5)
        await store.put("k", b"3", lease=lease)
        await asyncio.sleep(TOKEN_TTL + 1.5)
        assert await store.refresh_lease(lease) > 0
        got = await store.get("k")
        assert got is not None and got.value == b"3" and got.lease == lease

        async def delivered() -> None:
            while seen != {"early": [b"2", b"3"], "late": [b"3"]}:  # noqa: ASYNC110 -- polling the collectors
                await asyncio.sleep(0.05)

        await asyncio.wait_for(delivered(), 5)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await store.close()


def test_wrong_password_and_foreign_prefix_end_in_one_line(auth_etcd: EtcdServer, pki: Pki,
                                                            password_file: Path, tmp_path: Path,
                                                            unique_prefix: str) -> None:
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not-" + PASSWORD + "\n")
    cases = [
        (ApiServer(auth_etcd.url, unique_prefix, extra_args=flags(pki, wrong)),
         "etcd user 'cp' could not log in: wrong user name or password (check --etcd-user and --etcd-password-file)"),
        (ApiServer(auth_etcd.url, "/elsewhere", extra_args=flags(pki, password_file)),
         "permission denied for etcd user 'cp' (grant its role readwrite on the cluster's key prefix)"),
        (ApiServer(auth_etcd.url, unique_prefix, extra_args=flags(pki, password_file)[:6]),
         "permission denied: etcd has authentication enabled (give --etcd-user and --etcd-password-file)"),
    ]
    for api, expected in cases:
        done = api.run_until_exit()
        assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
        assert done.stderr.strip().splitlines() == [f"cp-apiserver: etcd at {auth_etcd.url}: {expected}"]
        assert PASSWORD not in done.stderr + done.stdout
