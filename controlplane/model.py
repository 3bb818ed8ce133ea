"""The shared vocabulary: resource names and kinds, the wire objects, their defaults and builders.

The API server, the controllers, the scheduler, the agent and cpctl all speak in these terms,
so they live in one module that imports nothing of the project but ``errors`` (the layering
contracts in ``make lint`` hold it to that). The wire objects are Kubernetes-shaped JSON
(CONTRACT.md); the TypedDicts below name their fields for the type checker. They describe the
shape after validation (``schemas.py`` fills the defaults listed here), so readers may index
them directly. Anything that decides (placement, reconciling, rendering) reads these through
its own frozen views; this module only names things and builds new objects.
"""

from __future__ import annotations

import copy
import datetime as dt
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Literal, TypedDict

# ---- resources and kinds ----

API_VERSION = "v1"
# resource (URL plural) -> kind
RESOURCES: dict[str, str] = {
    "machines": "Machine",
    "units": "Unit",
    "instances": "Instance",
    "endpoints": "Endpoints",
    "events": "Event",
    "secrets": "Secret",
    "tokens": "Token",  # served by api/tokens.py only (admins; never the value or its hash)
}
KIND_TO_RESOURCE: dict[str, str] = {kind: resource for resource, kind in RESOURCES.items()}
# kinds with a /status subresource
HAS_STATUS = frozenset({"Machine", "Unit", "Instance"})
# the part of an object whose change bumps metadata.generation
SPEC_FIELDS: dict[str, tuple[str, ...]] = {
    "Machine": ("spec",),
    "Unit": ("spec",),
    "Instance": ("spec",),
    "Endpoints": ("endpoints",),
    "Event": ("type", "reason", "involvedObject", "message", "timestamp", "lastTimestamp", "count"),
    "Secret": ("data",),
    "Token": ("spec",),
}

# ---- defaults (schemas.py loads with these; views read missing fields as these) ----

SPREAD_REQUIRED = "required"
SPREAD_PREFERRED = "preferred"
SPREAD_NONE = "none"
SPREADS = (SPREAD_REQUIRED, SPREAD_PREFERRED, SPREAD_NONE)
DEFAULT_SPREAD = SPREAD_REQUIRED

RestartPolicy = Literal["Always", "OnFailure", "Never"]
RESTART_POLICIES: tuple[RestartPolicy, ...] = ("Always", "OnFailure", "Never")
DEFAULT_RESTART_POLICY: RestartPolicy = "Always"

PROTOCOLS = ("tcp", "udp")
DEFAULT_PROTOCOL = "tcp"
DEFAULT_REPLICAS = 1
DEFAULT_PROXY_PORT = 80
DEFAULT_PROXY_IMAGE = "local/nginx:latest"

# container defaults for untrusted workloads (README "Container defaults"); the pids limit a unit
# gets when it names none and the most it may ask for are cp-apiserver flags with these defaults
DEFAULT_PIDS_LIMIT = 1024
MAX_PIDS_LIMIT = 4096
DEFAULT_CAP_DROP = ("NET_RAW",)

# what a Secret's values read as for every role but admin (and the node that runs them)
SECRET_REDACTED = "<redacted>"
SECRET_MAX_BYTES = 64 * 1024  # all keys and values of one Secret together

PHASES = ("Pending", "Starting", "Running", "Failed", "Stopped")
MACHINE_STATES = ("Ready", "NotReady")
PROXY_KINDS = ("loadbalancer", "edge")

# spec fields whose change does not touch a running instance (scaling is not a rollout)
NOT_TEMPLATE = ("replicas",)

# ---- limits (README "Limits"): checked before anything reaches etcd ----

MAX_OBJECT_BYTES = 256 * 1024  # a request body, and an object as stored (JSON), at most
MAX_SAFE_INTEGER = 2**53 - 1  # every JSON number within +-this (I-JSON, RFC 7493 section 2.2)

# ---- machine presence: keys presence/<machine> on etcd leases kept alive by heartbeats ----

PRESENCE_RESOURCE = "presence"
PRESENCE_PREFIX = f"{PRESENCE_RESOURCE}/"


def presence_key(machine: str) -> str:
    return f"{PRESENCE_PREFIX}{machine}"


# ---- internal store keys: no registry resource lives under them, so the REST API never serves them ----

