"""What a node may write (controlplane/api/node_policy.py, controlplane/addresses.py and the node-reported
fields of schemas.py), as tables: each refusal with its reason."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from controlplane.addresses import address_problem, agent_url, same_address
from controlplane.api.auth import User
from controlplane.api.node_policy import (
    NodeEventLimiter,
    TokenBucket,
    check_node_event,
    check_node_instance_address,
    check_node_labels,
)
from controlplane.errors import Forbidden, Invalid, TooManyRequests
from controlplane.model import AGENT_EVENT_REASONS, event_object
from controlplane.schemas import load_status

ADMIN = User("root", "admin")
NODE = User("node-m1", "node", "m1")
REPO = Path(__file__).resolve().parents[2]

# ---- addresses -----------------------------------------------------------------------------------

GOOD_ADDRESSES = ["10.0.0.5", "127.0.1.3", "192.168.1.1", "::1", "2001:db8::7", "::ffff:10.0.0.1"]
BAD_ADDRESSES = [
    ("host.example.com", "IP address literal"),
    ("localhost", "IP address literal"),
    ("1.2.3.4:80", "IP address literal"),
    ("[::1]", "IP address literal"),
    ("[::1]:80", "IP address literal"),
    ("1.2.3.4/logs", "IP address literal"),
    ("user@1.2.3.4", "IP address literal"),
    ("http://1.2.3.4", "IP address literal"),
    ("1.2.3.4#frag", "IP address literal"),
    (" 1.2.3.4", "IP address literal"),
    ("1.2.3.4\n", "IP address literal"),
    ("01.2.3.4", "IP address literal"),
    ("fe80::1%eth0", "zone id"),
    ("0.0.0.0", "unspecified"),
    ("::", "unspecified"),
    ("224.0.0.1", "multicast"),
    ("ff02::1", "multicast"),
    ("169.254.169.254", "link-local"),
    ("::ffff:169.254.169.254", "link-local"),
    ("fe80::1", "link-local"),
    ("255.255.255.255", "broadcast"),
    ("1" * 60, "at most"),
]


@pytest.mark.parametrize("address", GOOD_ADDRESSES)
def test_good_addresses(address: str) -> None:
    assert address_problem(address) is None
    assert load_status("Machine", "m1", {"address": address})["address"] == address
    assert load_status("Instance", "web-0", {"address": address})["address"] == address


@pytest.mark.parametrize(("address", "why"), BAD_ADDRESSES)
def test_bad_addresses(address: str, why: str) -> None:
    assert why in (address_problem(address) or "")
    for kind in ("Machine", "Instance"):
        with pytest.raises(Invalid) as err:
            load_status(kind, "x", {"address": address})
        assert err.value.code == 422
        assert [(c.field, why in c.message) for c in err.value.causes] == [("status.address", True)]


def test_empty_address_is_allowed_until_known() -> None:
    assert load_status("Machine", "m1", {})["address"] == ""
    assert load_status("Instance", "web-0", {"address": ""})["address"] == ""


@pytest.mark.parametrize(("status", "field"), [
    ({"capacity": {"cpu": 4097.0, "memoryMB": 0}}, "status.capacity.cpu"),
    ({"capacity": {"cpu": 1.0, "memoryMB": 64 * 1024 * 1024 + 1}}, "status.capacity.memoryMB"),
    ({"agentPort": 65536}, "status.agentPort"),
    ({"agentPort": -1}, "status.agentPort"),
    ({"agentVersion": "v" * 129}, "status.agentVersion"),
])
def test_machine_status_bounds(status: dict[str, Any], field: str) -> None:
    with pytest.raises(Invalid) as err:
        load_status("Machine", "m1", status)
    assert [c.field for c in err.value.causes] == [field]


def test_machine_status_at_the_bounds() -> None:
    status = load_status("Machine", "m1", {"capacity": {"cpu": 4096.0, "memoryMB": 64 * 1024 * 1024},
                                           "agentPort": 65535})
    assert status["capacity"]["cpu"] == 4096.0 and load_status("Machine", "m1", {"agentPort": 0})["agentPort"] == 0


@pytest.mark.parametrize(("address", "port", "url"), [
    ("10.0.0.5", 7071, "http://10.0.0.5:7071/logs/web-0"),
    ("::1", 7071, "http://[::1]:7071/logs/web-0"),
    ("2001:DB8:0::7", 1, "http://[2001:db8::7]:1/logs/web-0"),
])
def test_agent_url(address: str, port: int, url: str) -> None:
    assert agent_url(address, port, "logs/web-0") == url


@pytest.mark.parametrize(("address", "port"), [
    ("evil.example", 80), ("1.2.3.4:80", 80), ("fe80::1%lo", 80), ("", 80), ("1.2.3.4", 0),
    ("1.2.3.4", 65536), ("1.2.3.4", True),
])
def test_agent_url_refuses(address: str, port: Any) -> None:
    with pytest.raises(ValueError):
        agent_url(address, port, "logs/web-0")


def test_same_address() -> None:
    assert same_address("::1", "0:0::1") and same_address("10.0.0.1", "10.0.0.1")
    assert not same_address("10.0.0.1", "10.0.0.2") and not same_address("10.0.0.1", "")


# ---- labels, instance addresses --------------------------------------------------------------------

@pytest.mark.parametrize(("user", "labels", "refused"), [
    (NODE, {"role": "web"}, False),
    (NODE, {"controlplane.io/trusted": "yes"}, True),
    (NODE, {"role": "web", "controlplane.io/zone": "a"}, True),
    (NODE, {"example.com/controlplane.io": "x", "my.controlplane.io/x": "y"}, False),
    (ADMIN, {"controlplane.io/trusted": "yes"}, False),
])
def test_reserved_labels(user: User, labels: dict[str, str], refused: bool) -> None:
    if refused:
        with pytest.raises(Invalid) as err:
            check_node_labels(user, "Machine", "m1", labels)
        assert all(c.field.startswith("metadata.labels.controlplane.io/") for c in err.value.causes)
    else:
        check_node_labels(user, "Machine", "m1", labels)


@pytest.mark.parametrize(("user", "address", "machine_address", "refused"), [
    (NODE, "", "10.0.0.1", False),
    (NODE, "10.0.0.1", "10.0.0.1", False),
    (NODE, "::1", "0::1", False),
    (NODE, "10.0.0.2", "10.0.0.1", True),
    (NODE, "10.0.0.1", "", True),
    (ADMIN, "10.0.0.2", "10.0.0.1", False),
])
def test_node_instance_address(user: User, address: str, machine_address: str, refused: bool) -> None:
    if refused:
        with pytest.raises(Invalid) as err:
            check_node_instance_address(user, "web-0", address, machine_address)
        assert [c.field for c in err.value.causes] == ["status.address"]
    else:
        check_node_instance_address(user, "web-0", address, machine_address)


# ---- events ----------------------------------------------------------------------------------------

BOUND = {"web-0": "m1", "web-1": "m2"}


def event(kind: str = "Instance", name: str = "web-0", *, reason: str = "ProxyConfigRejected",
          message: str = "nginx -t failed", labels: dict[str, str] | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = dict(event_object(kind, name, type_="Warning", reason=reason, message="x"))
    obj["message"] = message
    obj["metadata"] = {**obj["metadata"], "labels": labels or {}}
    return obj


# (user, event, error or None, the field or text that says why)
EVENTS: list[tuple[User, dict[str, Any], type[Exception] | None, str]] = [
    (NODE, event(), None, ""),
    (NODE, event("Machine", "m1"), None, ""),
    (NODE, event(message="m" * 1000), None, ""),
    (NODE, event(reason="Scheduled"), Invalid, "reason"),
    (NODE, event(reason="MachineLost"), Invalid, "reason"),
    (NODE, event(message="m" * 1001), Invalid, "message"),
    (NODE, event(labels={"controlplane.io/x": "y"}), Invalid, "metadata.labels.controlplane.io/x"),
    (NODE, event("Machine", "m2"), Forbidden, "Machine/m2"),
    (NODE, event("Instance", "web-1"), Forbidden, "Instance/web-1"),
    (NODE, event("Instance", "gone-0"), Forbidden, "Instance/gone-0"),
    (NODE, event("Unit", "web"), Forbidden, "Unit/web"),
    (ADMIN, event("Unit", "web", reason="Anything", message="m" * 5000), None, ""),
]


@pytest.mark.parametrize(("user", "obj", "error", "why"), EVENTS)
def test_node_events(user: User, obj: dict[str, Any], error: type[Exception] | None, why: str) -> None:
    if error is None:
        check_node_event(user, obj, bound_machine=BOUND.get)
        return
    with pytest.raises(error) as err:
        check_node_event(user, obj, bound_machine=BOUND.get)
    if isinstance(err.value, Invalid):
        assert why in [c.field for c in err.value.causes]
    else:
        assert why in str(err.value)


def test_agent_event_reasons_are_the_ones_the_agent_emits() -> None:
    """The constant is collected from agent/: every literal reason given to an Event there is in it."""
    emitted: set[str] = set()
    for path in (REPO / "agent").rglob("*.py"):
        text = path.read_text()
        emitted |= set(re.findall(r"_event\([^,()]+,\s*\"(\w+)\"", text))
        emitted |= set(re.findall(r"event_object\([^)]*reason=\"(\w+)\"", text))
    assert emitted and emitted <= AGENT_EVENT_REASONS


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket() -> None:
    clock = Clock()
    bucket = TokenBucket(5.0, 20, clock=clock)
    assert sum(bucket.take() for _ in range(25)) == 20
    clock.now = 1.0
    assert sum(bucket.take() for _ in range(10)) == 5
    clock.now = 100.0
    assert sum(bucket.take() for _ in range(30)) == 20  # never more than the burst


def test_event_limiter_is_per_node_and_spares_admins() -> None:
    clock = Clock()
    limiter = NodeEventLimiter(clock=clock)
    for _ in range(20):
        limiter.admit(NODE)
    with pytest.raises(TooManyRequests) as err:
        limiter.admit(NODE)
    assert err.value.code == 429
    with pytest.raises(TooManyRequests):
        limiter.admit(User("node-m1-second-token", "node", "m1"))  # the bucket is the machine's
    limiter.admit(User("node-m2", "node", "m2"))
    for _ in range(100):
        limiter.admit(ADMIN)
    clock.now = 0.2
    limiter.admit(NODE)
