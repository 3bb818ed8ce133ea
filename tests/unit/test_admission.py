"""Admission: the server's flags applied to units (proxy image, pids limit, privilege bounds)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from controlplane.admission import AdmissionPolicy, admit, parse_capabilities, with_admitted_fields
from controlplane.errors import Invalid
from controlplane.model import DEFAULT_PIDS_LIMIT, DEFAULT_PROXY_IMAGE
from controlplane.schemas import load_object

POLICY = AdmissionPolicy(proxy_image="registry.example/nginx:1.27", default_pids_limit=512, max_pids_limit=2048,
                         allowed_capabilities=frozenset({"NET_ADMIN"}))


def unit(**spec: Any) -> dict[str, Any]:
    return load_object("Unit", {"metadata": {"name": "u"}, "spec": spec})


def test_proxy_unit_without_image_gets_the_servers_proxy_image() -> None:
    lb = unit(proxy={"kind": "loadbalancer", "target": "web"})
    admitted = admit("Unit", lb, POLICY)
    assert admitted["spec"]["image"] == "registry.example/nginx:1.27"
    assert "image" not in lb["spec"]  # the input is not changed
    named = admit("Unit", unit(proxy={"kind": "loadbalancer", "target": "web"}, image="mine/nginx:2"), POLICY)
    assert named["spec"]["image"] == "mine/nginx:2"  # an admin's choice stands
    assert admit("Unit", unit(image="local/web:1"), POLICY)["spec"]["image"] == "local/web:1"
    assert admit("Unit", lb, AdmissionPolicy())["spec"]["image"] == DEFAULT_PROXY_IMAGE


def test_pids_limit_defaulted_and_bounded() -> None:
    assert admit("Unit", unit(image="x"), POLICY)["spec"]["pidsLimit"] == 512
    assert admit("Unit", unit(image="x"), AdmissionPolicy())["spec"]["pidsLimit"] == DEFAULT_PIDS_LIMIT
    assert admit("Unit", unit(image="x", pidsLimit=2048), POLICY)["spec"]["pidsLimit"] == 2048
    with pytest.raises(Invalid) as err:
        admit("Unit", unit(image="x", pidsLimit=2049), POLICY)
    assert err.value.code == 422
    assert [c.field for c in err.value.causes] == ["spec.pidsLimit"] and "2048" in err.value.message


def test_privilege_escalation_and_capabilities_within_the_servers_bounds() -> None:
    with pytest.raises(Invalid) as err:
        admit("Unit", unit(image="x", allowPrivilegeEscalation=True, capAdd=["NET_ADMIN", "SYS_ADMIN"]), POLICY)
    assert [c.field for c in err.value.causes] == ["spec.allowPrivilegeEscalation", "spec.capAdd"]
    assert err.value.causes[1].message.startswith("SYS_ADMIN not allowed")  # NET_ADMIN is allowed
    permissive = AdmissionPolicy(allow_privilege_escalation=True, allowed_capabilities=parse_capabilities("sys_admin"))
    admitted = admit("Unit", unit(image="x", allowPrivilegeEscalation=True, capAdd=["CAP_SYS_ADMIN"]), permissive)
    assert admitted["spec"]["allowPrivilegeEscalation"] is True
    assert admit("Unit", unit(image="x", allowPrivilegeEscalation=False), POLICY)["spec"]["allowPrivilegeEscalation"] is False


def test_instance_templates_are_admitted_too() -> None:
    inst = load_object("Instance", {"metadata": {"name": "u-0"}, "spec": {
        "unit": "u", "index": 0, "template": {"image": "x", "pidsLimit": 99999}}})
    with pytest.raises(Invalid) as err:
        admit("Instance", inst, POLICY)
    assert err.value.causes[0].field == "spec.template.pidsLimit"
    other = {"kind": "Secret", "metadata": {"name": "s"}, "data": {}}
    assert admit("Secret", other, POLICY) is other


def test_policy_refuses_a_default_above_the_maximum() -> None:
    with pytest.raises(ValueError):
        AdmissionPolicy(default_pids_limit=5000, max_pids_limit=4096)


def test_apply_compares_with_what_admission_filled() -> None:
    stored = admit("Unit", unit(proxy={"kind": "edge", "domain": "example.com"}), POLICY)
    local = {"kind": "Unit", "metadata": {"name": "u"}, "spec": {"proxy": {"kind": "edge", "domain": "example.com"}}}
    merged = with_admitted_fields("Unit", local, stored)
    assert merged["spec"]["image"] == stored["spec"]["image"] and merged["spec"]["pidsLimit"] == 512
    assert "image" not in local["spec"]
    mine = {**local, "spec": {**local["spec"], "pidsLimit": 64}}
    assert with_admitted_fields("Unit", mine, stored)["spec"]["pidsLimit"] == 64  # the file's own value wins


def test_admission_leaves_its_input_alone() -> None:
    web = unit(image="x")
    before = copy.deepcopy(web)
    assert admit("Unit", web, POLICY)["spec"]["pidsLimit"] == 512
    assert web == before
    inst = load_object("Instance", {"metadata": {"name": "i-0"},
                                    "spec": {"unit": "i", "index": 0, "template": {"proxy": {"kind": "edge",
                                                                                             "domain": "a.b"}}}})
    before = copy.deepcopy(inst)
    admitted = admit("Instance", inst, POLICY)
    assert admitted["spec"]["template"]["image"] == POLICY.proxy_image
    assert admitted["spec"]["template"]["pidsLimit"] == 512
    assert inst == before
