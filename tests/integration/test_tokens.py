"""Stored tokens (TOKEN_API.md) on two real cp-apiservers sharing one etcd and prefix.

What ``cpctl token create`` makes works at once on the server that made it and within 1 s on the
other; a revoke, an expiry or a machine's deletion stops it within 1 s on both. No read shows a
value or hash, and etcd holds only the hash. Join tokens do nothing but one exchange, which the
agent's own code (agent/jointoken.py) performs here. The servers run without Docker; machines are
played through their heartbeats (tests/machine_helper.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from apiserver_fixture import ApiServer
from etcd_fixture import EtcdServer, free_port
from machine_helper import call

from agent.jointoken import finish_join_exchange, redeem_join_token
from controlplane.client import Client
from controlplane.store import open_store
from controlplane.tokens import EXCHANGE_PATH, secret_hash

CPCTL = [sys.executable, "-m", "controlplane.cli.main"]
HONOURED_WITHIN = 1.0  # seconds: every API server follows a create or revoke this fast


@pytest.fixture(scope="module")
def servers(etcd: EtcdServer) -> Iterator[tuple[ApiServer, ApiServer]]:
    prefix = f"/cp-test/tokens-{uuid.uuid4().hex[:8]}"
    with ApiServer(etcd.url, prefix) as first, ApiServer(etcd.url, prefix, controllers=False) as second:
        yield first, second


def cpctl(api: ApiServer, *args: str, token: str = "admin-token") -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CPCTL, *args], env=api.env(token), capture_output=True, text=True, timeout=60)


def create_token(api: ApiServer, *args: str) -> str:
    proc = cpctl(api, "token", "create", *args)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout  # the value and nothing else, so scripts can capture it
    return lines[0]


def heartbeat(api: ApiServer, machine: str, token: str) -> int:
    body = {"address": "127.0.2.1", "capacity": {"cpu": 1, "memoryMB": 512}, "agentVersion": "test"}
    return call(api.url, "POST", f"/api/v1/machines/{machine}/heartbeat", body, token=token)[0]


def within(seconds: float, check: Callable[[], bool], what: str) -> float:
    """Poll ``check`` until it holds; the time it took, failing beyond ``seconds``."""
    started = time.monotonic()
    while not check():
        elapsed = time.monotonic() - started
        assert elapsed < seconds, f"{what}: not within {seconds} s"
        time.sleep(0.02)
    return time.monotonic() - started


def token_list(api: ApiServer) -> subprocess.CompletedProcess[str]:
    proc = cpctl(api, "token", "list", "-o", "json")
    assert proc.returncode == 0, proc.stderr
    return proc


def stored_bytes(etcd: EtcdServer, prefix: str) -> bytes:
    async def read() -> bytes:
        store = open_store(etcd.url, prefix=prefix)
        try:
            items, _ = await store.range("")
            return b"\n".join(kv.key.encode() + b"=" + kv.value for kv in items)
        finally:
            await store.close()

    return asyncio.run(read())


def test_a_node_token_works_everywhere_at_once_and_stops_within_a_second_of_its_revoke(
        servers: tuple[ApiServer, ApiServer]) -> None:
    first, second = servers
    value = create_token(first, "--role", "node", "--machine", "m1", "--description", "rack 4")
    assert heartbeat(first, "m1", value) == 200  # the server that made it: at once
    within(HONOURED_WITHIN, lambda: heartbeat(second, "m1", value) == 200, "the other server honours it")
    assert heartbeat(first, "m2", value) == 403  # bound to m1

    token_id = value.partition(".")[0]
    revoked = cpctl(first, "token", "revoke", token_id)
    assert revoked.returncode == 0 and revoked.stdout.strip() == f"token/{token_id} revoked", revoked.stderr
    for api in (first, second):
        within(HONOURED_WITHIN, lambda api=api: heartbeat(api, "m1", value) == 401, f"{api.url} refuses it")
    again = cpctl(first, "token", "revoke", token_id)
    assert again.returncode == 1 and "not found" in again.stderr


def test_no_read_shows_a_value_or_hash_and_etcd_holds_only_the_hash(
        servers: tuple[ApiServer, ApiServer], etcd: EtcdServer) -> None:
    first, second = servers
    value = create_token(first, "--role", "viewer", "--ttl", "24h")
    token_id, _, secret = value.partition(".")
    digest = secret_hash(secret)
    listed = token_list(first)
    item = next(i for i in json.loads(listed.stdout)["items"] if i["metadata"]["name"] == token_id)
    assert item["spec"]["role"] == "viewer" and item["status"]["expiresAt"] > item["status"]["createdAt"]
    readers = [listed.stdout, token_list(second).stdout, cpctl(first, "token", "list").stdout,
               json.dumps(call(first.url, "GET", f"/api/v1/tokens/{token_id}")[1]),
               json.dumps(call(second.url, "GET", "/api/v1/tokens?watch=1&timeoutSeconds=1")[1])]
    assert token_id in readers[-1]  # the watch streamed it
    for text in readers:
        assert secret not in text and digest not in text and "secretHash" not in text
    stored = stored_bytes(etcd, first.prefix)
    assert f"tokens/{token_id}".encode() in stored and digest.encode() in stored  # the hash is there ...
    assert secret.encode() not in stored  # ... the secret nowhere


def test_only_admins_manage_tokens(servers: tuple[ApiServer, ApiServer]) -> None:
    first, _ = servers
    node_value = create_token(first, "--role", "node", "--machine", "m3")
    viewer_value = create_token(first, "--role", "viewer")
    for token in (node_value, "node-m1-token", viewer_value, "viewer-token"):
        refused = cpctl(first, "token", "create", "--role", "admin", token=token)
        assert refused.returncode == 1 and refused.stdout == ""
        assert "cannot create tokens" in refused.stderr, refused.stderr
        status, body = call(first.url, "GET", "/api/v1/tokens", token=token)
        assert status == 403 and body["reason"] == "Forbidden"
    status, _ = call(first.url, "PATCH", f"/api/v1/tokens/{node_value.partition('.')[0]}",
                     {"spec": {"role": "admin"}}, content_type="application/merge-patch+json")
    assert status == 405  # a token cannot be changed into another


def test_a_token_expires(servers: tuple[ApiServer, ApiServer]) -> None:
    first, second = servers
    value = create_token(first, "--role", "node", "--machine", "m4", "--ttl", "2s")
    created = time.monotonic()
    assert heartbeat(first, "m4", value) == 200
    for api in (first, second):
        within(2.0 + HONOURED_WITHIN, lambda api=api: heartbeat(api, "m4", value) == 401, f"{api.url} expires it")
    assert time.monotonic() - created >= 1.5  # not refused before its time
    status, body = call(second.url, "GET", "/api/v1/units", token=value)
    assert status == 401 and "expired" in body["message"]


def test_a_join_token_is_good_for_one_exchange_only(servers: tuple[ApiServer, ApiServer], tmp_path: Path) -> None:
    first, second = servers
    join = create_token(first, "--role", "node", "--machine", "m5", "--join", "--ttl", "1h")
    assert heartbeat(first, "m5", join) == 401  # a join token heartbeats nowhere
    status, body = call(first.url, "GET", "/api/v1/units", token=join)
    assert status == 401 and EXCHANGE_PATH in body["message"]
    token_file = tmp_path / "token"
    token_file.write_text(join + "\n")
    node, later = asyncio.run(redeem_join_token(second.url, join, token_file))  # the agent's own exchange
    assert not later
    assert node != join and token_file.read_text() == node + "\n"
    assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600
    assert heartbeat(second, "m5", node) == 200
    within(HONOURED_WITHIN, lambda: heartbeat(first, "m5", node) == 200, "the other server honours it")
    for api in (first, second):  # consumed: a second exchange is refused everywhere
        within(HONOURED_WITHIN, lambda api=api: call(api.url, "POST", EXCHANGE_PATH, token=join)[0] == 401,
               f"{api.url} refuses a second exchange")
    names = {i["metadata"]["name"]: i for i in json.loads(token_list(first).stdout)["items"]}
    assert join.partition(".")[0] not in names
    issued = names[node.partition(".")[0]]
    assert issued["spec"] == {"role": "node", "machine": "m5", "ttlSeconds": 0, "join": False,
                              "description": f"from join token {join.partition('.')[0]}"}
    assert issued["status"]["expiresAt"] == ""
    # the next start of the agent: the file holds a node token now, which it keeps
    status, body = call(first.url, "POST", EXCHANGE_PATH, token=node)
    assert status == 403 and "not a join token" in body["message"]
    assert asyncio.run(redeem_join_token(first.url, node, token_file)) == (node, False)
    assert token_file.read_text() == node + "\n"


def test_deleting_a_machine_revokes_its_tokens(servers: tuple[ApiServer, ApiServer]) -> None:
    first, second = servers
    value = create_token(first, "--role", "node", "--machine", "m6")
    spare = create_token(first, "--role", "node", "--machine", "m6", "--join")
    other = create_token(first, "--role", "node", "--machine", "m7")
    assert heartbeat(first, "m6", value) == 200 and heartbeat(first, "m7", other) == 200
    deleted = cpctl(first, "delete", "machine", "m6")
    assert deleted.returncode == 0, deleted.stderr
    for api in (first, second):
        within(HONOURED_WITHIN, lambda api=api: heartbeat(api, "m6", value) == 401, f"{api.url} refuses it")
    assert call(second.url, "POST", EXCHANGE_PATH, token=spare)[0] == 401
    assert heartbeat(second, "m7", other) == 200  # another machine's token stays
    machines = {t["spec"]["machine"] for t in json.loads(token_list(second).stdout)["items"]}
    assert "m6" not in machines and "m7" in machines


def test_last_used_is_written_once_not_per_request(servers: tuple[ApiServer, ApiServer]) -> None:
    first, second = servers
    value = create_token(first, "--role", "viewer")
    token_id = value.partition(".")[0]

    def token() -> dict[str, object]:
        return call(first.url, "GET", f"/api/v1/tokens/{token_id}")[1]

    assert token()["status"]["lastUsed"] == ""  # type: ignore[index]
    assert call(first.url, "GET", "/api/v1/units", token=value)[0] == 200
    within(2.0, lambda: token()["status"]["lastUsed"] != "", "lastUsed is recorded")  # type: ignore[index]
    version = token()["metadata"]["resourceVersion"]  # type: ignore[index]
    for api in (first, second, first, second, first):
        assert call(api.url, "GET", "/api/v1/machines", token=value)[0] == 200
    time.sleep(0.3)
    assert token()["metadata"]["resourceVersion"] == version  # type: ignore[index]


def test_an_agent_cut_off_at_start_goes_on_and_exchanges_later(servers: tuple[ApiServer, ApiServer],
                                                               tmp_path: Path) -> None:
    first, _ = servers
    join = create_token(first, "--role", "node", "--machine", "m8", "--join")
    token_file = tmp_path / "token"
    token_file.write_text(join + "\n")
    nobody = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    token, later = asyncio.run(redeem_join_token(nobody, join, token_file, patience=1.0))
    assert (token, later) == (join, True) and time.monotonic() - started < 5  # it starts, not blocked
    assert token_file.read_text() == join + "\n"

    async def in_the_background() -> tuple[str, int]:
        async with Client(first.url, token=join) as client:
            await finish_join_exchange(client, token_file)
            reply = await client.heartbeat("m8", {"address": "127.0.2.8"})
            return str(client.token), int(reply["leaseTTL"])

    exchanged, ttl = asyncio.run(in_the_background())
    assert exchanged != join and token_file.read_text() == exchanged + "\n" and ttl > 0
