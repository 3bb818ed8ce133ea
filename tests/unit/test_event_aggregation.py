"""Events on the good path: the aggregation decision (pure), the node policy's recent bindings, the
agent's bounded sender, and the executor's kubelet-style lifecycle Events against FakeRuntime."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agent.events import EventSender
from agent.executor import Executor
from agent.reconcile import DesiredInstance
from agent.runtime.fake import FakeRuntime
from controlplane.api.auth import User
from controlplane.api.node_policy import RecentBindings, check_node_event
from controlplane.errors import Forbidden, Invalid, TooManyRequests
from controlplane.events import Recording, bumped, correlate, stamped
from controlplane.model import AGENT_EVENT_REASONS, event_object

T0, T1, T2, T3 = ("2026-01-01T10:00:00.000000Z", "2026-01-01T10:05:00.000000Z",
                  "2026-01-01T10:09:00.000000Z", "2026-01-01T10:20:00.000000Z")


def ev(name: str, *, obj: str = "web-0", reason: str = "Started", message: str = "Started container abc",
       type_: str = "Normal", last: str = T1, kind: str = "Instance") -> dict[str, Any]:
    return {"metadata": {"name": name}, "type": type_, "reason": reason, "message": message,
            "involvedObject": {"kind": kind, "name": obj}, "timestamp": T0, "lastTimestamp": last, "count": 1}


NEW = ev("new", last=T3)
# (existing events, since, limit, expected recording)
CASES: list[tuple[str, list[dict[str, Any]], str, int, Recording]] = [
    ("nothing yet: create", [], T0, 30, Recording()),
    ("a recent twin: bump it", [ev("a")], T0, 30, Recording(increment="a")),
    ("the twin is older than the window: create", [ev("a", last=T0)], T1.replace("05", "06"), 30, Recording()),
    ("twin seen exactly at the window's start still counts", [ev("a", last=T1)], T1, 30, Recording(increment="a")),
    ("several twins: the latest", [ev("a", last=T1), ev("b", last=T2)], T0, 30, Recording(increment="b")),
    ("another message is another event", [ev("a", message="Started container def")], T0, 30, Recording()),
    ("another reason", [ev("a", reason="Created")], T0, 30, Recording()),
    ("another type", [ev("a", type_="Warning")], T0, 30, Recording()),
    ("another object", [ev("a", obj="web-1")], T0, 30, Recording()),
    ("another kind, same name", [ev("a", kind="Unit")], T0, 30, Recording()),
    ("at the limit: the oldest sibling goes",
     [ev("a", message="1", last=T2), ev("b", message="2", last=T0), ev("c", obj="web-1", last=T0)], T0, 2,
     Recording(evict=("b",))),
    ("far over the limit: the oldest ones go, by last seen then name",
     [ev("d", message="1", last=T1), ev("c", message="2", last=T0), ev("b", message="3", last=T0)], T0, 1,
     Recording(evict=("b", "c", "d"))),
    ("a twin is bumped even at the limit", [ev("a"), ev("b", message="x")], T0, 2, Recording(increment="a")),
]


@pytest.mark.parametrize(("why", "existing", "since", "limit", "expected"), CASES, ids=[c[0] for c in CASES])
def test_correlate(why: str, existing: list[dict[str, Any]], since: str, limit: int, expected: Recording) -> None:
    assert correlate(existing, NEW, since=since, limit=limit) == expected


def test_an_event_without_last_timestamp_is_last_seen_at_its_timestamp() -> None:
    old = ev("a")
    del old["lastTimestamp"]
    assert correlate([old], NEW, since=T0) == Recording(increment="a")
    assert correlate([old], NEW, since=T1) == Recording()


def test_bumped_and_stamped() -> None:
    assert bumped(ev("a"), now=T3) == {**ev("a"), "count": 2, "lastTimestamp": T3}
    assert bumped({**ev("a"), "count": 7}, now=T3)["count"] == 8
    fresh = {**ev("a"), "timestamp": "", "lastTimestamp": ""}
    assert stamped(fresh, now=T3)["timestamp"] == T3 and stamped(fresh, now=T3)["lastTimestamp"] == T3
    assert stamped({**fresh, "timestamp": T0}, now=T3)["lastTimestamp"] == T0


# ---- the node policy: events about instances bound to the node lately -------------------------

NODE = User("m1-agent", "node", machine="m1")


def inst(name: str, machine: str) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"machine": machine}}


def test_recent_bindings_remember_deleted_and_moved_instances_for_a_while() -> None:
    now = [100.0]
    bindings = RecentBindings(ttl=60, size=3, clock=lambda: now[0])
    bindings.observe(inst("web-0", "m1"), None)  # bound (ADDED)
    bindings.observe(inst("web-1", "m2"), inst("web-1", "m1"))  # moved m1 -> m2 (MODIFIED)
    bindings.observe(inst("web-2", ""), None)  # pending: nothing to remember
    assert bindings.was_bound("web-0", "m1") and bindings.was_bound("web-1", "m1")
    assert bindings.was_bound("web-1", "m2") and not bindings.was_bound("web-0", "m2")
    assert not bindings.was_bound("web-2", "m1")
    now[0] = 161.0
    assert not bindings.was_bound("web-0", "m1")
    bindings.observe(inst("a", "m1"), inst("b", "m1"))
    assert len(bindings.seen) == 3 and ("web-0", "m1") not in bindings.seen  # the oldest pair dropped


def killing(instance: str) -> dict[str, Any]:
    return dict(event_object("Instance", instance, type_="Normal", reason="Killing", message="Stopping container"))


def test_a_node_may_report_about_an_instance_it_was_bound_to_lately_only() -> None:
    bindings = RecentBindings()
    bindings.observe(inst("web-0", "m1"))
    bindings.observe(inst("web-1", "m2"))
    gone: dict[str, str] = {}
    check_node_event(NODE, killing("web-0"), bound_machine=gone.get, was_bound=bindings.was_bound)
    for instance in ("web-1", "never-0"):
        with pytest.raises(Forbidden):
            check_node_event(NODE, killing(instance), bound_machine=gone.get, was_bound=bindings.was_bound)


@pytest.mark.parametrize("reason", ["Pulled", "Created", "Started", "Ready", "Killing"])
def test_the_lifecycle_reasons_are_the_agents_and_scheduled_is_not(reason: str) -> None:
    assert reason in AGENT_EVENT_REASONS and "Scheduled" not in AGENT_EVENT_REASONS
    obj = dict(event_object("Instance", "web-0", type_="Normal", reason=reason, message="x"))
    check_node_event(NODE, obj, bound_machine={"web-0": "m1"}.get)
    with pytest.raises(Invalid):
        check_node_event(NODE, {**obj, "reason": "Scheduled"}, bound_machine={"web-0": "m1"}.get)


# ---- the agent's sender -----------------------------------------------------------------------

class FakeClient:
    def __init__(self, *, busy: int = 0, fail: Exception | None = None) -> None:
        self.created: list[dict[str, Any]] = []
        self.busy = busy
        self.fail = fail

    async def create(self, resource: str, obj: dict[str, Any]) -> dict[str, Any]:
        assert resource == "events"
        if self.busy:
            self.busy -= 1
            raise TooManyRequests("slow down")
        if self.fail is not None:
            raise self.fail
        self.created.append(obj)
        return obj


async def no_sleep(_seconds: float) -> None:
    await asyncio.sleep(0)


async def test_record_never_waits_and_a_full_queue_drops() -> None:
    sender = EventSender(FakeClient(), maxsize=2, sleep=no_sleep)  # type: ignore[arg-type]
    for n in range(5):
        sender.record("web-0", "Started", f"Started container {n}")
    assert sender.queue.qsize() == 2 and sender.dropped == 3
    with pytest.raises(ValueError, match="Scheduled"):
        sender.record("web-0", "Scheduled", "not the agent's")


async def test_sender_waits_out_429_and_drops_other_failures() -> None:
    client = FakeClient(busy=3)
    sender = EventSender(client, sleep=no_sleep)  # type: ignore[arg-type]
    sender.record("web-0", "Pulled", "already present")
    sender.record("web-0", "Created", "Created container abc")
    task = asyncio.create_task(sender.run())
    for _ in range(100):
        await asyncio.sleep(0)
    assert [(e["reason"], e["involvedObject"]["name"]) for e in client.created] == [
        ("Pulled", "web-0"), ("Created", "web-0")]
    client.fail = Forbidden("not yours")
    sender.record("web-9", "Killing", "Stopping")
    for _ in range(20):
        await asyncio.sleep(0)
    assert sender.sent == 2 and sender.dropped == 1 and not task.done()
    task.cancel()


# ---- the executor's lifecycle events ----------------------------------------------------------

IMG = "local/web:latest"


def want(name: str = "web-0", image: str = IMG) -> DesiredInstance:
    return DesiredInstance(name=name, unit="web", index=0, machine="m1", image=image, generation=1, epoch=1)


async def test_executor_tells_pulled_created_started_ready_and_killing() -> None:
    told: list[tuple[str, str, str]] = []
    rt = FakeRuntime(images=[IMG], pullable=["local/other:1"])
    ex = Executor(rt, cluster="c1", machine="m1", address="127.0.1.1",
                  on_event=lambda *note: told.append(note))
    await ex.sync([want(), want("api-0", image="local/other:1")])
    by = {(name, reason): message for name, reason, message in told}
    [web_id] = [c for c, spec in rt.specs.items() if spec.env["CP_INSTANCE"] == "web-0"]
    assert by[("web-0", "Pulled")] == f'Container image "{IMG}" already present on machine'
    assert by[("api-0", "Pulled")] == 'Successfully pulled image "local/other:1"'
    assert by[("web-0", "Created")] == f"Created container {web_id[:12]}"
    assert by[("web-0", "Started")] == f"Started container {web_id[:12]}"
    assert by[("web-0", "Ready")] == f"Container {web_id[:12]} is ready"
    assert [r for n, r, _ in told if n == "web-0"] == ["Pulled", "Created", "Started", "Ready"]
    told.clear()
    await ex.sync([want(), want("api-0", image="local/other:1")])
    assert told == []  # adopted, still ready: nothing new
    await ex.sync([want()])
    assert [(n, r) for n, r, _ in told] == [("api-0", "Killing")]
    assert "api-0 is no longer desired on this machine" in told[0][2]
