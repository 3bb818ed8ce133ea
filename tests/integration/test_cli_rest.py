"""cpctl's blocking stdlib client (controlplane/cli/rest.py) against small HTTP servers in threads:
errors come back as the Status they were sent as, several servers fail over (down, 503, hung; a
POST that may have been applied is not sent twice), watches and logs stream line by line, a kept
connection the server closed is replaced, the CA is verified (a failure is one line naming the
CA), and cpctl itself starts without aiohttp, yaml, marshmallow, prometheus or rich.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import click
import pytest
from etcd_fixture import free_port
from tls_helper import Pki, make_pki

from controlplane.cli.common import CLIError, call, error_line
from controlplane.cli.rest import RestClient
from controlplane.client import Client
from controlplane.errors import BadGateway, Gone, Invalid, NotFound, ServiceUnavailable

CPCTL = [sys.executable, "-m", "controlplane.cli.main"]
SWALLOW = "swallow"  # read the request, close without an answer
HANG = "hang"  # read the request, never answer
Reply = tuple[int, Any] | str  # (status, JSON value | list of raw chunks) or SWALLOW / HANG


def status(code: int, reason: str, message: str, **details: Any) -> tuple[int, dict[str, Any]]:
    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": reason,
            "message": message}
    if details:
        body["details"] = details
    return code, body


UNAVAILABLE = status(503, "ServiceUnavailable", "the store is unavailable")
EMPTY_LIST = (200, {"kind": "UnitList", "apiVersion": "v1", "metadata": {"resourceVersion": "7"}, "items": []})


@dataclass
class Seen:
    method: str
    path: str
    authorization: str


class FakeApi:
    """An HTTP/1.1 server in a thread answering ``route(method, path)``; ``close_after`` closes each
    connection after its answer without saying so (a kept connection the server dropped)."""

    def __init__(self, route: Callable[[str, str], Reply], *, tls: Pki | None = None,
                 close_after: bool = False) -> None:
        self.route = route
        self.close_after = close_after
        self.seen: list[Seen] = []
        self.released = threading.Event()
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                api.serve(self)

            do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(tls.server_cert), str(tls.server_key))
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        scheme = "https" if tls is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def serve(self, handler: BaseHTTPRequestHandler) -> None:
        handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        self.seen.append(Seen(handler.command, handler.path, handler.headers.get("Authorization", "")))
        reply = self.route(handler.command, handler.path)
        if reply in (SWALLOW, HANG):
            if reply == HANG:
                self.released.wait(10)
            handler.close_connection = True
            return
        assert not isinstance(reply, str)
        code, payload = reply
        handler.send_response(code)
        handler.send_header("Content-Type", "application/json")
        if isinstance(payload, list):  # chunked, each part flushed on its own
            handler.send_header("Transfer-Encoding", "chunked")
            handler.end_headers()
            for part in payload:
                handler.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                handler.wfile.flush()
                time.sleep(0.02)
            handler.wfile.write(b"0\r\n\r\n")
        else:
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
        handler.wfile.flush()
        if self.close_after:
            handler.close_connection = True

    def calls(self, method: str | None = None) -> int:
        return sum(1 for seen in self.seen if method in (None, seen.method))

    def stop(self) -> None:
        self.released.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def servers() -> Iterator[Callable[..., FakeApi]]:
    started: list[FakeApi] = []

    def start(route: Callable[[str, str], Reply], **kwargs: Any) -> FakeApi:
        started.append(FakeApi(route, **kwargs))
        return started[-1]

    yield start
    for server in started:
        server.stop()


def good_route(method: str, path: str) -> Reply:
    if path == "/version":
        return 200, {"version": "9.9.9"}
    if method == "POST":
        return 201, {"metadata": {"name": "created"}}
    return EMPTY_LIST


def closed_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


def cpctl_env(server: str, *, ca: str | None = None) -> dict[str, str]:
    """Only what cpctl needs (no config file: HOME is nowhere), with this checkout's code."""
    env = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "CPCTL_SERVER": server, "CPCTL_TOKEN": "t0k",
           "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    if ca:
        env["CPCTL_CA"] = ca
    return env


def cpctl(*args: str, server: str, ca: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CPCTL, *args], env=cpctl_env(server, ca=ca), capture_output=True, text=True, timeout=30)


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in stderr, stderr
    return lines[0]


# --- errors ------------------------------------------------------------------------------------

