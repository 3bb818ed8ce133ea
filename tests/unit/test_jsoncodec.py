"""The orjson fast paths say what the stdlib paths said: request bodies (api/http.py), stored bytes."""

from __future__ import annotations

import json

import pytest

from controlplane import jsoncodec
from controlplane.api.http import parse_json
from controlplane.errors import BadRequest, Invalid
from controlplane.model import MAX_SAFE_INTEGER


@pytest.mark.parametrize("text", [
    '{"a": 3.0, "b": [1.5, -0.0, {"c": 2e3}], "d": "é", "e": null, "f": true}',
    "[1, 2.0]", "4.0", '"x"', "null", '"\\ud800"', f"{MAX_SAFE_INTEGER}", '{"a": 1, "a": 2}',
])
def test_a_body_reads_as_the_stdlib_with_the_number_rules_reads_it(text: str) -> None:
    value = parse_json(text)
    assert value == json.loads(text)


def test_whole_floats_become_ints_at_any_depth() -> None:
    value = parse_json('{"a": [{"b": 3.0}], "c": 1.0}')
    assert type(value["a"][0]["b"]) is int and type(value["c"]) is int


@pytest.mark.parametrize("text, field", [
    (f'{{"spec": {{"replicas": {MAX_SAFE_INTEGER + 1}}}}}', "spec.replicas"),
    ('{"a": [1, 123456789012345678901234567890]}', "a[1]"),  # orjson reads it as a float
    ('{"a": 1e400}', "a"),
])
def test_a_number_out_of_range_is_invalid_naming_its_field(text: str, field: str) -> None:
    with pytest.raises(Invalid) as err:
        parse_json(text)
    assert [c.field for c in err.value.causes] == [field]


@pytest.mark.parametrize("text", ['{"a": NaN}', '{"a": 1', "[" * 600 + "]" * 599])
def test_what_is_not_json_is_a_bad_request(text: str) -> None:
    with pytest.raises(BadRequest):
        parse_json(text)


def test_deep_bodies_take_the_stdlib_way() -> None:
    deep = "[" * 300 + "]" * 300
    assert parse_json(deep) == json.loads(deep)


def test_dumps_sorts_when_asked_and_falls_back_for_what_orjson_refuses() -> None:
    assert jsoncodec.dumps({"b": 1, "a": [2]}, sort_keys=True) == b'{"a":[2],"b":1}'
    assert jsoncodec.dumps({"n": 2**70}) == b'{"n":1180591620717411303424}'
    assert jsoncodec.loads(jsoncodec.dumps({"s": "é"})) == {"s": "é"}