INTERNAL_PREFIX = "internal/"
LOG_SIGNING_KEY = f"{INTERNAL_PREFIX}log-signing-key"  # the cluster's Ed25519 key for log tickets
MACHINE_TOMBSTONE_PREFIX = f"{INTERNAL_PREFIX}machine-tombstones/"


def machine_tombstone_key(machine: str) -> str:
    """Recorded when an admin deletes a Machine: a later heartbeat re-creates it without the node's labels."""
    return f"{MACHINE_TOMBSTONE_PREFIX}{machine}"


UNIT_REVISIONS_PREFIX = f"{INTERNAL_PREFIX}unit-revisions/"


def unit_revisions_key(unit: str) -> str:
    """A unit's rollout history (api/revisions.py), written with the unit update that changes its template."""
    return f"{UNIT_REVISIONS_PREFIX}{unit}"


# ---- what a node may write ----

# Labels under this prefix are set by admins only: a node can neither send them in a heartbeat nor
# put them on an Event, so a constraint on them (machineMetadata) is one a machine cannot forge.
RESERVED_LABEL_PREFIX = "controlplane.io/"
# The reasons of the Events an agent writes (agent/proxy/manager.py, and the kubelet's lifecycle
# events in agent/executor.py); a node token may write no other.
AGENT_EVENT_REASONS = frozenset({
    "ProxyConfigRejected", "RouteDropped",
    "Pulled", "Created", "Started", "Ready", "Killing",
})


# ---- the wire objects ----


class ObjectMeta(TypedDict, total=False):
    name: str
    uid: str
    resourceVersion: str
    generation: int
    creationTimestamp: str
    labels: dict[str, str]
    annotations: dict[str, str]


class PortSpec(TypedDict):
    containerPort: int
    hostPort: int
    protocol: str


class Resources(TypedDict):
    cpu: float
    memoryMB: int


class Placement(TypedDict, total=False):
    spread: str
    conflicts: list[str]
    machineMetadata: dict[str, list[str]]
    machineOf: str
    machine: str


class ProxyConfig(TypedDict, total=False):
    kind: str
    target: str
    domain: str
    port: int


class Expose(TypedDict, total=False):
    host: str
    port: int


# "global" is a keyword, hence the functional form
UnitSpec = TypedDict("UnitSpec", {
    "image": str, "command": list[str], "env": dict[str, str], "ports": list[PortSpec], "replicas": int,
    "global": bool, "resources": Resources, "restartPolicy": str, "placement": Placement,
    "health": dict[str, Any], "expose": Expose, "proxy": ProxyConfig,
    # security (README "Container defaults", "Secrets"): env vars from Secrets ("secret/key"), the
    # user to run as, and the overrides of the defaults within the server's bounds
    "secretEnv": dict[str, str], "user": str, "pidsLimit": int, "allowPrivilegeEscalation": bool,
    "capAdd": list[str],
}, total=False)


class Condition(TypedDict, total=False):
    type: str
    status: str
    reason: str
    message: str
    lastTransitionTime: str


class UnitStatus(TypedDict, total=False):
    replicas: int
    readyReplicas: int
    observedGeneration: int
    conditions: list[Condition]


class Unit(TypedDict, total=False):
    apiVersion: str
    kind: str
    metadata: ObjectMeta
    spec: UnitSpec
    status: UnitStatus


class Capacity(TypedDict, total=False):
    cpu: float
    memoryMB: int


class MachineSpec(TypedDict, total=False):
    unschedulable: bool


class MachineStatus(TypedDict, total=False):
    state: str
    address: str
    capacity: Capacity
    allocated: Capacity
    lastHeartbeatTime: str
    agentVersion: str
    agentPort: int


class Machine(TypedDict, total=False):
    apiVersion: str
    kind: str
    metadata: ObjectMeta
    spec: MachineSpec
    status: MachineStatus


class HostPort(TypedDict):
    containerPort: int
    hostPort: int
    protocol: str


class InstanceSpec(TypedDict, total=False):
    unit: str
    index: int
    machine: str
    epoch: int
    generation: int
    template: UnitSpec | None


class InstanceStatus(TypedDict, total=False):
    phase: str
    ready: bool
    reason: str
    message: str
    containerID: str
    address: str
    hostPorts: list[HostPort]
    restarts: int
    exitCode: int | None
    startedAt: str
    machine: str  # the binding this report is about (spec.machine when it was written)
    epoch: int
    reasons: dict[str, int]


