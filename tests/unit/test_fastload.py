"""The fast loader (controlplane/fastload.py) against marshmallow: on valid objects it gives the very
same dict (same keys in the same order), and it never accepts what marshmallow refuses -- checked on
hand-picked objects and on every single-field mutation of them (other types, bounds, bad names,
removed and unknown keys), so every refusal is still marshmallow's, with its causes."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest
from marshmallow import ValidationError

from controlplane import schemas
from controlplane.errors import Invalid
from controlplane.fastload import REFUSED, fast_load, fast_loader
from controlplane.schema_parts import instance
from controlplane.schemas import SCHEMAS, STATUS_SCHEMAS, load_object

META = {"name": "web", "labels": {"app": "web", "example.com/tier": "front"}, "annotations": {"note": "x"}}
FULL_SPEC = {
    "image": "local/web:1", "command": ["httpd", "-f"], "env": {"A": "1", "B_2": ""},
    "ports": [{"containerPort": 8080, "hostPort": 80, "protocol": "tcp"}, {"containerPort": 53, "protocol": "udp"}],
    "replicas": 3, "global": False, "resources": {"cpu": 0.5, "memoryMB": 256}, "restartPolicy": "Always",
    "placement": {"spread": "preferred", "conflicts": ["db-*"], "machineMetadata": {"region": ["eu", "us"]},
                  "machineOf": "", "machine": ""},
    "health": {"http": {"path": "/healthz", "port": 8080}, "periodSeconds": 1, "timeoutSeconds": 0.5,
               "failureThreshold": 2},
    "expose": {"host": "web", "port": 8080},
    "secretEnv": {"PASSWORD": "db/password"}, "user": "1000:1000", "pidsLimit": 100,
    "allowPrivilegeEscalation": False, "capAdd": ["NET_ADMIN"],
}
VALID: list[tuple[str, dict[str, Any]]] = [
    ("Unit", {"metadata": {"name": "u1"}, "spec": {"image": "web:1"}}),
    ("Unit", {"apiVersion": "v1", "kind": "Unit", "metadata": {"name": "u2", "labels": {"app": "bench"}},
              "spec": {"image": "local/web:1", "replicas": 2, "ports": [{"containerPort": 8080}],
                       "health": {"http": {"path": "/", "port": 8080}}}}),
    ("Unit", {"metadata": META, "spec": FULL_SPEC}),
    ("Unit", {"metadata": {"name": "edge"}, "spec": {"proxy": {"kind": "edge", "domain": "example.com"},
                                                      "global": True}}),
    ("Unit", {"metadata": {"name": "lb"}, "spec": {"proxy": {"kind": "loadbalancer", "target": "web"},
                                                    "health": {"tcp": {"port": 80}}}}),
    ("Unit", {"metadata": {"name": "ex"}, "spec": {"image": "x", "health": {"exec": {"command": ["true"]}}},
              "status": {"replicas": 1, "conditions": [{"type": "Ready", "status": "True"}]}}),
    ("Instance", {"metadata": {"name": "web-0"}, "spec": {"unit": "web", "index": 0, "machine": "m1", "epoch": 2,
                                                          "template": FULL_SPEC}}),
    ("Instance", {"metadata": {"name": "web-1"}, "spec": {"unit": "web", "index": 1, "template": None},
                  "status": {"phase": "Running", "ready": True, "address": "10.0.0.1", "exitCode": None,
                             "hostPorts": [{"containerPort": 80, "hostPort": 8080}], "reasons": {"x": 1}}}),
    ("Machine", {"metadata": {"name": "m1", "labels": {"region": "eu"}}, "spec": {"unschedulable": True},
                 "status": {"state": "Ready", "address": "127.0.0.1", "capacity": {"cpu": 4, "memoryMB": 8192},
                            "agentPort": 7000}}),
    ("Endpoints", {"metadata": {"name": "web"}, "endpoints": [{"address": "10.0.0.1", "port": 80,
                                                                "instance": "web-0", "machine": "m1"}]}),
    ("Event", {"metadata": {"name": "e1"}, "reason": "Started", "involvedObject": {"kind": "Instance", "name": "a"},
               "type": "Warning", "count": 2}),
    ("Secret", {"metadata": {"name": "db"}, "data": {"password": "hunter2", "TLS_KEY": "k"}}),
    ("Token", {"metadata": {"name": "t1"}, "spec": {"role": "node", "machine": "m1", "ttlSeconds": 60,
                                                   "join": True}}),
    ("Token", {"metadata": {"name": "t2"}, "spec": {"role": "viewer", "description": "read only"}}),
]
INVALID: list[tuple[str, Any]] = [
    ("Unit", []), ("Unit", {}), ("Unit", {"metadata": {}}), ("Unit", {"metadata": {"name": "Bad_Name"}}),
    ("Unit", {"metadata": {"name": "u"}, "spec": {}}),  # image required unless a proxy
    ("Unit", {"metadata": {"name": "u"}, "spec": {"image": "x", "replicas": "2"}}),
    ("Unit", {"metadata": {"name": "u"}, "spec": {"image": "x", "replicas": True}}),
    ("Unit", {"metadata": {"name": "u"}, "spec": {"image": "x", "global": 1}}),
    ("Unit", {"metadata": {"name": "u"}, "spec": {"image": "x", "resources": {"cpu": "1"}}}),
    ("Unit", {"metadata": {"name": "u"}, "spec": {"image": "x", "ports": [{"containerPort": 0}]}}),
    ("Unit", {"metadata": {"name": "u"}, "spec": {"image": "x", "ports": [{"containerPort": 1, "hostPort": 9},
                                                                          {"containerPort": 2, "hostPort": 9}]}}),
    ("Unit", {"metadata": {"name": "u"}, "spec": {"image": "x", "env": {"A": "1"}, "secretEnv": {"A": "s/k"}}}),
    ("Unit", {"metadata": {"name": "u"}, "spec": {"image": "x", "health": {}}}),
    ("Unit", {"metadata": {"name": "u"}, "spec": {"image": "x", "bogus": 1}}),
    ("Unit", {"metadata": {"name": "u"}, "spec": {"image": "x"}, "extra": {}}),
    ("Unit", {"metadata": {"name": "u", "labels": {"a": "b\n"}}, "spec": {"image": "x"}}),
    ("Unit", {"kind": "Machine", "metadata": {"name": "u"}, "spec": {"image": "x"}}),
    ("Unit", {"metadata": {"name": "u"}, "spec": {"proxy": {"kind": "edge"}}}),
    ("Instance", {"metadata": {"name": "i"}, "spec": {"unit": "web"}}),
    ("Machine", {"metadata": {"name": "m"}, "status": {"address": "not-an-ip"}}),
    ("Token", {"metadata": {"name": "t"}, "spec": {"role": "node"}}),
    ("Event", {"metadata": {"name": "e"}, "reason": "", "involvedObject": {"kind": "I", "name": "a"}}),
]
POOL: list[Any] = [None, True, False, 0, -1, 2, 1.5, 70000, 2**70, "", "x", "Web", "a\n", "-a", "a" * 64,
                   [], ["x"], [1], {}, {"k": "v"}, {"k": 1}]


def marshmallow_load(kind: str, body: Any) -> Any:
    try:
        return instance(SCHEMAS[kind]).load(body)
    except ValidationError as err:
        return err


def same(a: Any, b: Any) -> bool:
    return json.dumps(a) == json.dumps(b)  # equal, keys in the same order


def mutations(obj: Any) -> Iterator[Any]:
    """Every copy of ``obj`` with one value replaced (by each of POOL), one key removed or one
    unknown key added, at any depth."""
    if isinstance(obj, dict):
        yield {**obj, "unknownField": 1}
        for key, value in obj.items():
            yield {k: v for k, v in obj.items() if k != key}
            for other in [*POOL, *mutations(value)]:
                yield {**obj, key: other}
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            yield obj[:i] + obj[i + 1:]
            for other in [*POOL, *mutations(value)]:
                yield [*obj[:i], other, *obj[i + 1:]]


def test_every_schema_has_a_fast_loader() -> None:
    for cls in [*SCHEMAS.values(), *STATUS_SCHEMAS.values()]:
        assert fast_loader(instance(cls)) is not None, cls.__name__


@pytest.mark.parametrize(("kind", "body"), VALID, ids=[f"{k}-{i}" for i, (k, _) in enumerate(VALID)])
def test_valid_objects_load_to_what_marshmallow_gives(kind: str, body: dict[str, Any]) -> None:
    before = copy.deepcopy(body)
    fast = fast_load(SCHEMAS[kind], body)
    assert fast is not REFUSED
    assert same(fast, marshmallow_load(kind, body))
    assert body == before  # the input is left alone


@pytest.mark.parametrize(("kind", "body"), INVALID, ids=[f"{k}-{i}" for i, (k, _) in enumerate(INVALID)])
def test_invalid_objects_are_left_to_marshmallow(kind: str, body: Any) -> None:
    assert isinstance(marshmallow_load(kind, body), ValidationError)
    assert fast_load(SCHEMAS[kind], body) is REFUSED
    with pytest.raises(Invalid):
        load_object(kind, body)


@pytest.mark.parametrize(("kind", "body"), VALID, ids=[f"{k}-{i}" for i, (k, _) in enumerate(VALID)])
def test_no_mutation_is_accepted_that_marshmallow_refuses(kind: str, body: dict[str, Any]) -> None:
    accepted = refused = 0
    for mutant in mutations(body):
        expected = marshmallow_load(kind, mutant)
        fast = fast_load(SCHEMAS[kind], mutant)
        if fast is REFUSED:
            refused += 1
            continue
        accepted += 1
        assert not isinstance(expected, ValidationError), mutant
        assert same(fast, expected), mutant
    assert accepted and refused  # both sides were exercised


def outcome(kind: str, body: Any) -> str:
    """load_object's answer as JSON: the object, or the Status of its Invalid."""
    try:
        return json.dumps(load_object(kind, body))
    except Invalid as err:
        return json.dumps(err.to_status())


@pytest.mark.parametrize("which", [0, 2, 6, 8, 12])
def test_load_object_answers_exactly_as_with_marshmallow_alone(which: int, monkeypatch: pytest.MonkeyPatch) -> None:
    kind, body = VALID[which]
    bodies = [body, *mutations(body)]
    with_fast = [outcome(kind, b) for b in bodies]
    monkeypatch.setattr(schemas, "fast_load", lambda cls, data: REFUSED)
    assert [outcome(kind, b) for b in bodies] == with_fast
