"""The agent end to end: a real cp-apiserver, real cp-agents, real Docker (and a real sshd).

One module-scoped cluster of three machines saves the start-up cost:

- m1, m2 talk to the API directly;
- m3 talks to it through `CutProxy`, a small TCP proxy this test controls, so it can be cut off
  honestly (its packets go nowhere, like a partition: no connection refused, no RST);
- m4 (started by the SSH test) drives Docker over SSH through a real OpenSSH server.

The tests run in file order and each leaves the cluster as it found it (units deleted).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cluster_fixture import LocalCluster  # noqa: E402
from docker_fixture import sshd  # noqa: E402

pytestmark = pytest.mark.docker

MACHINE_TTL = 5  # the default
FENCE_AFTER = 2.0


class CutProxy:
    """A TCP proxy on 127.0.0.1 run in a thread; `cut()` makes it a black hole (connections stay
    open, bytes are dropped both ways, new connections are accepted and ignored), `heal()`
    forwards again."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.loop = asyncio.new_event_loop()
        self.cut_off = False
        self.port = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._server: asyncio.Server | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._start())
        self._ready.set()
        self.loop.run_forever()

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                if self.cut_off:
                    continue  # dropped on the floor
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        except asyncio.CancelledError:
            writer.close()
            raise
        finally:
            if not self.cut_off:  # a partition sends no FIN either
                writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut_off:
            with contextlib.suppress(ConnectionError, OSError):
                while await reader.read(65536):
                    pass
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    def start(self) -> CutProxy:
        self._thread.start()
        self._ready.wait(5)
        return self

    def cut(self) -> None:
        self.cut_off = True

    def heal(self) -> None:
        self.cut_off = False

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


@pytest.fixture(scope="module")
def cluster(etcd: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    prefix = f"/cp-e2e-agent/{time.monotonic_ns()}"
    with LocalCluster(etcd.url, prefix, machines=2, machine_ttl=MACHINE_TTL) as c:
        proxy = CutProxy("127.0.0.1", c.api.port).start()
        c.proxy = proxy  # type: ignore[attr-defined]
        c.start_agent("m3", extra=["--server", f"http://127.0.0.1:{proxy.port}", "--fence-after", str(FENCE_AFTER)])
        c.names.append("m3")
        c.wait_for(lambda: machine_state(c, "m3") == "Ready", what="m3 Ready")
        try:
            yield c
        finally:
            proxy.close()


# ---- helpers ---------------------------------------------------------------------------------
def machine_state(c: LocalCluster, name: str) -> str | None:
    for m in c.api_get("machines")["items"]:
        if m["metadata"]["name"] == name:
            return str(m["status"].get("state"))
    return None


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    return proc.stdout


def running_ready(c: LocalCluster, unit: str, n: int) -> list[dict[str, Any]] | None:
    items = c.instances(unit)
    good = [i for i in items if i["status"].get("phase") == "Running" and i["status"].get("ready")]
    return items if len(items) == n and len(good) == n else None


def by_instance(c: LocalCluster) -> dict[str, list[dict[str, Any]]]:
    result: dict[str, list[dict[str, Any]]] = {}
    for cont in c.containers():
        labels = dict(kv.split("=", 1) for kv in cont["Labels"].split(",") if "=" in kv)
        result.setdefault(labels.get("cp.instance", "?"), []).append({**cont, "labels": labels})
    return result


def http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=3) as resp:
        return resp.read().decode()


def delete_unit(c: LocalCluster, unit: str) -> None:
    c.cpctl("delete", "unit", unit)
    c.wait_for(lambda: not [x for x in c.containers() if f"cp.unit={unit}," in x["Labels"] + ","],
               timeout=30, what=f"{unit}'s containers gone")