class Instance(TypedDict, total=False):
    apiVersion: str
    kind: str
    metadata: ObjectMeta
    spec: InstanceSpec
    status: InstanceStatus


class EndpointAddress(TypedDict, total=False):
    address: str
    port: int
    containerPort: int
    instance: str
    machine: str


class Endpoints(TypedDict, total=False):
    apiVersion: str
    kind: str
    metadata: ObjectMeta
    endpoints: list[EndpointAddress]


class InvolvedObject(TypedDict):
    kind: str
    name: str


class Event(TypedDict, total=False):
    apiVersion: str
    kind: str
    metadata: ObjectMeta
    type: str
    reason: str
    involvedObject: InvolvedObject
    message: str
    timestamp: str  # first seen
    lastTimestamp: str  # last seen: a repeat bumps count and this (controlplane/events.py)
    count: int


class Secret(TypedDict, total=False):
    apiVersion: str
    kind: str
    metadata: ObjectMeta
    data: dict[str, str]  # key (an env-var or file name) -> value


# ---- builders ----

EVENT_MESSAGE_MAX = 1000
# Events kept per involved object: a new one beyond this deletes the oldest (controlplane/events.py)
EVENTS_PER_OBJECT_MAX = 30
# a repeat (same object, type, reason and message) seen within this long is counted, not stored anew
EVENT_AGGREGATE_SECONDS = 600.0


def rfc3339(seconds: float) -> str:
    """``seconds`` since the epoch as every stamp of the API writes it: ``2026-12-01T12:00:00.123456Z``
    (UTC, microseconds always). Through ``isoformat``, a fifth of ``strftime``'s cost: the bulk
    path stamps 10,000 new instances at once."""
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="microseconds")[:-6] + "Z"


def now_rfc3339(clock: Callable[[], float] = time.time) -> str:
    return rfc3339(clock())


def event_object(kind: str, name: str, *, type_: str, reason: str, message: str) -> Event:
    """A new Event about object ``kind/name``, with a unique DNS-label name derived from it."""
    now = now_rfc3339()
    return {"metadata": {"name": f"{name[:50]}-{uuid.uuid4().hex[:8]}", "labels": {}, "annotations": {}},
            "type": type_, "reason": reason, "involvedObject": {"kind": kind, "name": name},
            "message": message[:EVENT_MESSAGE_MAX], "timestamp": now, "lastTimestamp": now, "count": 1}


def template_of(spec: Mapping[str, Any]) -> UnitSpec:
    """What an instance carries of its unit's spec: everything a rollout replaces it for."""
    return {k: v for k, v in spec.items() if k not in NOT_TEMPLATE}  # type: ignore[return-value]


def initial_instance_status() -> InstanceStatus:
    return {"phase": "Pending", "ready": False, "reason": "", "message": "", "containerID": "",
            "address": "", "hostPorts": [], "restarts": 0, "exitCode": None, "startedAt": "",
            "machine": "", "epoch": 0, "reasons": {}}


# ``<unit>-<index>`` must stay a DNS label (63): a unit's name leaves room for "-" and 6 digits
UNIT_NAME_MAX = 56


def instance_name(unit: str, index: int) -> str:
    """``<unit>-<index>``: fleet's ``web@1`` as a DNS label."""
    return f"{unit}-{index}"


def new_instance(unit: Mapping[str, Any], name: str, index: int, machine: str = "", *,
                 template: UnitSpec | None = None) -> Instance:
    """A new Instance of ``unit``. ``template`` (the unit's template, copied once per pass) may be
    shared by the instances of one plan: they are encoded, never mutated."""
    spec = unit.get("spec") or {}
    meta = unit.get("metadata") or {}
    return {
        "apiVersion": API_VERSION,
        "kind": "Instance",
        "metadata": {"name": name, "labels": dict(meta.get("labels") or {}), "annotations": {}},
        "spec": {
            "unit": str(meta["name"]),
            "index": index,
            "machine": machine,
            "epoch": 1 if machine else 0,
            "generation": int(meta.get("generation", 1)),
            "template": template if template is not None else template_of(copy.deepcopy(spec)),
        },
        "status": initial_instance_status(),
    }


def name_of(obj: Mapping[str, Any]) -> str:
    return str(obj["metadata"]["name"])