def test_errors_are_the_status_the_server_sent(servers: Callable[..., FakeApi]) -> None:
    invalid = status(422, "Invalid", 'Unit "Web!" is invalid: metadata.name: must be a DNS-1123 label',
                     kind="Unit", name="Web!", causes=[{"field": "spec.image", "message": "required"}])
    routes: dict[str, Reply] = {
        "/api/v1/units/nope": status(404, "NotFound", 'units "nope" not found', kind="units", name="nope"),
        "/api/v1/units": invalid,
        "/api/v1/units/gateway": (502, b"upstream down\nsecond line"),
    }
    api = servers(lambda method, path: routes[path])
    with RestClient(api.url, token="t0k") as client:
        with pytest.raises(NotFound, match='units "nope" not found') as missing:
            client.get("units", "nope")
        assert (missing.value.kind, missing.value.name) == ("units", "nope")
        with pytest.raises(Invalid) as refused:
            client.create("units", {"metadata": {"name": "Web!"}})
        assert [(c.field, c.message) for c in refused.value.causes] == [("spec.image", "required")]
        assert error_line(refused.value).endswith("must be a DNS-1123 label; spec.image: required")
        with pytest.raises(BadGateway, match=r"the server answered 502 for http://.*/api/v1/units/gateway: "
                                             r"upstream down$"):
            client.get("units", "gateway")
    assert {seen.authorization for seen in api.seen} == {"Bearer t0k"}
    result = cpctl("run", "Web!", "--image", "x", "--no-wait", server=api.url)
    assert result.returncode == 1
    assert one_error_line(result.stderr) == ('error: Unit "Web!" is invalid: metadata.name: must be a DNS-1123 '
                                             "label; spec.image: required")


# --- several servers ---------------------------------------------------------------------------

def test_a_server_that_is_down_or_answers_503_hands_the_call_to_the_next(servers: Callable[..., FakeApi]) -> None:
    unavailable = servers(lambda method, path: UNAVAILABLE)
    good = servers(good_route)
    with RestClient(f"{closed_url()},{unavailable.url},{good.url}") as client:
        assert client.list("units")["kind"] == "UnitList"
        assert client.server == good.url  # asked first from now on
        client.create("units", {"metadata": {"name": "x"}})
    assert (unavailable.calls(), good.calls("GET"), good.calls("POST")) == (1, 1, 1)
    listed = cpctl("get", "units", server=f"{closed_url()},{unavailable.url},{good.url}")
    assert listed.returncode == 0 and "No units found." in listed.stderr, listed.stderr


def test_every_server_failing_is_one_line_naming_each(servers: Callable[..., FakeApi]) -> None:
    unavailable = servers(lambda method, path: UNAVAILABLE)
    down = closed_url()
    result = cpctl("get", "units", server=f"{down},{unavailable.url}")
    assert result.returncode == 1
    assert one_error_line(result.stderr) == (f"error: every API server failed: cannot reach the server at {down}: "
                                             "Connection refused; the store is unavailable")
    alone = cpctl("get", "units", server=unavailable.url)  # one server: its own 503, as it said it
    assert alone.returncode == 1 and one_error_line(alone.stderr) == "error: the store is unavailable"


def test_a_post_that_may_have_been_applied_is_not_sent_again(servers: Callable[..., FakeApi]) -> None:
    swallowing = servers(lambda method, path: SWALLOW)
    good = servers(good_route)
    with RestClient(f"{swallowing.url},{good.url}") as client:
        with pytest.raises(ServiceUnavailable, match=f"cannot reach the server at {swallowing.url}: "):
            client.create("units", {"metadata": {"name": "x"}})
        assert good.calls() == 0
        assert client.list("units")["kind"] == "UnitList"  # a GET may go to the next one
    assert (swallowing.calls("POST"), good.calls("GET")) == (1, 1)


def test_a_hung_server_costs_its_timeout_then_the_next_answers(servers: Callable[..., FakeApi]) -> None:
    hung = servers(lambda method, path: HANG)
    good = servers(good_route)
    started = time.monotonic()
    with RestClient(f"{hung.url},{good.url}", timeout=0.5) as client:
        assert client.version() == {"version": "9.9.9"}
    assert 0.4 < time.monotonic() - started < 5
    with RestClient(hung.url, timeout=0.5) as client, pytest.raises(ServiceUnavailable) as err:
        client.version()
    assert err.value.message == f"cannot reach the server at {hung.url}: no answer within 0.5s"


def test_a_kept_connection_the_server_closed_is_replaced(servers: Callable[..., FakeApi]) -> None:
    dropping = servers(good_route, close_after=True)
    with RestClient(dropping.url) as client:
        for _ in range(3):
            assert client.list("units")["kind"] == "UnitList"
        time.sleep(0.1)
        client.create("units", {"metadata": {"name": "x"}})
    assert (dropping.calls("GET"), dropping.calls("POST")) == (3, 1)