# ---- tests -----------------------------------------------------------------------------------
def test_run_two_replicas_answer_and_log(cluster: LocalCluster) -> None:
    c = cluster
    ok(c.cpctl("cordon", "m3"))  # m3 is kept for the fencing test
    ok(c.cpctl("run", "web", "--image", "local/web:latest", "--replicas", "2", "--port", "8080",
               "--health-http", "/", "--timeout", "60",
               "--", "sh", "-c", "echo hello-from-$CP_INSTANCE; exec /bin/cp-web"))
    items = c.wait_for(lambda: running_ready(c, "web", 2), what="web 2/2 Running and ready")
    machines = {i["spec"]["machine"] for i in items}
    assert machines == {"m1", "m2"}
    for inst in items:
        name, status = inst["metadata"]["name"], inst["status"]
        port = next(p["hostPort"] for p in status["hostPorts"] if p["containerPort"] == 8080)
        assert status["address"] == c.address(inst["spec"]["machine"])
        page = http_get(f"http://{status['address']}:{port}/")
        assert f"instance={name} " in page and f"machine={inst['spec']['machine']}" in page
    containers = by_instance(c)
    assert sorted(containers) == ["web-0", "web-1"] and all(len(v) == 1 for v in containers.values())
    assert c.wait_for(lambda: "hello-from-web-0" in c.cpctl("logs", "web-0").stdout, timeout=10, what="log line")
    logs = c.cpctl("logs", "web-1", "--tail", "5")
    assert logs.returncode == 0 and "hello-from-web-1" in logs.stdout and "web-0" not in logs.stdout


def test_agent_restart_adopts_and_recreates_removed(cluster: LocalCluster) -> None:
    c = cluster
    before = {name: [x["ID"] for x in conts] for name, conts in by_instance(c).items()}
    machine = next(i["spec"]["machine"] for i in c.instances("web") if i["metadata"]["name"] == "web-0")
    c.kill_agent(machine)  # SIGKILL: no cleanup at all
    c.start_agent(machine)
    # The restarted agent has synced when it reports again; then it must have adopted, not recreated.
    log = c.dir / f"agent-{machine}.log"
    c.wait_for(lambda: log.read_text().count("cp-agent " + c.cluster) >= 2, what="agent restarted")
    time.sleep(3)  # several sync rounds (watch, docker events, resync)
    after = {name: [x["ID"] for x in conts] for name, conts in by_instance(c).items()}
    assert after == before, "a restarted agent recreated or duplicated containers"
    assert running_ready(c, "web", 2)
    # A container removed behind the agent's back comes back (a new one, on the same machine).
    old = before["web-0"][0]
    subprocess.run(["docker", "rm", "-f", old], check=True, capture_output=True)
    c.wait_for(lambda: (ids := [x["ID"] for x in by_instance(c).get("web-0", [])]) and old not in ids and ids,
               timeout=20, what="web-0 recreated")
    items = c.wait_for(lambda: running_ready(c, "web", 2), timeout=20, what="web 2/2 again")
    web0 = next(i for i in items if i["metadata"]["name"] == "web-0")
    assert web0["spec"]["machine"] == machine and not web0["status"]["containerID"].startswith(old)
    assert all(len(v) == 1 for v in by_instance(c).values())
    assert by_instance(c)["web-1"][0]["ID"] == before["web-1"][0]


def test_crash_loop_backs_off(cluster: LocalCluster) -> None:
    c = cluster
    ok(c.cpctl("run", "crash", "--image", "local/web:latest", "--replicas", "1", "--no-wait",
               "--", "sh", "-c", "exit 1"))

    def status() -> dict[str, Any]:
        items = c.instances("crash")
        return items[0]["status"] if items else {}

    start = time.monotonic()
    st = c.wait_for(lambda: (s := status()).get("reason") == "CrashLoopBackOff" and s, timeout=20,
                    what="CrashLoopBackOff")
    assert "back-off" in st["message"] and st["phase"] == "Failed", st
    time.sleep(max(0.0, 10 - (time.monotonic() - start)))
    st = status()
    elapsed = time.monotonic() - start
    # 1 s, 2 s, 4 s, 8 s ... between restarts: about log2(elapsed) restarts, never one per second.
    assert 2 <= st["restarts"] <= 5, (elapsed, st)
    assert st["reason"] == "CrashLoopBackOff" and st["exitCode"] == 1, st
    assert len(by_instance(c).get("crash-0", [])) == 1  # restarted in place, not recreated
    delete_unit(c, "crash")


