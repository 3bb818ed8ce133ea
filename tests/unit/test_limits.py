"""The server's limits without a server: JSON numbers (api/http.py), query selectors
(api/objects.py), the stored-size limit (registry.encode), and the OpenAPI document saying
exactly what the schemas accept (so a spec-driven client and the server agree)."""

from __future__ import annotations

import json
import random
import re
from typing import Any

import jsonschema
import pytest

from controlplane.api.http import parse_json
from controlplane.api.objects import FIELD_SELECTOR_PATTERN, LABEL_SELECTOR_PATTERN
from controlplane.api.openapi import openapi_document
from controlplane.errors import BadRequest, Invalid
from controlplane.model import MAX_OBJECT_BYTES, MAX_SAFE_INTEGER
from controlplane.registry import encode
from controlplane.schemas import load_object
from controlplane.selectors import parse_field_selector, parse_label_selector

# ---------------------------------------------------------------- numbers


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("3.0", 3),  # one number type: a whole float is an integer
        ("-0", 0),
        ("2.5", 2.5),
        ("1e3", 1000),
        (str(MAX_SAFE_INTEGER), MAX_SAFE_INTEGER),
        (str(-MAX_SAFE_INTEGER), -MAX_SAFE_INTEGER),
        ("[1, {\"a\": 2.25}]", [1, {"a": 2.25}]),
    ],
)
def test_numbers_in_range(text: str, value: Any) -> None:
    parsed = parse_json(text)
    assert parsed == value and type(parsed) is type(value)


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("1" * 4301, "<body>"),  # past Python's int() digit limit: once a 500
        ("9" * 100_000, "<body>"),
        (str(MAX_SAFE_INTEGER + 1), "<body>"),
        (f'{{"metadata": {{"generation": {2**63}}}}}', "metadata.generation"),
        ('{"spec": {"replicas": -1' + "0" * 5000 + "}}", "spec.replicas"),
        ('{"a": [0, {"b": 1e400}]}', "a[1].b"),  # overflows to infinity
        ('{"cpu": 1e300}', "cpu"),  # every double that large is a whole number
    ],
)
def test_numbers_out_of_range_are_422_with_the_field(text: str, field: str) -> None:
    with pytest.raises(Invalid) as err:
        parse_json(text)
    assert err.value.code == 422
    assert [c.field for c in err.value.causes] == [field]
    assert len(err.value.message) < 400  # a 100,000-digit literal is not echoed back


def test_every_out_of_range_number_is_a_cause() -> None:
    with pytest.raises(Invalid) as err:
        parse_json('{"x": [1e999, 2], "y": {"z": ' + "7" * 30 + "}}")
    assert sorted(c.field for c in err.value.causes) == ["x[0]", "y.z"]


@pytest.mark.parametrize("text", ["NaN", '{"a": Infinity}', "[-Infinity]"])
def test_non_json_constants_are_400(text: str) -> None:
    with pytest.raises(BadRequest):
        parse_json(text)


def test_deep_nesting_is_400_not_a_crash() -> None:
    with pytest.raises(BadRequest):
        parse_json("[" * 100_000 + "]" * 100_000)


# ---------------------------------------------------------------- the stored size


def test_an_object_over_the_limit_is_never_encoded() -> None:
    obj = {"kind": "Unit", "metadata": {"name": "big", "annotations": {"a": "x" * MAX_OBJECT_BYTES}}}
    with pytest.raises(Invalid) as err:
        encode(obj)
    assert err.value.kind == "Unit" and err.value.name == "big"
    assert err.value.causes[0].reason == "FieldValueTooLong"
    obj["metadata"]["annotations"] = {"a": "x" * (MAX_OBJECT_BYTES - 200)}
    assert len(encode(obj)) <= MAX_OBJECT_BYTES


# ---------------------------------------------------------------- selectors


def test_selector_patterns_are_what_the_parsers_take() -> None:
    """Whatever the pattern (the spec's, and the server's gate) lets through, the parser parses."""
    label, field = re.compile(LABEL_SELECTOR_PATTERN), re.compile(FIELD_SELECTOR_PATTERN)
    rng = random.Random(7)
    accepted = 0
    for _ in range(20_000):
        text = "".join(rng.choice(["a", "b.c/d", " ", "=", "==", "!=", "!", ",", "(", ")", " in ", " notin ", "x-1"])
                       for _ in range(rng.randint(0, 8)))
        if label.fullmatch(text):
            parse_label_selector(text)
            accepted += 1
        if field.fullmatch(text):
            parse_field_selector(text)
    assert accepted > 1000