def test_a_command_still_written_for_the_async_client_runs(servers: Callable[..., FakeApi],
                                                          monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``call`` hands an ``async def go(api)`` the aiohttp Client (commands not converted yet)."""
    api = servers(lambda method, path: status(404, "NotFound", 'units "x" not found')
                  if path.endswith("/x") else good_route(method, path))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("CPCTL_SERVER", api.url)
    monkeypatch.setenv("CPCTL_TOKEN", "t0k")
    ctx = click.Context(click.Command("test"))

    async def old_style(client: Client) -> dict[str, Any]:
        assert isinstance(client, Client)
        return await client.version()

    def new_style(client: RestClient) -> dict[str, Any]:
        return client.version()

    async def refused(client: Client) -> None:
        await client.get("units", "x")

    assert call(old_style, ctx=ctx) == call(new_style, ctx=ctx) == {"version": "9.9.9"}
    with pytest.raises(CLIError, match='units "x" not found'):
        call(refused, ctx=ctx)
    assert {seen.authorization for seen in api.seen} == {"Bearer t0k"}


# --- streams -----------------------------------------------------------------------------------

def test_watch_yields_each_line_as_it_comes_and_410_is_gone(servers: Callable[..., FakeApi]) -> None:
    first = json.dumps({"type": "ADDED", "object": {"metadata": {"name": "a", "resourceVersion": "8"}}}).encode()
    second = json.dumps({"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}}).encode()
    expired = json.dumps({"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old"}}).encode()
    chunks = [first[:10], first[10:] + b"\n" + second + b"\n", b"\n", expired + b"\n"]
    api = servers(lambda method, path: (200, chunks))
    events: list[dict[str, Any]] = []
    with RestClient(api.url) as client, pytest.raises(Gone, match="too old"):
        for event in client.watch("units", resource_version="7", label_selector="app=web", timeout_seconds=5):
            events.append(event)
    assert [(e["type"], e["object"]["metadata"]["resourceVersion"]) for e in events] == [("ADDED", "8"),
                                                                                          ("BOOKMARK", "9")]
    assert api.seen[0].path == "/api/v1/units?labelSelector=app%3Dweb&watch=1&resourceVersion=7&timeoutSeconds=5"


def test_logs_stream_the_bytes_as_sent(servers: Callable[..., FakeApi]) -> None:
    parts = [b"one\n", b"tw", b"o\n\x1b[31mred\n"]
    api = servers(lambda method, path: (200, parts))
    with RestClient(api.url) as client:
        assert b"".join(client.logs("web-0", follow=True, tail=2)) == b"".join(parts)
    assert api.seen[0].path == "/api/v1/instances/web-0/log?follow=1&tail=2"
    printed = cpctl("logs", "web-0", server=api.url)  # into a pipe: the bytes unchanged
    assert printed.returncode == 0 and printed.stdout == "one\ntwo\n\x1b[31mred\n"


# --- TLS ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_the_ca_is_verified_and_a_failure_is_one_line(servers: Callable[..., FakeApi], pki: Pki,
                                                      tmp_path: Path) -> None:
    api = servers(good_route, tls=pki)
    with RestClient(api.url, ca=str(pki.ca)) as client:
        assert client.version() == {"version": "9.9.9"}
    trusted = cpctl("version", server=api.url, ca=str(pki.ca))
    assert trusted.stdout.splitlines()[1] == f"Server Version: 9.9.9 ({api.url})", trusted.stderr
    wrong = cpctl("get", "units", server=api.url, ca=str(pki.other_ca))
    assert wrong.returncode == 1
    line = one_error_line(wrong.stderr)
    assert line.startswith(f"error: cannot reach the server at {api.url}: TLS certificate verification failed ("), line
    assert line.endswith(f") against the CA {pki.other_ca}"), line
    system = cpctl("get", "units", server=api.url)
    assert one_error_line(system.stderr).endswith("against the system's CAs (give the cluster CA with --ca or CPCTL_CA)")
    assert api.calls() == 2  # only the trusted clients' requests got through
    plain = servers(good_route)
    scheme = cpctl("get", "units", server=plain.url.replace("http://", "https://"), ca=str(pki.ca))
    assert "TLS handshake failed" in one_error_line(scheme.stderr)
    missing = cpctl("get", "units", server=api.url, ca=str(tmp_path / "absent.pem"))
    assert one_error_line(missing.stderr).startswith(f"error: cannot load the CA file '{tmp_path / 'absent.pem'}'")


# --- start-up ----------------------------------------------------------------------------------

HEAVY = ("aiohttp", "yaml", "marshmallow", "prometheus_client", "rich", "asyncio")


@pytest.mark.parametrize("args", [("version",), ("get", "units")])
def test_cpctl_starts_without_the_heavy_libraries(servers: Callable[..., FakeApi], args: tuple[str, ...]) -> None:
    api = servers(good_route)
    result = subprocess.run([sys.executable, "-X", "importtime", *CPCTL[1:], *args], capture_output=True, text=True,
                            timeout=30, env=cpctl_env(api.url))
    assert result.returncode == 0, result.stderr
    assert api.calls() == 1
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "http.client" in imported  # the check sees what was imported
    assert not {name for name in imported if name.split(".")[0] in HEAVY}


def test_a_socket_closed_mid_answer_is_unreachable_not_a_traceback() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def half_answer() -> None:
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"kind\"")
        conn.close()

    threading.Thread(target=half_answer, daemon=True).start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    try:
        result = cpctl("get", "units", server=url)
    finally:
        listener.close()
    assert result.returncode == 1
    assert one_error_line(result.stderr).startswith(f"error: cannot reach the server at {url}: ")
