"""Object schemas (controlplane.schemas): defaults, per-field validation, fleet's refused
combinations and the one-cause-per-field shape of Invalid errors."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from controlplane.errors import Invalid
from controlplane.schemas import load_object, load_status


def unit(spec: dict[str, Any] | None = None, name: str = "web", **meta: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, **meta}, "spec": {"image": "local/web:1", **(spec or {})}}


def causes(kind: str, body: Any) -> dict[str, str]:
    """field -> reason of the Invalid error ``body`` raises."""
    with pytest.raises(Invalid) as err:
        load_object(kind, body)
    status = err.value.to_status()
    assert status["code"] == 422 and status["reason"] == "Invalid"
    assert status["details"]["kind"] == kind
    return {c["field"]: c["reason"] for c in status["details"]["causes"]}


def test_unit_defaults() -> None:
    obj = load_object("Unit", unit())
    assert obj["apiVersion"] == "v1" and obj["kind"] == "Unit"
    assert obj["metadata"] == {"name": "web", "labels": {}, "annotations": {}}
    assert obj["spec"] == {
        "image": "local/web:1", "command": [], "env": {}, "ports": [], "replicas": 1, "global": False,
        "resources": {"cpu": 0.0, "memoryMB": 0}, "restartPolicy": "Always",
        "placement": {"spread": "required", "conflicts": [], "machineMetadata": {}, "machineOf": "", "machine": ""},
    }
    assert obj["status"] == {"replicas": 0, "readyReplicas": 0, "observedGeneration": 0, "conditions": []}


def test_nested_defaults() -> None:
    obj = load_object("Unit", unit({
        "ports": [{"containerPort": 8080}],
        "health": {"http": {"port": 8080}},
        "proxy": {"kind": "edge", "domain": "example.com"},
        "global": True,
    }))
    spec = obj["spec"]
    assert spec["ports"] == [{"containerPort": 8080, "hostPort": 0, "protocol": "tcp"}]
    assert spec["health"] == {"http": {"port": 8080, "path": "/"}, "periodSeconds": 2.0, "timeoutSeconds": 1.0,
                              "failureThreshold": 3}
    assert spec["proxy"]["port"] == 80
    assert spec["global"] is True and "global_" not in spec


def test_full_unit_round_trips() -> None:
    body = unit({
        "command": ["httpd", "-f"], "env": {"GREETING": "hello", "_X1": ""},
        "ports": [{"containerPort": 8080, "hostPort": 18080, "protocol": "udp"}],
        "replicas": 3, "resources": {"cpu": 0.25, "memoryMB": 64}, "restartPolicy": "OnFailure",
        "placement": {"spread": "preferred", "conflicts": ["db-*", "cache?"],
                      "machineMetadata": {"role": ["web", "edge"], "example.com/region": ["eu"]},
                      "machineOf": "cache"},
        "health": {"exec": {"command": ["true"]}, "periodSeconds": 0.5, "timeoutSeconds": 0.2, "failureThreshold": 1},
        "expose": {"host": "someapp", "port": 8080},
    }, labels={"app": "web", "example.com/tier": "front"}, annotations={"note": "anything: goes!"})
    obj = load_object("Unit", copy.deepcopy(body))
    for key, value in body["spec"].items():
        if key == "placement":
            value = {**value, "machine": ""}  # the one placement default the body left out
        assert obj["spec"][key] == value, key
    loaded_again = load_object("Unit", copy.deepcopy(obj))
    assert loaded_again == obj


@pytest.mark.parametrize(
    ("spec", "meta", "field"),
    [
        ({}, {"name": "Web!"}, "metadata.name"),
        ({}, {"name": "-web"}, "metadata.name"),
        ({}, {"name": "web-"}, "metadata.name"),
        ({}, {"name": "a" * 64}, "metadata.name"),
        ({}, {"name": ""}, "metadata.name"),
        ({}, {"name": "web\n"}, "metadata.name"),  # Python's $ matches before a final newline
        ({}, {"name": "web", "labels": {"app": "web\n"}}, "metadata.labels"),
        ({"health": {"http": {"port": 80, "path": "/\n"}}}, {}, "spec.health.http.path"),
        ({"proxy": {"kind": "edge", "domain": "example.com\n"}}, {}, "spec.proxy.domain"),
        ({}, {"name": "web", "labels": {"bad key!": "x"}}, "metadata.labels"),
        ({}, {"name": "web", "labels": {"app": "no spaces"}}, "metadata.labels"),
        ({}, {"name": "web", "labels": {"app": "x" * 64}}, "metadata.labels"),
        ({}, {"name": "web", "generation": "1"}, "metadata.generation"),
        ({}, {"name": "web", "colour": "red"}, "metadata.colour"),
        ({"image": ""}, {}, "spec.image"),
        ({"command": "httpd"}, {}, "spec.command"),
        ({"env": {"1BAD": "x"}}, {}, "spec.env"),
        ({"env": {"OK": 1}}, {}, "spec.env.OK.value"),
        ({"ports": [{"containerPort": 0}]}, {}, "spec.ports[0].containerPort"),
        ({"ports": [{"containerPort": 65536}]}, {}, "spec.ports[0].containerPort"),
        ({"ports": [{"containerPort": "80"}]}, {}, "spec.ports[0].containerPort"),
        ({"ports": [{}]}, {}, "spec.ports[0].containerPort"),
        ({"ports": [{"containerPort": 80, "hostPort": -1}]}, {}, "spec.ports[0].hostPort"),
        ({"ports": [{"containerPort": 80, "protocol": "sctp"}]}, {}, "spec.ports[0].protocol"),
        ({"ports": [{"containerPort": 80, "hostPort": 9000}, {"containerPort": 81, "hostPort": 9000}]}, {},
         "spec.ports"),
        ({"replicas": -1}, {}, "spec.replicas"),
        ({"replicas": 1.5}, {}, "spec.replicas"),
        ({"replicas": "2"}, {}, "spec.replicas"),
        ({"global": "yes please"}, {}, "spec.global"),
        ({"resources": {"cpu": -1}}, {}, "spec.resources.cpu"),
        ({"resources": {"memoryMB": 1.5}}, {}, "spec.resources.memoryMB"),
        ({"restartPolicy": "Sometimes"}, {}, "spec.restartPolicy"),
        ({"placement": {"spread": "maybe"}}, {}, "spec.placement.spread"),
        ({"placement": {"conflicts": ["DB"]}}, {}, "spec.placement.conflicts[0]"),
        ({"placement": {"machineMetadata": {"role": []}}}, {}, "spec.placement.machineMetadata.role.value"),
        ({"placement": {"machineOf": "Cache"}}, {}, "spec.placement.machineOf"),
        ({"placement": {"machine": "m_1"}}, {}, "spec.placement.machine"),
        ({"health": {}}, {}, "spec.health.http"),
        ({"health": {"http": {"port": 80}, "tcp": {"port": 80}}}, {}, "spec.health.http"),
        ({"health": {"http": {"port": 80, "path": "no-slash"}}}, {}, "spec.health.http.path"),
        ({"health": {"tcp": {"port": 80}, "periodSeconds": 0}}, {}, "spec.health.periodSeconds"),
        ({"health": {"tcp": {"port": 80}, "failureThreshold": 0}}, {}, "spec.health.failureThreshold"),
        ({"health": {"exec": {"command": []}}}, {}, "spec.health.exec.command"),
        ({"expose": {"host": "Some App"}}, {}, "spec.expose.host"),
        ({"expose": {"port": 80}}, {}, "spec.expose.host"),
        ({"proxy": {"kind": "mesh"}}, {}, "spec.proxy.kind"),
        ({"proxy": {"kind": "loadbalancer"}}, {}, "spec.proxy.target"),
        ({"proxy": {"kind": "edge"}}, {}, "spec.proxy.domain"),
        ({"proxy": {"kind": "edge", "domain": "-bad.com"}}, {}, "spec.proxy.domain"),
        ({"bogus": 1}, {}, "spec.bogus"),
    ],
)
def test_unit_field_validation(spec: dict[str, Any], meta: dict[str, Any], field: str) -> None:
    body = unit(spec)
    body["metadata"].update(meta)
    found = causes("Unit", body)
    assert field in found, found


def test_image_required_unless_proxy() -> None:
    assert causes("Unit", {"metadata": {"name": "web"}, "spec": {}}) == {"spec.image": "FieldValueRequired"}
    obj = load_object("Unit", {"metadata": {"name": "lb"}, "spec": {"proxy": {"kind": "loadbalancer", "target": "web"}}})
    assert "image" not in obj["spec"]


@pytest.mark.parametrize(
    ("placement", "is_global", "fields"),
    [
        ({"machine": "m1", "conflicts": ["db-*"]}, False, {"spec.placement.machine"}),
        ({"machine": "m1", "machineOf": "cache"}, False, {"spec.placement.machine"}),
        ({"machine": "m1"}, True, {"spec.placement.machine"}),
        ({"machineOf": "cache"}, True, {"spec.placement.machineOf"}),
        ({"machineOf": "db-1", "conflicts": ["db-*"]}, False, {"spec.placement.machineOf"}),
        ({"machineOf": "cache", "conflicts": ["c?che"]}, False, {"spec.placement.machineOf"}),
        ({"machine": "m1", "machineOf": "cache"}, True, {"spec.placement.machine", "spec.placement.machineOf"}),
    ],
)
def test_fleet_refused_combinations(placement: dict[str, Any], is_global: bool, fields: set[str]) -> None:
    found = causes("Unit", unit({"placement": placement, "global": is_global}))
    assert set(found) == fields


@pytest.mark.parametrize(
    ("placement", "is_global"),
    [
        ({"machine": "m1"}, False),
        ({"machineOf": "cache", "conflicts": ["db-*"]}, False),
        ({"conflicts": ["db-*"]}, True),
        ({"machineMetadata": {"role": ["edge"]}}, True),
    ],
)
def test_fleet_allowed_combinations(placement: dict[str, Any], is_global: bool) -> None:
    load_object("Unit", unit({"placement": placement, "global": is_global}))


def test_one_cause_per_bad_field() -> None:
    body = unit({"replicas": -1, "ports": [{"containerPort": 0}, {"containerPort": 70000}], "restartPolicy": "x"},
                name="Bad_Name")
    with pytest.raises(Invalid) as err:
        load_object("Unit", body)
    details = err.value.to_status()["details"]
    fields = [c["field"] for c in details["causes"]]
    assert sorted(fields) == sorted([
        "metadata.name", "spec.replicas", "spec.ports[0].containerPort", "spec.ports[1].containerPort",
        "spec.restartPolicy",
    ])
    assert details["name"] == "Bad_Name"
    assert all(c["message"] for c in details["causes"])
    assert 'Unit "Bad_Name" is invalid' in err.value.message


def test_cause_reasons() -> None:
    found = causes("Unit", {"metadata": {"name": "web"}, "spec": {"image": "x", "extra": 1, "replicas": -2}})
    assert found == {"spec.extra": "FieldValueNotSupported", "spec.replicas": "FieldValueInvalid"}
    assert causes("Unit", {"spec": {"image": "x"}}) == {"metadata": "FieldValueRequired"}


@pytest.mark.parametrize("body", [None, [], "web", 3])
def test_not_an_object(body: Any) -> None:
    assert causes("Unit", body) == {"<body>": "FieldValueInvalid"}


@pytest.mark.parametrize(
    ("kind", "body", "field"),
    [
        ("Unit", {"apiVersion": "v2", "metadata": {"name": "w"}, "spec": {"image": "x"}}, "apiVersion"),
        ("Unit", {"kind": "Machine", "metadata": {"name": "w"}, "spec": {"image": "x"}}, "kind"),
        ("Machine", {"metadata": {"name": "m1"}, "spec": {"unschedulable": "maybe"}}, "spec.unschedulable"),
        ("Machine", {"metadata": {"name": "m1"}, "status": {"state": "Sleepy"}}, "status.state"),
        ("Instance", {"metadata": {"name": "web-0"}, "spec": {"unit": "web"}}, "spec.index"),
        ("Instance", {"metadata": {"name": "web-0"}, "spec": {"unit": "web", "index": -1}}, "spec.index"),
        ("Instance", {"metadata": {"name": "web-0"}, "spec": {"unit": "web", "index": 0, "machine": "M1"}},
         "spec.machine"),
        ("Instance", {"metadata": {"name": "web-0"}, "spec": {"unit": "web", "index": 0},
                      "status": {"phase": "Dancing"}}, "status.phase"),
        ("Endpoints", {"metadata": {"name": "web"}, "endpoints": [{"address": "1.2.3.4", "port": 0}]},
         "endpoints[0].port"),
        ("Event", {"metadata": {"name": "e1"}, "reason": "Started"}, "involvedObject"),
        ("Event", {"metadata": {"name": "e1"}, "reason": "", "involvedObject": {"kind": "Unit", "name": "w"}},
         "reason"),
        ("Event", {"metadata": {"name": "e1"}, "type": "Info", "reason": "X",
                   "involvedObject": {"kind": "Unit", "name": "w"}}, "type"),
    ],
)
def test_other_kinds(kind: str, body: dict[str, Any], field: str) -> None:
    assert field in causes(kind, body)


def test_other_kinds_defaults() -> None:
    machine = load_object("Machine", {"metadata": {"name": "m1", "labels": {"role": "edge"}}})
    assert machine["spec"] == {"unschedulable": False}
    assert machine["status"]["state"] == "NotReady"
    assert machine["status"]["capacity"] == {"cpu": 0.0, "memoryMB": 0}
    instance = load_object("Instance", {"metadata": {"name": "web-0"}, "spec": {"unit": "web", "index": 0}})
    assert instance["spec"]["machine"] == "" and instance["status"]["phase"] == "Pending"
    assert instance["status"]["ready"] is False
    endpoints = load_object("Endpoints", {"metadata": {"name": "web"}})
    assert endpoints["endpoints"] == []
    event = load_object("Event", {"metadata": {"name": "e1"}, "reason": "Started",
                                  "involvedObject": {"kind": "Instance", "name": "web-0"}})
    assert event["type"] == "Normal" and event["count"] == 1


def test_instance_template_global_key() -> None:
    instance = load_object("Instance", {"metadata": {"name": "web-0"},
                                        "spec": {"unit": "web", "index": 0, "template": {"image": "x", "global": True}}})
    assert instance["spec"]["template"]["global"] is True
    assert "global_" not in instance["spec"]["template"]


def test_load_status() -> None:
    status = load_status("Instance", "web-0", {"phase": "Running", "ready": True, "hostPorts": [
        {"containerPort": 8080, "hostPort": 31000}]})
    assert status["hostPorts"] == [{"containerPort": 8080, "hostPort": 31000, "protocol": "tcp"}]
    assert load_status("Unit", "web", None)["replicas"] == 0
    with pytest.raises(Invalid) as err:
        load_status("Instance", "web-0", {"phase": "Running", "restarts": "many", "bogus": 1})
    fields = {c.field for c in err.value.causes}
    assert fields == {"status.restarts", "status.bogus"}
    with pytest.raises(Invalid):
        load_status("Endpoints", "web", {})
