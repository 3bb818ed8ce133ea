"""Table tests of the agent's pure reconciler: exact action lists, reasons included."""

from __future__ import annotations

from dataclasses import replace

import pytest

from agent.reconcile import (
    Action,
    BackoffState,
    DesiredInstance,
    backoff_delay,
    container_labels,
    plan,
)
from agent.runtime.base import Container, ContainerState, PortMapping

NOW = 10_000.0


def want(name: str = "web-0", *, generation: int = 1, epoch: int = 1, policy: str = "Always") -> DesiredInstance:
    unit, _, index = name.rpartition("-")
    return DesiredInstance(
        name=name,
        unit=unit,
        index=int(index),
        machine="m1",
        image="local/web:latest",
        generation=generation,
        epoch=epoch,
        restart_policy=policy,  # type: ignore[arg-type]
    )


def box(
    cid: str,
    instance: str | None = "web-0",
    *,
    state: ContainerState = "running",
    generation: int = 1,
    epoch: int = 1,
    exit_code: int | None = None,
    started_at: float | None = NOW - 100,
    finished_at: float | None = None,
) -> Container:
    labels = {"cp.cluster": "c1", "cp.machine": "m1"}
    if instance is not None:
        labels.update(container_labels(want(instance, generation=generation, epoch=epoch), cluster="c1"))
    return Container(
        id=cid,
        name=f"cp-{cid}",
        labels=labels,
        state=state,
        exit_code=exit_code,
        started_at=started_at,
        finished_at=finished_at,
    )


def exited(cid: str, code: int, *, ran: float = 0.5, ago: float = 0.0, **kw: object) -> Container:
    return box(
        cid, state="exited", exit_code=code, started_at=NOW - ago - ran, finished_at=NOW - ago, **kw  # type: ignore[arg-type]
    )


def summary(actions: list[Action]) -> list[tuple[str, str, str | None, str]]:
    return [(a.kind, a.instance, a.container_id, a.reason) for a in actions]


CASES = [
    pytest.param([want()], [], {}, [("create", "web-0", None, "no container for instance web-0")], id="missing"),
    pytest.param(
        [want()],
        [box("aaa")],
        {},
        [("adopt", "web-0", "aaa", "container running with generation 1 epoch 1")],
        id="adopt-running",
    ),
    pytest.param(
        [],
        [box("aaa")],
        {},
        [
            ("stop", "web-0", "aaa", "instance web-0 is no longer desired on this machine"),
            ("remove", "web-0", "aaa", "instance web-0 is no longer desired on this machine"),
        ],
        id="undesired-running",
    ),
    pytest.param(
        [],
        [exited("aaa", 0)],
        {},
        [("remove", "web-0", "aaa", "instance web-0 is no longer desired on this machine")],
        id="undesired-exited",
    ),
    pytest.param(
        [want(generation=2)],
        [box("aaa", generation=1)],
        {},
        [
            ("stop", "web-0", "aaa", "container has generation 1 epoch 1; want generation 2 epoch 1"),
            ("remove", "web-0", "aaa", "container has generation 1 epoch 1; want generation 2 epoch 1"),
            ("create", "web-0", None, "no container for instance web-0"),
        ],
        id="older-generation",
    ),
    pytest.param(
        [want(epoch=3)],
        [box("aaa", epoch=2)],
        {},
        [
            ("stop", "web-0", "aaa", "container has generation 1 epoch 2; want generation 1 epoch 3"),
            ("remove", "web-0", "aaa", "container has generation 1 epoch 2; want generation 1 epoch 3"),
            ("create", "web-0", None, "no container for instance web-0"),
        ],
        id="older-epoch",
    ),
    pytest.param(
        [want()],
        [box("bbb", started_at=NOW - 5), box("aaa", started_at=NOW - 50)],
        {},
        [
            ("stop", "web-0", "bbb", "duplicate container for instance web-0; keeping aaa"),
            ("remove", "web-0", "bbb", "duplicate container for instance web-0; keeping aaa"),
            ("adopt", "web-0", "aaa", "container running with generation 1 epoch 1"),
        ],
        id="duplicate-keeps-oldest-running",
    ),
    pytest.param(
        [want()],
        [exited("aaa", 1, ago=100), box("bbb")],
        {},
        [
            ("remove", "web-0", "aaa", "duplicate container for instance web-0; keeping bbb"),
            ("adopt", "web-0", "bbb", "container running with generation 1 epoch 1"),
        ],
        id="duplicate-keeps-running-over-exited",
    ),
    pytest.param(
        [want()],
        [box("aaa", state="created", started_at=None)],
        {},
        [("start", "web-0", "aaa", "container created but never started")],
        id="created-not-started",
    ),
    pytest.param(
        [want()],
        [box("zzz", instance=None)],
        {},
        [
            ("stop", "cp-zzz", "zzz", "container carries no cp.instance label"),
            ("remove", "cp-zzz", "zzz", "container carries no cp.instance label"),
            ("create", "web-0", None, "no container for instance web-0"),
        ],
        id="unlabelled",
    ),
    pytest.param(
        [want(policy="Never")],
        [exited("aaa", 1)],
        {},
        [("adopt", "web-0", "aaa", "container exited with code 1; restartPolicy Never: not restarting")],
        id="never",
    ),
    pytest.param(
        [want(policy="OnFailure")],
        [exited("aaa", 0)],
        {},
        [("adopt", "web-0", "aaa", "container exited with code 0; restartPolicy OnFailure: not restarting")],
        id="onfailure-success",
    ),
    pytest.param(
        [want(policy="OnFailure")],
        [exited("aaa", 2, ago=5)],
        {},
        [("restart", "web-0", "aaa", "container exited with code 2; restartPolicy OnFailure: restarting after 1s")],
        id="onfailure-failure",
    ),
    pytest.param(
        [want()],
        [exited("aaa", 0, ago=5)],
        {},
        [("restart", "web-0", "aaa", "container exited with code 0; restartPolicy Always: restarting after 1s")],
        id="always-success",
    ),
    pytest.param(
        [want()],
        [exited("aaa", 1, ago=5)],
        {"web-0": BackoffState(crashes=3, restarts=3)},
        [
            (
                "restart",
                "web-0",
                "aaa",
                "CrashLoopBackOff: container exited with code 1 (4 times in a row); back-off 8s",
            )
        ],
        id="crash-loop",
    ),
    pytest.param(
        [want()],
        [exited("aaa", 1, ran=61, ago=0)],
        {"web-0": BackoffState(crashes=6, restarts=6)},
        [("restart", "web-0", "aaa", "container exited with code 1; restartPolicy Always: restarting after 1s")],
        id="backoff-reset-after-60s-running",
    ),
    pytest.param(
        [want("web-0"), want("web-1")],
        [box("aaa", "web-1"), box("bbb", "old-0")],
        {},
        [
            ("stop", "old-0", "bbb", "instance old-0 is no longer desired on this machine"),
            ("remove", "old-0", "bbb", "instance old-0 is no longer desired on this machine"),
            ("create", "web-0", None, "no container for instance web-0"),
            ("adopt", "web-1", "aaa", "container running with generation 1 epoch 1"),
        ],
        id="several-instances-retirements-first",
    ),
]


