"""The executor against FakeRuntime: actions applied, statuses in the contract's format."""

from __future__ import annotations

from agent.executor import Executor
from agent.health import Prober, ProbeState
from agent.reconcile import DesiredInstance
from agent.runtime.base import PortMapping
from agent.runtime.fake import FakeRuntime

IMG = "local/web:latest"


def want(name: str = "web-0", **kw: object) -> DesiredInstance:
    options: dict[str, object] = {"unit": "web", "index": 0, "machine": "m1", "image": IMG, "generation": 1, "epoch": 1}
    options.update(kw)
    return DesiredInstance(name=name, **options)  # type: ignore[arg-type]


def setup(**kw: object) -> tuple[FakeRuntime, Executor, list[float]]:
    now = [1000.0]
    rt = FakeRuntime(images=[IMG], pullable=["local/other:1"], clock=lambda: now[0])
    ex = Executor(rt, cluster="c1", machine="m1", address="127.0.1.1", clock=lambda: now[0], **kw)  # type: ignore[arg-type]
    return rt, ex, now


async def test_create_sets_env_labels_ports_and_status() -> None:
    rt, ex, _ = setup()
    result = await ex.sync([want(env={"A": "1", "CP_MACHINE": "spoofed"}, ports=(PortMapping(8080, 0),))])
    status = result.statuses["web-0"]
    [cid] = rt.containers
    spec = rt.specs[cid]
    assert spec.env == {"A": "1", "CP_UNIT": "web", "CP_INSTANCE": "web-0", "CP_MACHINE": "m1"}
    assert spec.labels == {
        "cp.cluster": "c1", "cp.machine": "m1", "cp.instance": "web-0", "cp.unit": "web",
        "cp.generation": "1", "cp.epoch": "1",
    }  # fmt: skip
    assert spec.host_ip == "127.0.1.1" and spec.init and spec.name.startswith("cp-c1-m1-web-0-")
    assert status == {
        "phase": "Running",
        "ready": True,
        "reason": "",
        "message": "",
        "containerID": cid,
        "address": "127.0.1.1",
        "hostPorts": [{"containerPort": 8080, "hostPort": 32768, "protocol": "tcp"}],
        "restarts": 0,
        "exitCode": None,
        "startedAt": "1970-01-01T00:16:40Z",
    }
    # Second sync adopts: nothing is created again.
    again = await ex.sync([want()])
    assert [a.kind for a in again.actions] == ["adopt"] and len(rt.containers) == 1


async def test_pull_missing_image_and_failed_pull() -> None:
    rt, ex, _ = setup()
    result = await ex.sync([want("a-0", image="local/other:1"), want("b-0", image="local/absent:1")])
    assert result.statuses["a-0"]["phase"] == "Running" and ("pull", "local/other:1") in rt.calls
    failed = result.statuses["b-0"]
    assert failed["phase"] == "Failed" and failed["reason"] == "ImagePullFailed"
    assert "local/absent:1" in failed["message"] and failed["containerID"] == ""


async def test_crash_loop_backoff_and_restart_count() -> None:
    rt, ex, now = setup()
    await ex.sync([want()])
    [cid] = rt.containers
    delays = []
    for _ in range(4):
        now[0] += 0.5
        rt.crash(cid)
        result = await ex.sync([want()])
        delay = result.requeue_after
        assert delay is not None
        delays.append(delay)
        status = result.statuses["web-0"]
        assert status["exitCode"] == 1
        now[0] += delay
        result = await ex.sync([want()])
        assert [a.kind for a in result.actions] == ["restart"] and result.statuses["web-0"]["phase"] == "Running"
    assert delays == [1, 2, 4, 8]
    assert status["phase"] == "Failed" and status["reason"] == "CrashLoopBackOff"
    assert result.statuses["web-0"]["restarts"] == 4
    # Never: an exited container is reported, not restarted.
    rt.exit(cid, 0)
    result = await ex.sync([want(restart_policy="Never")])
    assert result.statuses["web-0"]["phase"] == "Stopped" and result.statuses["web-0"]["reason"] == "Completed"


async def test_health_gates_readiness() -> None:
    rt, ex, _ = setup()
    prober = Prober(rt)
    ex.prober = prober
    health = {"http": {"path": "/", "port": 8080}}
    result = await ex.sync([want(ports=(PortMapping(8080, 0),), health=health)])
    status = result.statuses["web-0"]
    assert (status["phase"], status["ready"], status["reason"]) == ("Starting", False, "HealthCheckPending")
    target = prober.targets["web-0"]
    assert (target.host, target.port) == ("127.0.1.1", 32768)
    prober.set_state("web-0", ProbeState(ready=True, successes=1, ever_ready=True))
    status = (await ex.sync([want(ports=(PortMapping(8080, 0),), health=health)])).statuses["web-0"]
    assert (status["phase"], status["ready"]) == ("Running", True)
    prober.set_state("web-0", ProbeState(ready=False, failures=3, ever_ready=True, last_message="GET: 503"))
    status = (await ex.sync([want(ports=(PortMapping(8080, 0),), health=health)])).statuses["web-0"]
    assert (status["phase"], status["ready"], status["reason"], status["message"]) == (
        "Running", False, "Unhealthy", "GET: 503"
    )  # fmt: skip


async def test_duplicates_and_undesired_are_removed() -> None:
    rt, ex, _ = setup()
    await ex.sync([want()])
    other = Executor(rt, cluster="c1", machine="m1", address="127.0.1.1")
    # A second copy appears (say, a lost create response retried): one of them goes.
    await rt.create_and_start(other.container_spec(want()))
    result = await ex.sync([want()])
    assert [a.kind for a in result.actions] == ["stop", "remove", "adopt"] and len(rt.containers) == 1
    await ex.sync([])
    assert rt.containers == {} and ex.backoff == {}
