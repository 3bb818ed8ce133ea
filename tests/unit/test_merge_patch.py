"""RFC 7386 JSON merge patch (controlplane.api.http.merge_patch), with the RFC's own examples."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from controlplane.api.http import merge_patch

# RFC 7386, appendix A: (target, patch, result)
RFC_EXAMPLES: list[tuple[Any, Any, Any]] = [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"a": "foo"}, None, None),
    ({"a": "foo"}, "bar", "bar"),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
]


@pytest.mark.parametrize(("target", "patch", "result"), RFC_EXAMPLES)
def test_rfc7386_examples(target: Any, patch: Any, result: Any) -> None:
    assert merge_patch(target, patch) == result


def test_patch_does_not_mutate_its_inputs() -> None:
    target = {"metadata": {"name": "web", "labels": {"app": "web"}}, "spec": {"replicas": 1, "env": {"A": "1"}}}
    patch = {"metadata": {"labels": {"tier": "front", "app": None}}, "spec": {"replicas": 3, "env": {"B": "2"}}}
    before_target, before_patch = copy.deepcopy(target), copy.deepcopy(patch)
    merged = merge_patch(target, patch)
    assert merged == {"metadata": {"name": "web", "labels": {"tier": "front"}},
                      "spec": {"replicas": 3, "env": {"A": "1", "B": "2"}}}
    assert target == before_target and patch == before_patch


def test_empty_patch_is_identity() -> None:
    target = {"a": {"b": [1, 2]}, "c": False}
    assert merge_patch(target, {}) == target


def test_lists_are_replaced_not_merged() -> None:
    target = {"spec": {"ports": [{"containerPort": 80}, {"containerPort": 81}]}}
    assert merge_patch(target, {"spec": {"ports": [{"containerPort": 90}]}}) == {"spec": {"ports": [{"containerPort": 90}]}}
