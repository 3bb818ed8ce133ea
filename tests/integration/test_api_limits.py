"""The API's limits against a real etcd: numbers of any size, the 256 KiB object, strict query
parameters and bodies (nothing reaches etcd when one is refused), and the token file of a real
cp-apiserver process: refused at start with one line and exit 2, reloaded on SIGHUP.

The in-process server and its helpers come from test_api.py.
"""

from __future__ import annotations

import json
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from apiserver_fixture import ApiServer, write_private
from etcd_fixture import EtcdServer
from inproc_api import Api, assert_status, unit

from controlplane.model import MAX_OBJECT_BYTES

HUGE = "9" * 4301  # int() refuses it: the 500 this file was written for


def with_number(template: str, number: str) -> bytes:
    return template.replace("N", number).encode()


async def refused(api: Api, method: str, path: str, data: bytes, code: int, reason: str,
                  content_type: str = "application/json") -> dict[str, Any]:
    status, body = await api.call(method, path, data=data, content_type=content_type)
    assert status == code, (method, path, data[:80], body)
    return assert_status(body, code, reason)


async def test_numbers_of_any_size_are_422_naming_the_field(api: Api) -> None:
    created = await api.create_unit("web")
    before = await api.etcd_keys()
    for template, field in [
        ('{"metadata": {"name": "x"}, "spec": {"image": "i", "replicas": N}}', "spec.replicas"),
        ('{"metadata": {"name": "x", "generation": N}, "spec": {"image": "i"}}', "metadata.generation"),
        ('{"metadata": {"name": "x"}, "spec": {"image": "i", "resources": {"cpu": N.5}}}', "spec.resources.cpu"),
        ('{"metadata": {"name": "x"}, "spec": {"image": "i", "resources": {"cpu": 1eN}}}', "spec.resources.cpu"),
    ]:
        for number in (HUGE, "9007199254740992", "-" + HUGE if "1eN" not in template else "400"):
            err = await refused(api, "POST", "/api/v1/units", with_number(template, number), 422, "Invalid")
            assert [c["field"] for c in err["details"]["causes"]] == [field], err
            assert len(err["message"]) < 400
    rv = created["metadata"]["resourceVersion"]
    await refused(api, "PUT", "/api/v1/units/web", with_number(
        '{"metadata": {"name": "web", "resourceVersion": "' + rv + '"}, "spec": {"image": "i", "replicas": N}}', HUGE),
        422, "Invalid")
    await refused(api, "PATCH", "/api/v1/units/web", with_number('{"spec": {"replicas": N}}', HUGE), 422, "Invalid",
                  content_type="application/merge-patch+json")
    await refused(api, "PUT", "/api/v1/units/web/scale", with_number('{"spec": {"replicas": N}}', HUGE), 422, "Invalid")
    await refused(api, "PUT", "/api/v1/units/web/status", with_number(
        '{"metadata": {"name": "web"}, "status": {"observedGeneration": N}}', HUGE), 422, "Invalid")
    await refused(api, "POST", "/api/v1/machines/m1/heartbeat", with_number('{"capacity": {"memoryMB": N}}', HUGE),
                  422, "Invalid")
    await refused(api, "POST", "/api/v1/units", b'{"metadata": {"name": "x"}, "spec": {"replicas": NaN}}', 400,
                  "BadRequest")
    assert await api.etcd_keys() == before


async def test_json_types_are_strict(api: Api) -> None:
    for spec, field in (({"image": "i", "global": 0}, "spec.global"),
                        ({"image": "i", "resources": {"cpu": "1.5"}}, "spec.resources.cpu")):
        status, err = await api.call("POST", "/api/v1/units", body={"metadata": {"name": "x"}, "spec": spec})
        assert_status(err, 422, "Invalid")
        assert [c["field"] for c in err["details"]["causes"]] == [field]
    status, ok = await api.call("POST", "/api/v1/units", body=unit("whole", replicas=3.0))
    assert status == 201 and ok["spec"]["replicas"] == 3  # JSON has one number type


