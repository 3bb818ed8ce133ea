"""What a node token may write, beyond the role policy of auth.py (which says *which* objects).

A node is one machine's agent; a stolen node token must not reach further than that machine.
So what a node writes is checked for content too, by pure functions table-tested without a server:

- labels under ``controlplane.io/`` (RESERVED_LABEL_PREFIX) are the admins': a node cannot send
  them in a heartbeat or put them on an Event;
- an instance's ``status.address`` written by a node is empty or its machine's own address, so a
  node cannot point Endpoints (and the proxies) at arbitrary IPs;
- a node's Events carry one of the agent's reasons (AGENT_EVENT_REASONS), a message of at most
  EVENT_MESSAGE_MAX characters, are about its own machine or an instance bound to it (now, or
  within RECENT_BINDING_SECONDS: the agent says Killing after the instance was deleted or moved,
  which ``RecentBindings`` remembers from the instance watch), and come at most
  NODE_EVENTS_PER_SECOND (burst NODE_EVENT_BURST) per node and API server.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Mapping
from typing import Any

from controlplane.addresses import same_address
from controlplane.api.auth import User
from controlplane.errors import Cause, Forbidden, Invalid, TooManyRequests
from controlplane.model import AGENT_EVENT_REASONS, EVENT_MESSAGE_MAX, RESERVED_LABEL_PREFIX

NODE_EVENTS_PER_SECOND = 5.0
NODE_EVENT_BURST = 20
RECENT_BINDING_SECONDS = 300.0
RECENT_BINDINGS_MAX = 20000


def reserved_label_causes(labels: Mapping[str, str], *, field: str = "metadata.labels") -> list[Cause]:
    return [Cause(f"{field}.{key}", f"the prefix {RESERVED_LABEL_PREFIX!r} is reserved for admins",
                  "FieldValueForbidden")
            for key in sorted(labels) if key.startswith(RESERVED_LABEL_PREFIX)]


def check_node_labels(user: User, kind: str, name: str, labels: Mapping[str, str]) -> None:
    """Invalid when a node sets a label under the reserved prefix (admins may)."""
    if user.role != "node":
        return
    causes = reserved_label_causes(labels)
    if causes:
        raise Invalid(f'{kind} "{name}" is invalid: {causes[0].field}: {causes[0].message}', kind=kind,
                      name=name, causes=causes)


def check_node_instance_address(user: User, name: str, address: str, machine_address: str) -> None:
    """Invalid when a node reports an instance address other than "" or its machine's status.address."""
    if user.role != "node" or not address or same_address(address, machine_address):
        return
    message = (f"must be empty or the address of machine {user.machine!r} "
               f"({machine_address or 'not reported yet'})")
    raise Invalid(f'Instance "{name}" is invalid: status.address: {message}', kind="Instance", name=name,
                  causes=[Cause("status.address", message, "FieldValueForbidden")])


def check_node_event(user: User, event: Mapping[str, Any], *, bound_machine: Callable[[str], str | None],
                     was_bound: Callable[[str, str], bool] = lambda _instance, _machine: False) -> None:
    """Invalid (reason, message, labels) or Forbidden (involvedObject) unless ``event`` is one a node's
    agent writes. ``bound_machine(instance)`` is the machine that instance is bound to (None: no such);
    ``was_bound(instance, machine)`` says it was bound there lately (RecentBindings)."""
    if user.role != "node":
        return
    name = str((event.get("metadata") or {}).get("name", ""))
    causes = reserved_label_causes((event.get("metadata") or {}).get("labels") or {})
    reason = event.get("reason")
    if reason not in AGENT_EVENT_REASONS:
        causes.append(Cause("reason", f"a node may write only the agent's reasons {sorted(AGENT_EVENT_REASONS)}",
                            "FieldValueNotSupported"))
    if len(str(event.get("message") or "")) > EVENT_MESSAGE_MAX:
        causes.append(Cause("message", f"must be at most {EVENT_MESSAGE_MAX} characters", "FieldValueTooLong"))
    if causes:
        raise Invalid(f'Event "{name}" is invalid: {causes[0].field}: {causes[0].message}', kind="Event",
                      name=name, causes=causes)
    involved = event.get("involvedObject") or {}
    kind, target = involved.get("kind"), str(involved.get("name") or "")
    if kind == "Machine" and target == user.machine:
        return
    if kind == "Instance" and (bound_machine(target) == user.machine or was_bound(target, user.machine)):
        return
    raise Forbidden(f'user "{user.name}" (node) may write Events only about machine {user.machine!r} '
                    f"or instances bound to it, not {kind}/{target}")


class RecentBindings:
    """Which machines instances were bound to lately, fed every change of the instance watch cache
    (a DELETED change carries the last object, a MODIFIED one the object before): an agent reports
    Killing about an instance it stops after a scale-down, a delete or a move, when the instance is
    gone or bound elsewhere. At most ``size`` pairs, each for ``ttl`` seconds after it was last seen."""

    def __init__(self, *, ttl: float = RECENT_BINDING_SECONDS, size: int = RECENT_BINDINGS_MAX,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.size = size
        self.clock = clock
        self.seen: collections.OrderedDict[tuple[str, str], float] = collections.OrderedDict()

    def observe(self, *objects: Mapping[str, Any] | None) -> None:
        now = self.clock()
        for obj in objects:
            machine = str(((obj or {}).get("spec") or {}).get("machine") or "")
            name = str(((obj or {}).get("metadata") or {}).get("name") or "")
            if not machine or not name:
                continue
            self.seen[(name, machine)] = now
            self.seen.move_to_end((name, machine))
        while len(self.seen) > self.size:
            self.seen.popitem(last=False)

    def was_bound(self, instance: str, machine: str) -> bool:
        seen = self.seen.get((instance, machine))
        return seen is not None and self.clock() - seen <= self.ttl


class TokenBucket:
    """``rate`` tokens a second up to ``burst``; ``take()`` spends one if there is one."""

    def __init__(self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.tokens = float(burst)
        self.stamp = clock()

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(float(self.burst), self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class NodeEventLimiter:
    """One token bucket per node (in this API server's memory; a node can spread over servers)."""

    def __init__(self, *, rate: float = NODE_EVENTS_PER_SECOND, burst: int = NODE_EVENT_BURST,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.buckets: dict[str, TokenBucket] = {}

    def admit(self, user: User) -> None:
        """TooManyRequests when ``user`` (a node) is over its rate; other roles are not limited here."""
        if user.role != "node":
            return
        node = user.machine or user.name  # every token of one machine shares its bucket
        bucket = self.buckets.get(node)
        if bucket is None:
            bucket = self.buckets[node] = TokenBucket(self.rate, self.burst, clock=self.clock)
        if not bucket.take():
            raise TooManyRequests(f'node "{user.name}" writes Events faster than {self.rate:g}/s '
                                  f"(burst {self.burst}); retry later")
