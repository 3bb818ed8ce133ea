"""cpctl machine join-config's rendering (controlplane/joinconfig.py), without a real server.

The rendered cloud-config leaves no placeholder, writes the token 0600, pins every wheel by
sha256 twice (the download manifest and pip's hash-checking requirements), carries the agent's
unit verbatim, and its shell script and downloader are valid; the downloader really refuses a
file whose sha256 differs from the pinned one. Against a fake server (in a thread), the command
asks for a JOIN token shaped as the token API says (role node, join, 24 h), or says to pass --node-token without one.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from controlplane.cli.main import main as cpctl_main
from controlplane.joinconfig import (
    PLACEHOLDER,
    JoinConfigError,
    JoinRequest,
    Wheel,
    packaged_file,
    parse_metadata,
    parse_servers,
    render_join_config,
    wheels_of_index,
)

REPO = Path(__file__).resolve().parents[2]
PEM = "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


INDEX = [
    {"file": "aiohttp-3.9.5-cp311-cp311-manylinux_2_17_x86_64.whl", "sha256": sha(b"a1")},
    {"file": "aiohttp-3.9.5-cp311-cp311-musllinux_1_1_x86_64.whl", "sha256": sha(b"a2")},
    {"file": "controlplane-0.1.0-py3-none-any.whl", "sha256": sha(b"cp")},
    {"file": "PyYAML-6.0.1-cp311-cp311-manylinux_2_17_x86_64.whl", "sha256": sha(b"y")},
    {"file": "local-nginx-latest.tar", "sha256": sha(b"img"), "images": ["local/nginx:latest"]},
]


def request(**overrides: Any) -> JoinRequest:
    values: dict[str, Any] = {
        "machine": "m9", "servers": ("https://api1.example:7070", "https://api2.example:7070"),
        "node_token": "tok-1234abcd.secretsecret", "wheels": wheels_of_index(INDEX),
        "metadata": {"role": "web", "region": "eu"}, "address": "10.0.0.9",
    }
    values.update(overrides)
    return JoinRequest(**values)


def files_of(text: str) -> dict[str, dict[str, Any]]:
    doc = yaml.safe_load(text)
    return {f["path"]: f for f in doc["write_files"]}


def test_rendering_fills_everything() -> None:
    text = render_join_config(request(ca_pem=PEM))
    assert text.startswith("#cloud-config\n")
    assert PLACEHOLDER.search(text) is None and "{{" not in text
    files = files_of(text)
    token = files["/etc/controlplane/node-token"]
    assert token["permissions"] == "0600" and token["content"].strip() == "tok-1234abcd.secretsecret"
    env = files["/etc/controlplane/agent.env"]["content"]
    assert "CP_SERVER=https://api1.example:7070,https://api2.example:7070\n" in env
    assert ("CP_AGENT_ARGS=--machine m9 --metadata region=eu,role=web --address 10.0.0.9 "
            "--ca /etc/controlplane/ca.pem\n") in env
    assert files["/etc/controlplane/ca.pem"]["content"] == PEM
    assert files["/etc/systemd/system/cp-agent.service"]["content"] == (REPO / "deploy/systemd/cp-agent.service").read_text()
    assert "CP_CA_FILE='/etc/controlplane/ca.pem'" in files["/var/lib/cp-join/join.env"]["content"]
    assert yaml.safe_load(text)["runcmd"] == [["/usr/local/sbin/cp-join"]]


def test_every_wheel_is_pinned_by_sha256() -> None:
    files = files_of(render_join_config(request()))
    sums = files["/var/lib/cp-join/SHA256SUMS"]["content"].splitlines()
    wheels = [e for e in INDEX if e["file"].endswith(".whl")]
    assert sorted(sums) == sorted(f"{e['sha256']}  {e['file']}" for e in wheels)
    requirements = files["/var/lib/cp-join/requirements.txt"]["content"].splitlines()
    assert requirements == [
        f"aiohttp==3.9.5 --hash=sha256:{sha(b'a1')} --hash=sha256:{sha(b'a2')}",
        f"controlplane==0.1.0 --hash=sha256:{sha(b'cp')}",
        f"pyyaml==6.0.1 --hash=sha256:{sha(b'y')}",
    ]
    script = files["/usr/local/sbin/cp-join"]["content"]
    assert "--no-index" in script and "--require-hashes" in script
    assert "local-nginx-latest.tar" not in "".join(sums)  # image tarballs are the agent's business


def test_without_a_ca_there_is_no_ca_file_and_no_flag() -> None:
    files = files_of(render_join_config(request(address="", metadata={})))
    assert "/etc/controlplane/ca.pem" not in files
    assert "CP_AGENT_ARGS=--machine m9\n" in files["/etc/controlplane/agent.env"]["content"]
    assert "CP_CA_FILE=''" in files["/var/lib/cp-join/join.env"]["content"]


def test_remote_docker_is_passed_on() -> None:
    files = files_of(render_join_config(request(docker="ssh://core@10.0.0.20:22")))
    assert "--docker ssh://core@10.0.0.20:22" in files["/etc/controlplane/agent.env"]["content"]
    assert "CP_DOCKER='ssh://core@10.0.0.20:22'" in files["/var/lib/cp-join/join.env"]["content"]


def test_the_script_and_the_downloader_parse() -> None:
    files = files_of(render_join_config(request()))
    sh = subprocess.run(["sh", "-n"], input=files["/usr/local/sbin/cp-join"]["content"], text=True,
                        capture_output=True)
    assert sh.returncode == 0, sh.stderr
    compile(files["/var/lib/cp-join/fetch.py"]["content"], "fetch.py", "exec")


@pytest.mark.parametrize("bad", [
    {"machine": "M9"}, {"machine": "m9;rm"}, {"node_token": "two words"}, {"node_token": ""},
    {"servers": ("ftp://x",)}, {"servers": ("http://a b",)}, {"servers": ("http://x/'",)},
    {"docker": "unix:///var/run/docker.sock'; rm -rf /"}, {"ca_pem": "not a pem"},
])
def test_refuses_what_cannot_go_into_a_cloud_config(bad: dict[str, Any]) -> None:
    with pytest.raises(JoinConfigError):
        render_join_config(request(**bad))


def test_parsers_refuse_shell_and_yaml_breakers() -> None:
    assert parse_metadata("role=web, region=eu") == {"role": "web", "region": "eu"}
    for text in ("role", "role=we b", "role=$(x)", "k=v\nCP_X=1"):
        with pytest.raises(JoinConfigError):
            parse_metadata(text)
    assert parse_servers("http://a:1/,https://b:2") == ("http://a:1", "https://b:2")
    with pytest.raises(JoinConfigError):
        parse_servers("")


def test_an_index_without_our_wheel_is_refused() -> None:
    with pytest.raises(JoinConfigError, match="controlplane"):
        wheels_of_index([e for e in INDEX if not e["file"].startswith("controlplane")])
    with pytest.raises(JoinConfigError, match="out of shape"):
        wheels_of_index([*INDEX, {"file": "../evil-1.0-py3-none-any.whl", "sha256": sha(b"e")}])
    with pytest.raises(JoinConfigError):
        wheels_of_index({"not": "a list"})


def test_the_template_is_the_packaged_file() -> None:
    assert packaged_file("cloud-config.yaml") == (REPO / "deploy/cloud-config.yaml").read_text()
    # every placeholder the template uses is documented at its top
    template = (REPO / "deploy/cloud-config.yaml").read_text()
    header = template.split("\nwrite_files:")[0]
    for name in set(PLACEHOLDER.findall(template.split("\nwrite_files:")[1])):
        assert f"{{{{{name}}}}}" in header, name


@pytest.fixture
def dist_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "srv"
    (root / "dist").mkdir(parents=True)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root / "dist"
    finally:
        server.shutdown()


def run_fetch(text: str, tmp_path: Path, server: str) -> subprocess.CompletedProcess[str]:
    files = files_of(text)
    (tmp_path / "fetch.py").write_text(files["/var/lib/cp-join/fetch.py"]["content"])
    (tmp_path / "SHA256SUMS").write_text(files["/var/lib/cp-join/SHA256SUMS"]["content"])
    env = {**os.environ, "CP_SERVERS": f"http://127.0.0.1:9,{server}", "CP_CA_FILE": "", "CP_JOIN_ATTEMPTS": "1"}
    return subprocess.run([sys.executable, str(tmp_path / "fetch.py"), str(tmp_path / "SHA256SUMS"),
                           str(tmp_path / "wheels")], env=env, capture_output=True, text=True, timeout=60)


def test_the_downloader_checks_each_sha256(dist_server: tuple[str, Path], tmp_path: Path) -> None:
    server, dist = dist_server
    blobs = {"controlplane-0.1.0-py3-none-any.whl": b"cp", "click-8.1.0-py3-none-any.whl": b"click"}
    for name, data in blobs.items():
        (dist / name).write_bytes(data)
    wheels = tuple(Wheel(n, sha(d), n.split("-")[0], n.split("-")[1]) for n, d in blobs.items())
    text = render_join_config(request(wheels=wheels))
    done = run_fetch(text, tmp_path, server)  # the first server (port 9) is down: the second serves
    assert done.returncode == 0, done.stderr
    assert {p.name: p.read_bytes() for p in (tmp_path / "wheels").iterdir()} == blobs
    (dist / "click-8.1.0-py3-none-any.whl").write_bytes(b"tampered")
    for path in (tmp_path / "wheels").iterdir():
        path.unlink()
    done = run_fetch(text, tmp_path, server)
    assert done.returncode != 0 and "sha256 mismatch" in done.stderr
    assert not (tmp_path / "wheels" / "click-8.1.0-py3-none-any.whl").exists()


class FakeCluster(http.server.BaseHTTPRequestHandler):
    """/dist/ and POST /api/v1/tokens as TOKEN_API.md shapes them; ``tokens_status`` 404 is a server
    without the token API."""

    tokens_status = 201
    created: list[dict[str, Any]] = []

    def log_message(self, *args: Any) -> None:
        pass

    def reply(self, code: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/dist/":
            self.reply(200, INDEX)
        else:
            self.reply(404, {"kind": "Status", "code": 404, "reason": "NotFound", "message": "no"})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != "/api/v1/tokens" or self.tokens_status == 404:
            self.reply(404, {"kind": "Status", "code": 404, "reason": "NotFound", "message": "not found"})
            return
        type(self).created.append({"auth": self.headers["Authorization"], "body": body})
        self.reply(201, {**body, "metadata": {"name": "tok-0a1b2c3d"}, "value": "tok-0a1b2c3d.joinsecret"})


@pytest.fixture
def fake_cluster() -> Iterator[str]:
    FakeCluster.created = []
    FakeCluster.tokens_status = 201
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeCluster)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def test_join_config_creates_a_join_token_through_the_api(fake_cluster: str, tmp_path: Path) -> None:
    env = {"CPCTL_SERVER": fake_cluster, "CPCTL_TOKEN": "admin-token", "HOME": str(tmp_path)}
    result = CliRunner().invoke(cpctl_main, ["machine", "join-config", "m9", "--metadata", "role=web"], env=env)
    assert result.exit_code == 0, result.output
    assert FakeCluster.created == [{"auth": "Bearer admin-token", "body": {
        "apiVersion": "v1", "kind": "Token", "metadata": {},
        "spec": {"role": "node", "machine": "m9", "ttlSeconds": 86400, "join": True,
                 "description": "join-config for machine m9"}}}]
    files = files_of(result.output)
    assert files["/etc/controlplane/node-token"]["content"] == "tok-0a1b2c3d.joinsecret\n"
    assert f"CP_SERVER={fake_cluster}\n" in files["/etc/controlplane/agent.env"]["content"]


def test_join_config_without_a_token_api_says_what_to_do(fake_cluster: str, tmp_path: Path) -> None:
    FakeCluster.tokens_status = 404
    env = {"CPCTL_SERVER": fake_cluster, "CPCTL_TOKEN": "admin-token", "HOME": str(tmp_path)}
    result = CliRunner().invoke(cpctl_main, ["machine", "join-config", "m9"], env=env)
    assert result.exit_code == 1 and "--node-token" in result.output
    given = CliRunner().invoke(cpctl_main, ["machine", "join-config", "m9", "--node-token", "node-m9-token",
                                            "--server", "https://a:7070,https://b:7070"], env=env)
    assert given.exit_code == 0, given.output
    files = files_of(given.output)
    assert files["/etc/controlplane/node-token"]["content"] == "node-m9-token\n"
    assert "CP_SERVER=https://a:7070,https://b:7070\n" in files["/etc/controlplane/agent.env"]["content"]
    bad = CliRunner().invoke(cpctl_main, ["machine", "join-config", "m9", "--address", "web.example"], env=env)
    assert bad.exit_code == 2 and "IP address" in bad.output