async def test_objects_over_256_kib_as_stored_are_422(api: Api) -> None:
    # a body 64 bytes under the limit is over it as stored: the server adds uid, timestamps,
    # resourceVersion, the spec's defaults and a status
    wide = {**unit("wide"), "metadata": {"name": "wide", "annotations": {"a": ""}}}
    filler = MAX_OBJECT_BYTES - 64 - len(json.dumps(wide, ensure_ascii=False).encode())
    wide["metadata"]["annotations"]["a"] = "é" * (filler // 2)  # 2 bytes each in UTF-8
    body = json.dumps(wide, ensure_ascii=False).encode()
    assert MAX_OBJECT_BYTES - 66 <= len(body) <= MAX_OBJECT_BYTES - 64
    err = await refused(api, "POST", "/api/v1/units", body, 422, "Invalid")
    assert err["details"]["causes"][0]["reason"] == "FieldValueTooLong" and "262144" in err["message"]
    assert await api.etcd_keys() == {}
    # grown past it by a merge patch, and by a status write
    await api.create_unit("web")
    half = "x" * (150 * 1024)
    status, ok = await api.call("PATCH", "/api/v1/units/web", body={"metadata": {"annotations": {"a": half}}},
                                content_type="application/merge-patch+json")
    assert status == 200, ok
    before = await api.etcd_keys()
    status, err = await api.call("PATCH", "/api/v1/units/web", body={"metadata": {"annotations": {"b": half}}},
                                 content_type="application/merge-patch+json")
    assert_status(err, 422, "Invalid")
    status, err = await api.call("PUT", "/api/v1/units/web/status", body={
        "metadata": {"name": "web"}, "status": {"conditions": [{"type": "T", "status": "True", "message": half}]}})
    assert_status(err, 422, "Invalid")
    assert await api.etcd_keys() == before


async def test_put_needs_metadata_and_its_name(api: Api) -> None:
    await api.create_unit("web")
    before = await api.etcd_keys()
    for body, field in (({"spec": {"image": "i"}}, "metadata"),
                        ({"metadata": {}, "spec": {"image": "i"}}, "metadata.name"),
                        ({"metadata": {"labels": {}}, "spec": {"image": "i"}}, "metadata.name")):
        status, err = await api.call("PUT", "/api/v1/units/web", body=body)
        assert_status(err, 422, "Invalid")
        assert [c["field"] for c in err["details"]["causes"]] == [field], err
    assert await api.etcd_keys() == before


async def test_query_parameters_are_strict(api: Api) -> None:
    await api.create_unit("web")
    for query in ("limit=", "limit=x", "limit=-1", "limit=+5", "limit=%205", "limit=1.5", f"limit={HUGE}",
                  "limit=9007199254740992", "limit=1&limit=2", "labelSelector=a&labelSelector=b",
                  "continue=a&continue=b", "labelSelector=a%3Db%3Dc", "labelSelector=a,", "fieldSelector=x",
                  "fieldSelector=a%3D%1B[31m"):
        status, body = await api.call("GET", f"/api/v1/units?{query}")
        assert status == 400, (query, body)
        assert_status(body, 400, "BadRequest")
        assert len(body["message"]) < 300
    status, body = await api.call("GET", "/api/v1/units?limit=9007199254740991&labelSelector=&fieldSelector=")
    assert status == 200 and [i["metadata"]["name"] for i in body["items"]] == ["web"]


# ---------------------------------------------------------------- the token file of a real server

SERVER = [sys.executable, "-m", "controlplane.api.server", "--etcd", "memory://", "--listen", "127.0.0.1:0",
          "--no-controllers"]
GOOD = "admin-token,admin,admin\n"


@pytest.mark.parametrize(
    ("text", "mode", "why"),
    [
        (GOOD + "admin-token,other,viewer\n", 0o600, ":2: duplicate token (first on line 1)"),
        (GOOD + "# fine\nbroken-line\n", 0o600, ":3: malformed line"),
        (GOOD + "t,someone,superuser\n", 0o600, ":2: unknown role 'superuser'"),
        ("t,node-m1,node\n", 0o600, ":1: a node token needs its machine name"),
        (GOOD, 0o640, "mode 0640 lets group or others at the tokens"),
        (GOOD, 0o604, "mode 0604 lets group or others at the tokens"),
    ],
)
def test_a_bad_token_file_stops_the_server_with_one_line(tmp_path: Path, text: str, mode: int, why: str) -> None:
    path = tmp_path / "tokens.csv"
    write_private(path, text)
    path.chmod(mode)
    proc = subprocess.run([*SERVER, "--token-file", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == [lines[0]] and lines[0].startswith(f"cp-apiserver: {path}"), proc.stderr
    assert why in lines[0], proc.stderr
    assert "admin-token" not in proc.stderr  # a token is never printed


def _status(server: ApiServer, token: str) -> int:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(server.url + "/api/v1/units", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def _eventually(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_sighup_reloads_the_token_file(etcd: EtcdServer, unique_prefix: str) -> None:
    with ApiServer(etcd.url, unique_prefix, controllers=False) as server:
        assert _status(server, "viewer-token") == 200 and _status(server, "fresh-token") == 401
        server.reload_tokens("admin-token,admin,admin\nfresh-token,carol,viewer\n")
        _eventually(lambda: _status(server, "fresh-token") == 200)
        assert _status(server, "viewer-token") == 401  # removed from the file: refused at once
        assert "token file" in server.log_tail() and "reloaded: 2 tokens" in server.log_tail()
        # a bad file: one log line, and the tokens already loaded keep working
        server.reload_tokens("admin-token,admin,admin\nbad,x,root\n")
        _eventually(lambda: "not reloaded" in server.log_tail())
        assert _status(server, "fresh-token") == 200 and _status(server, "bad") == 401
        line = next(x for x in server.log_tail().splitlines() if "not reloaded" in x)
        assert ":2: unknown role 'root'" in line
        assert server.proc is not None and server.proc.poll() is None


def test_a_busy_server_queues_a_burst_of_connections(etcd: EtcdServer, unique_prefix: str) -> None:
    """A thousand agents reconnecting while the server's loop is busy: the kernel queues their
    connections (api/server.py LISTEN_BACKLOG) rather than dropping their SYNs, which would cost
    each a 1 s retransmit, past an agent's heartbeat timeout (seen at 1,000 hollow machines with
    aiohttp's default backlog of 128). The server is stopped (SIGSTOP) while 600 connect."""
    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    assert somaxconn >= 1024, f"net.core.somaxconn is {somaxconn}: the kernel caps every accept queue at it"
    burst = 600
    with ApiServer(etcd.url, unique_prefix, controllers=False) as server:
        assert server.proc is not None
        socks: list[socket.socket] = []
        server.proc.send_signal(signal.SIGSTOP)
        try:
            for _ in range(burst):
                sock = socket.socket()
                sock.setblocking(False)
                sock.connect_ex(("127.0.0.1", server.port))
                socks.append(sock)
            pending = set(socks)
            deadline = time.monotonic() + 0.8  # well under the first SYN retransmit (1 s)
            while pending and time.monotonic() < deadline:
                _, writable, _ = select.select([], list(pending), [], 0.05)
                pending -= {s for s in writable if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0}
            assert not pending, f"{len(pending)} of {burst} connections not established while the server was busy"
        finally:
            server.proc.send_signal(signal.SIGCONT)
            for sock in socks:
                sock.close()
        assert _status(server, "admin-token") == 200