def test_cut_off_machine_fences_before_rescheduling(cluster: LocalCluster) -> None:
    c = cluster
    proxy: CutProxy = c.proxy  # type: ignore[attr-defined]
    ok(c.cpctl("uncordon", "m3"))
    ok(c.cpctl("cordon", "m1"))
    ok(c.cpctl("cordon", "m2"))
    ok(c.cpctl("run", "lone", "--image", "local/web:latest", "--replicas", "1", "--port", "8080",
               "--health-http", "/", "--timeout", "60"))
    ok(c.cpctl("uncordon", "m1"))
    ok(c.cpctl("uncordon", "m2"))
    (inst,) = c.wait_for(lambda: running_ready(c, "lone", 1), what="lone on m3")
    assert inst["spec"]["machine"] == "m3"
    assert [x for x in by_instance(c)["lone-0"] if x["labels"]["cp.machine"] == "m3"]

    proxy.cut()
    cut_at = time.monotonic()
    fenced_at = replaced_at = None
    while time.monotonic() - cut_at < MACHINE_TTL + 15:
        conts = by_instance(c).get("lone-0", [])
        on_m3 = [x for x in conts if x["labels"]["cp.machine"] == "m3" and x["State"] == "running"]
        elsewhere = [x for x in conts if x["labels"]["cp.machine"] != "m3"]
        now = time.monotonic() - cut_at
        if fenced_at is None and not on_m3:
            fenced_at = now
        if replaced_at is None and elsewhere:
            replaced_at = now
        if fenced_at is not None and replaced_at is not None:
            break
        time.sleep(0.1)
    assert fenced_at is not None, f"m3 kept running its container after the cut\n{c.logs()}"
    assert fenced_at <= FENCE_AFTER + 2.5, fenced_at
    assert replaced_at is not None, "no replacement elsewhere"
    assert fenced_at < replaced_at, (fenced_at, replaced_at)
    log = (c.dir / "agent-m3.log").read_text()
    assert "stopping this machine's instances" in log

    # Heal: m3 comes back, does not resurrect its old copy, and lone-0 keeps exactly one container.
    proxy.heal()
    c.wait_for(lambda: machine_state(c, "m3") == "Ready", timeout=20, what="m3 Ready again")
    c.wait_for(lambda: "unfencing" in (c.dir / "agent-m3.log").read_text(), timeout=10, what="m3 unfenced")
    time.sleep(2)
    conts = by_instance(c).get("lone-0", [])
    assert len(conts) == 1 and conts[0]["labels"]["cp.machine"] != "m3", conts
    delete_unit(c, "lone")


def test_agent_over_ssh(cluster: LocalCluster, tmp_path: Path) -> None:
    c = cluster
    with sshd(tmp_path / "sshd") as ssh:
        # A wrong host key: the agent refuses to drive that Docker and exits non-zero, saying why.
        bad = subprocess.run(
            [sys.executable, "-m", "agent.main", "--server", c.api.url, "--token", "node-m5-token",
             "--machine", "m5", "--address", "127.0.1.5", "--cluster", c.cluster, "--agent-port", "17105",
             "--state-dir", str(c.dir / "state"), "--docker", ssh.url,
             "--known-hosts", str(ssh.wrong_known_hosts), "--ssh-key", str(ssh.client_key)],
            capture_output=True, text=True, timeout=60,
        )
        assert bad.returncode != 0
        assert re.search(r"host key", bad.stderr, re.I), bad.stderr

        c.start_agent("m4", extra=["--docker", ssh.url, "--known-hosts", str(ssh.known_hosts),
                                   "--ssh-key", str(ssh.client_key)])
        c.names.append("m4")
        try:
            c.wait_for(lambda: machine_state(c, "m4") == "Ready", timeout=30, what="m4 Ready")
            ok(c.cpctl("run", "sshweb", "--image", "local/web:latest", "--replicas", "1", "--port", "8080",
                       "--health-http", "/", "--machine", "m4", "--timeout", "60",
                       "--", "sh", "-c", "echo hello-over-ssh-$CP_INSTANCE; exec /bin/cp-web"))
            (inst,) = c.wait_for(lambda: running_ready(c, "sshweb", 1), what="sshweb Running")
            status = inst["status"]
            port = next(p["hostPort"] for p in status["hostPorts"] if p["containerPort"] == 8080)
            assert status["address"] == "127.0.1.4"
            assert "instance=sshweb-0 " in http_get(f"http://127.0.1.4:{port}/")
            assert c.wait_for(lambda: "hello-over-ssh-sshweb-0" in c.cpctl("logs", "sshweb-0").stdout,
                              timeout=10, what="log over ssh")
            assert "Accepted publickey" in (tmp_path / "sshd" / "sshd.log").read_text()
            delete_unit(c, "sshweb")
        finally:
            c.kill_agent("m4")
