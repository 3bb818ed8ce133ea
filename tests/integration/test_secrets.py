"""Secrets, container defaults and admission end to end: a real cp-apiserver on the real etcd, one
real cp-agent on real Docker (machine m1), cpctl as a subprocess.

- a unit's secretEnv value reaches its container's environment (``docker exec env``), and the
  container runs hardened, as the unit's user;
- a viewer reads Secrets redacted (get, list, watch; no value-guessing field selectors), another
  machine's node token is refused, m1's node token (whose instance uses the Secret) is not;
- a missing Secret is a clear status reason, said once in the agent's log, not a loop of errors;
- the value appears in no line of the apiserver's or the agent's log (both at DEBUG) and in no
  Event, although a unit's failing health probe prints it;
- admission: the server's --proxy-image on proxy units without an image, --max-pids-limit.

The tests share one server and agent and run in file order.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from apiserver_fixture import ApiServer  # noqa: E402
from docker_fixture import build_local_images, free_port, remove_cluster_containers  # noqa: E402

from controlplane.model import DEFAULT_PIDS_LIMIT, SECRET_REDACTED  # noqa: E402

pytestmark = pytest.mark.docker

VALUE = f"cp-secret-{uuid.uuid4().hex}"
PROXY_IMAGE = "registry.invalid/cp-nginx:admitted"
ADDRESS = "127.0.1.61"
T = TypeVar("T")


class Cluster:
    def __init__(self, api: ApiServer, agent_log: Path, cluster: str) -> None:
        self.api = api
        self.agent_log = agent_log
        self.cluster = cluster

    def call(self, method: str, path: str, *, token: str = "admin-token", body: Any = None,
             content_type: str = "application/json") -> tuple[int, str]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.api.url + path, data=data, method=method, headers={
            "Authorization": f"Bearer {token}", "Content-Type": content_type})
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    def json(self, method: str, path: str, **kw: Any) -> tuple[int, Any]:
        code, text = self.call(method, path, **kw)
        return code, json.loads(text)

    def cpctl(self, *args: str, token: str = "admin-token") -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "controlplane.cli.main", *args], env=self.api.env(token),
                              capture_output=True, text=True, timeout=60)

    def instance(self, name: str) -> dict[str, Any]:
        code, obj = self.json("GET", f"/api/v1/instances/{name}")
        return obj if code == 200 else {}

    def wait_for(self, check: Callable[[], T], *, timeout: float = 60.0, what: str = "condition") -> T:
        deadline = time.monotonic() + timeout
        last: T | None = None
        while time.monotonic() < deadline:
            last = check()
            if last:
                return last
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}; last: {last!r}\n--- agent\n{self.agent_text()[-3000:]}")

    def agent_text(self) -> str:
        return self.agent_log.read_text(errors="replace") if self.agent_log.exists() else ""

    def container_of(self, instance: str) -> str:
        return str(self.wait_for(lambda: (self.instance(instance).get("status") or {}).get("containerID"),
                                 what=f"{instance} to have a container"))


def docker(*args: str) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True, timeout=30).stdout


@pytest.fixture(scope="module")
def cluster(etcd: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    build_local_images()
    folder = tmp_path_factory.mktemp("secrets")
    name = f"tsec{uuid.uuid4().hex[:8]}"
    with ApiServer(etcd.url, f"/cp-test-secrets/{name}",
                   extra_args=["--proxy-image", PROXY_IMAGE, "--log-level", "DEBUG"]) as api:
        log_path = folder / "agent.log"
        with open(log_path, "ab") as log:
            agent = subprocess.Popen([
                sys.executable, "-m", "agent.main", "--server", api.url, "--token", "node-m1-token",
                "--machine", "m1", "--address", ADDRESS, "--cluster", name, "--agent-port", str(free_port()),
                "--state-dir", str(folder / "state"), "--cpu", "2", "--memory-mb", "4096", "--log-level", "DEBUG",
            ], stdout=log, stderr=subprocess.STDOUT)
        c = Cluster(api, log_path, name)
        try:
            c.wait_for(lambda: any(m["status"]["state"] == "Ready"
                                   for m in c.json("GET", "/api/v1/machines")[1]["items"]), what="m1 Ready")
            yield c
        finally:
            agent.terminate()
            try:
                agent.wait(10)
            except subprocess.TimeoutExpired:
                agent.kill()
            remove_cluster_containers(name)


def unit(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Unit", "metadata": {"name": name},
            "spec": {"image": "local/web:latest", "command": ["sleep", "3600"], "replicas": 1, **spec}}


def test_secret_env_reaches_the_container_which_runs_hardened_as_its_user(cluster: Cluster) -> None:
    made = cluster.cpctl("create", "secret", "db", "--from-literal", f"password={VALUE}", "--from-literal", "user=app")
    assert made.returncode == 0 and made.stdout.strip() == "secret/db created", made
    assert VALUE not in made.stdout + made.stderr
    code, body = cluster.json("POST", "/api/v1/units", body=unit(
        "app", env={"MODE": "plain"}, secretEnv={"DB_PASSWORD": "db/password"}, user="65534"))
    assert code == 201, body
    assert body["spec"]["pidsLimit"] == DEFAULT_PIDS_LIMIT  # admitted with the server's default
    cid = cluster.container_of("app-0")
    env = docker("exec", cid, "env").splitlines()
    assert f"DB_PASSWORD={VALUE}" in env and "MODE=plain" in env and "CP_INSTANCE=app-0" in env
    assert docker("exec", cid, "id", "-u").strip() == "65534"
    host = json.loads(docker("inspect", cid))[0]["HostConfig"]
    assert host["SecurityOpt"] == ["no-new-privileges"] and host["CapDrop"] == ["NET_RAW"]
    assert host["PidsLimit"] == DEFAULT_PIDS_LIMIT
    assert cluster.wait_for(lambda: cluster.instance("app-0")["status"]["phase"] == "Running", what="app-0 Running")


def test_viewers_see_no_values_and_other_nodes_no_secret(cluster: Cluster) -> None:
    assert cluster.json("POST", "/api/v1/secrets", body={"kind": "Secret", "metadata": {"name": "unused"},
                                                          "data": {"k": "not-used-by-m1"}})[0] == 201
    code, obj = cluster.json("GET", "/api/v1/secrets/db", token="viewer-token")
    assert code == 200 and obj["data"] == {"password": SECRET_REDACTED, "user": SECRET_REDACTED}
    for path in ("/api/v1/secrets", "/api/v1/secrets?watch=1&timeoutSeconds=1", "/api/v1/secrets/db"):
        code, text = cluster.call("GET", path, token="viewer-token")
        assert code == 200 and VALUE not in text and SECRET_REDACTED in text and '"password"' in text, path
    assert cluster.call("GET", f"/api/v1/secrets?fieldSelector=data.password={VALUE}", token="viewer-token")[0] == 403
    assert cluster.call("GET", "/api/v1/secrets?fieldSelector=metadata.name=db", token="viewer-token")[0] == 200
    assert cluster.call("DELETE", "/api/v1/secrets/db", token="viewer-token")[0] == 403

    code, obj = cluster.json("GET", "/api/v1/secrets/db", token="node-m1-token")  # app-0 on m1 uses it
    assert code == 200 and obj["data"]["password"] == VALUE
    for token, path in (("node-m2-token", "/api/v1/secrets/db"), ("node-m1-token", "/api/v1/secrets/unused"),
                        ("node-m1-token", "/api/v1/secrets"), ("node-m1-token", "/api/v1/secrets?watch=1"),
                        ("node-m1-token", "/api/v1/secrets/absent")):
        assert cluster.call("GET", path, token=token)[0] == 403, (token, path)
    assert cluster.json("GET", "/api/v1/secrets/db")[1]["data"]["password"] == VALUE  # admin

    table = cluster.cpctl("get", "sec", "-o", "wide")
    assert table.returncode == 0 and "db" in table.stdout and "password,user" in table.stdout, table
    assert VALUE not in table.stdout
    viewed = cluster.cpctl("get", "secret", "db", "-o", "json", token="viewer-token")
    assert json.loads(viewed.stdout)["data"]["password"] == SECRET_REDACTED
    described = cluster.cpctl("describe", "secret", "db")
    assert described.returncode == 0 and f"password: {len(VALUE)} bytes" in described.stdout
    assert VALUE not in described.stdout


def test_missing_secret_is_a_clear_reason_said_once(cluster: Cluster) -> None:
    assert cluster.json("POST", "/api/v1/units", body=unit("broken", secretEnv={"X": "nope/key"}))[0] == 201

    def reported() -> dict[str, Any]:
        status = cluster.instance("broken-0").get("status") or {}
        return status if status.get("reason") == "CreateContainerConfigError" else {}

    status = cluster.wait_for(reported, what="broken-0 CreateContainerConfigError")
    assert status["phase"] == "Failed" and status["message"] == 'secret "nope" not found (wanted by X)'
    time.sleep(4)  # several retries (1 s, 2 s ...) and resyncs later
    said = [line for line in cluster.agent_text().splitlines() if "broken-0 cannot start" in line]
    assert len(said) == 1, said
    assert cluster.json("POST", "/api/v1/secrets", body={"kind": "Secret", "metadata": {"name": "nope"},
                                                          "data": {"key": "now-here"}})[0] == 201
    cid = cluster.wait_for(lambda: (cluster.instance("broken-0").get("status") or {}).get("containerID"),
                           timeout=40, what="broken-0 started once its secret exists")
    assert "X=now-here" in docker("exec", str(cid), "env").splitlines()


def test_a_probe_printing_the_environment_leaks_nothing(cluster: Cluster) -> None:
    # ready for two probes (so the agent logs the change), then failing with the value in its output
    script = ('n=$(cat /tmp/n 2>/dev/null || echo 0); echo $((n + 1)) > /tmp/n; [ "$n" -lt 2 ] && exit 0; '
              'echo "DB_PASSWORD=$DB_PASSWORD"; exit 1')
    probe = {"exec": {"command": ["sh", "-c", script]}, "periodSeconds": 0.5, "timeoutSeconds": 10}
    assert cluster.json("POST", "/api/v1/units", body=unit(
        "leaky", secretEnv={"DB_PASSWORD": "db/password"}, health=probe))[0] == 201

    def probed() -> str:
        message = str((cluster.instance("leaky-0").get("status") or {}).get("message") or "")
        return message if "exit 1" in message else ""

    message = cluster.wait_for(probed, what="leaky-0's failing probe reported")
    assert "DB_PASSWORD=" + SECRET_REDACTED in message and VALUE not in message


def test_the_value_is_in_no_log_line_and_no_event(cluster: Cluster) -> None:
    cluster.wait_for(lambda: "leaky-0 is not ready" in cluster.agent_text(), what="the probe failure logged")
    agent_log, api_log = cluster.agent_text(), cluster.api.log_path.read_text(errors="replace")
    assert "DEBUG" in agent_log and "DB_PASSWORD=" + SECRET_REDACTED in agent_log  # it would have been there
    assert VALUE not in agent_log and VALUE not in api_log
    code, text = cluster.call("GET", "/api/v1/events")
    assert code == 200 and VALUE not in text
    code, text = cluster.call("GET", "/api/v1/instances", token="viewer-token")
    assert code == 200 and VALUE not in text


def test_admission_proxy_image_and_pids_bound(cluster: Cluster) -> None:
    lb = {"apiVersion": "v1", "kind": "Unit", "metadata": {"name": "lb"},
          "spec": {"replicas": 0, "proxy": {"kind": "loadbalancer", "target": "app"}}}
    code, created = cluster.json("POST", "/api/v1/units", body=lb)
    assert code == 201 and created["spec"]["image"] == PROXY_IMAGE, created
    code, patched = cluster.json("PATCH", "/api/v1/units/lb", body={"metadata": {"labels": {"a": "b"}}},
                                 content_type="application/merge-patch+json")
    assert code == 200 and patched["spec"]["image"] == PROXY_IMAGE
    named = {**lb, "metadata": {"name": "lb2"}, "spec": {**lb["spec"], "image": "local/nginx:latest"}}
    assert cluster.json("POST", "/api/v1/units", body=named)[1]["spec"]["image"] == "local/nginx:latest"
    manifest = Path(cluster.api.dir) / "lb3.json"
    manifest.write_text(json.dumps({**lb, "metadata": {"name": "lb3"}}))
    outcomes = [cluster.cpctl("apply", "-f", str(manifest), "--no-wait").stdout.strip() for _ in range(2)]
    assert outcomes == ["unit/lb3 created", "unit/lb3 unchanged"]

    code, refused = cluster.json("POST", "/api/v1/units", body=unit("greedy", pidsLimit=4097))
    assert code == 422 and [c["field"] for c in refused["details"]["causes"]] == ["spec.pidsLimit"]
    code, refused = cluster.json("POST", "/api/v1/units", body=unit("escalating", allowPrivilegeEscalation=True))
    assert code == 422 and refused["details"]["causes"][0]["field"] == "spec.allowPrivilegeEscalation"
    assert cluster.json("POST", "/api/v1/units", body=unit("modest", pidsLimit=4096, replicas=0))[0] == 201