@pytest.mark.parametrize(("desired", "actual", "backoff", "expected"), CASES)
def test_plan(
    desired: list[DesiredInstance],
    actual: list[Container],
    backoff: dict[str, BackoffState],
    expected: list[tuple[str, str, str | None, str]],
) -> None:
    assert summary(plan(desired, actual, now=NOW, backoff=backoff)) == expected


@pytest.mark.parametrize(
    ("crashes", "ago", "delay"),
    [(0, 0.0, 1.0), (0, 5.0, 0.0), (1, 0.5, 1.5), (3, 2.0, 6.0), (10, 0.0, 60.0), (10, 60.0, 0.0)],
)
def test_restart_delay_is_remaining_backoff(crashes: int, ago: float, delay: float) -> None:
    [action] = plan(
        [want()], [exited("aaa", 1, ago=ago)], now=NOW, backoff={"web-0": BackoffState(crashes=crashes)}
    )
    assert action.kind == "restart"
    assert action.delay == pytest.approx(delay)
    assert action.crashes == crashes + 1


def test_backoff_doubles_to_cap() -> None:
    assert [backoff_delay(n) for n in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert backoff_delay(1000) == 60


def test_plan_is_pure_and_deterministic() -> None:
    actual = [box("bbb", started_at=NOW - 5), box("aaa", started_at=NOW - 50)]
    backoff: dict[str, BackoffState] = {}
    first = plan([want()], list(reversed(actual)), now=NOW, backoff=backoff)
    assert first == plan([want()], actual, now=NOW, backoff=backoff)
    assert backoff == {}


def test_actions_carry_the_desired_instance() -> None:
    d = want()
    [create] = plan([d], [], now=NOW, backoff={})
    assert create.desired is d
    [adopt] = plan([d], [box("aaa")], now=NOW, backoff={})
    assert adopt.desired is d


def test_desired_from_instance_wire_format() -> None:
    instance = {
        "metadata": {"name": "web-1"},
        "spec": {"unit": "web", "index": 1, "machine": "m2", "epoch": 4, "generation": 7},
    }
    unit = {
        "metadata": {"name": "web"},
        "spec": {
            "image": "local/web:latest",
            "command": ["httpd", "-f", "-p", 8080],
            "env": {"GREETING": "hello"},
            "ports": [{"containerPort": 8080, "hostPort": 0, "protocol": "tcp"}, {"containerPort": 53, "protocol": "udp"}],
            "resources": {"cpu": 0.25, "memoryMB": 64},
            "restartPolicy": "OnFailure",
            "health": {"http": {"path": "/", "port": 8080}},
        },
    }
    d = DesiredInstance.from_instance(instance, unit)
    assert d == DesiredInstance(
        name="web-1",
        unit="web",
        index=1,
        machine="m2",
        image="local/web:latest",
        epoch=4,
        generation=7,
        command=("httpd", "-f", "-p", "8080"),
        env={"GREETING": "hello"},
        ports=(PortMapping(8080, 0, "tcp"), PortMapping(53, 0, "udp")),
        cpu=0.25,
        memory_mb=64,
        restart_policy="OnFailure",
        health={"http": {"path": "/", "port": 8080}},
    )
    # Unit fields may also come inline in the instance spec, and proxy units use a default image.
    inline = {"metadata": {"name": "lb-0"}, "spec": {"unit": "lb", "index": 0, "machine": "m1"}}
    assert DesiredInstance.from_instance(inline, default_image="local/nginx:latest").image == "local/nginx:latest"
    assert replace(d, restart_policy="Always").restart_policy == "Always"


def test_bad_restart_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="restartPolicy"):
        DesiredInstance.from_instance({"metadata": {"name": "x-0"}, "spec": {"restartPolicy": "Sometimes"}})
