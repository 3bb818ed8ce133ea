"""Label and field selectors (controlplane.selectors): the Kubernetes syntax, table-tested."""

from __future__ import annotations

from typing import Any

import pytest

from controlplane.errors import BadRequest
from controlplane.selectors import field_value, parse_field_selector, parse_label_selector


def obj(labels: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    return {"metadata": {"name": "web", "labels": labels or {}}, **extra}


WEB = {"app": "web", "tier": "front", "env": "prod"}

LABEL_CASES = [
    ("", WEB, True),
    ("   ", WEB, True),
    ("app=web", WEB, True),
    ("app==web", WEB, True),
    ("app=db", WEB, False),
    ("app!=db", WEB, True),
    ("app!=web", WEB, False),
    ("missing!=x", WEB, True),
    ("app in (web,db)", WEB, True),
    ("app in (db, cache)", WEB, False),
    ("app notin (db,cache)", WEB, True),
    ("app notin (web)", WEB, False),
    ("missing notin (web)", WEB, True),
    ("app", WEB, True),
    ("missing", WEB, False),
    ("!missing", WEB, True),
    ("!app", WEB, False),
    ("app=web,tier=front", WEB, True),
    ("app=web,tier=back", WEB, False),
    ("app in (web,db),env=prod,!missing", WEB, True),
    (" app = web , tier in ( front , back ) ", WEB, True),
    ("example.com/role=edge", {"example.com/role": "edge"}, True),
    ("app=", {"app": ""}, True),
    ("app=", WEB, False),
    ("app=web", {}, False),
]


@pytest.mark.parametrize(("selector", "labels", "expected"), LABEL_CASES)
def test_label_selector(selector: str, labels: dict[str, str], expected: bool) -> None:
    assert parse_label_selector(selector)(obj(labels)) is expected


def test_label_selector_none_and_missing_labels() -> None:
    assert parse_label_selector(None)({}) is True
    assert parse_label_selector("app")({"metadata": {}}) is False
    assert parse_label_selector("!app")({}) is True


@pytest.mark.parametrize("bad", ["app=(web", "a b c", "app in web", "app = we b", "app=web,=x", "app=w!b"])
def test_label_selector_errors(bad: str) -> None:
    with pytest.raises(BadRequest):
        parse_label_selector(bad)


INSTANCE = {
    "metadata": {"name": "web-0", "labels": {"app": "web"}},
    "spec": {"unit": "web", "machine": "m1", "index": 0},
    "status": {"phase": "Running", "ready": True, "exitCode": None},
}

FIELD_CASES = [
    ("", True),
    ("spec.machine=m1", True),
    ("spec.machine==m1", True),
    ("spec.machine=m2", False),
    ("spec.machine!=m2", True),
    ("spec.machine!=m1", False),
    ("metadata.name=web-0", True),
    ("status.phase=Running,spec.machine=m1", True),
    ("status.phase=Running,spec.machine=m2", False),
    ("spec.index=0", True),
    ("status.ready=true", True),
    ("status.ready=false", False),
    ("status.exitCode=", True),
    ("spec.nothing=", True),
    ("spec.nothing=x", False),
    ("spec.machine.deeper=", True),
]


@pytest.mark.parametrize(("selector", "expected"), FIELD_CASES)
def test_field_selector(selector: str, expected: bool) -> None:
    assert parse_field_selector(selector)(INSTANCE) is expected


@pytest.mark.parametrize("bad", ["spec.machine", "spec.machine in (m1)", "!spec.machine", "a=b=c"])
def test_field_selector_errors(bad: str) -> None:
    with pytest.raises(BadRequest):
        parse_field_selector(bad)


def test_field_value_stringifies() -> None:
    assert field_value(INSTANCE, "spec.index") == "0"
    assert field_value(INSTANCE, "status.ready") == "true"
    assert field_value(INSTANCE, "status.missing") == ""
    assert field_value(INSTANCE, "spec.machine.x") == ""