@pytest.mark.parametrize("text", ["", " ", "a=b", "a==b,c!=d", "app in (a, b)", "x notin ()", "!x", "k", "a= "])
def test_label_selectors_accepted(text: str) -> None:
    assert re.fullmatch(LABEL_SELECTOR_PATTERN, text)


@pytest.mark.parametrize("text", ["a,", ",", "a=b=c", "a in (b", "a\t=b", "a=b\n", "k in (a,,b)", "é=1", "!"])
def test_label_selectors_refused(text: str) -> None:
    assert not re.fullmatch(LABEL_SELECTOR_PATTERN, text)


# ---------------------------------------------------------------- the spec says what the schemas take

DOC = openapi_document()


def spec_accepts(kind: str, body: Any) -> bool:
    schema = {"$ref": f"#/components/schemas/{kind}", "components": DOC["components"]}
    return bool(jsonschema.Draft202012Validator(schema).is_valid(body))


def server_accepts(kind: str, body: Any) -> bool:
    """As a request body is taken: parsed from JSON text (numbers), then loaded by the schemas."""
    try:
        load_object(kind, parse_json(json.dumps(body)))
    except Invalid:
        return False
    return True


def unit(**spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "web"}, "spec": spec}


AGREEMENT = [
    unit(image="x"),
    unit(proxy={"kind": "loadbalancer", "target": "web"}),
    unit(proxy={"kind": "loadbalancer"}),
    unit(proxy={"kind": "edge", "domain": "example.com"}),
    unit(proxy={"kind": "edge", "target": "web"}),
    unit(),  # no image, no proxy
    {"metadata": {"name": "web"}},  # no spec at all
    unit(image="x", health={"http": {"port": 80}}),
    unit(image="x", health={"http": {"port": 80}, "tcp": {"port": 80}}),
    unit(image="x", health={"periodSeconds": 1}),
    unit(image="x", placement={"machine": "m1"}),
    unit(image="x", placement={"machine": "m1", "conflicts": ["db*"]}),
    unit(image="x", placement={"machine": "m1", "machineOf": "db"}),
    unit(image="x", placement={"machine": "m1"}, **{"global": True}),
    unit(image="x", placement={"machineOf": "db"}, **{"global": True}),
    unit(image="x", placement={"machineOf": "db", "conflicts": ["web*"]}),
    unit(image="x", placement={"machine": "", "conflicts": []}, **{"global": True}),
    unit(image="x", **{"global": 0}),  # marshmallow alone took 0 for False
    unit(image="x", resources={"cpu": "1.5"}),  # ... and "1.5" for a number
    unit(image="x", resources={"cpu": 2}),
    unit(image="x", replicas=3.0),
    unit(image="x", replicas=2.5),
    {"metadata": {"name": "web", "generation": MAX_SAFE_INTEGER}, "spec": {"image": "x"}},
    {"metadata": {"name": "web", "generation": MAX_SAFE_INTEGER + 1}, "spec": {"image": "x"}},
    {"metadata": {"name": "web", "generation": -(2**70)}, "spec": {"image": "x"}},
]


@pytest.mark.parametrize("body", AGREEMENT)
def test_spec_and_server_agree_on_units(body: dict[str, Any]) -> None:
    assert spec_accepts("Unit", body) == server_accepts("Unit", body), body


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        ("Instance", {"metadata": {"name": "i"}}),
        ("Instance", {"metadata": {"name": "i"}, "spec": {"unit": "u", "index": 0}}),
        ("Instance", {"metadata": {"name": "i"}, "spec": {"unit": "u", "index": 0}, "status": {"ready": 1}}),
        ("Machine", {"metadata": {"name": "m"}}),
        ("Machine", {"metadata": {"name": "m"}, "spec": {"unschedulable": "yes"}}),
        ("Event", {"metadata": {"name": "e"}, "reason": "R", "involvedObject": {"kind": "Unit", "name": "u"}}),
    ],
)
def test_spec_and_server_agree_on_other_kinds(kind: str, body: dict[str, Any]) -> None:
    assert spec_accepts(kind, body) == server_accepts(kind, body), body


def test_every_number_in_the_spec_is_bounded() -> None:
    unbounded: list[str] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            kinds = node.get("type") if isinstance(node.get("type"), list) else [node.get("type")]
            if ("integer" in kinds or "number" in kinds) and ("minimum" not in node or "maximum" not in node):
                unbounded.append(path)
            for key, value in node.items():
                walk(value, f"{path}/{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{path}/{i}")

    walk(DOC, "")
    assert unbounded == []
