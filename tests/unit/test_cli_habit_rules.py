"""The pure parts of cpctl's kubectl habits: apply's three-way merge, diff rendering, label
parsing, manifest loading, edit's reading back, rollout's choices and the unit revision history."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import pytest

from controlplane.api.http import merge_patch
from controlplane.api.revisions import MAX_REVISIONS, bounded, history_of, next_history
from controlplane.cli.apply import load_manifests
from controlplane.cli.common import CLIError
from controlplane.cli.diff import render_diff, shown
from controlplane.cli.edit import edited_object
from controlplane.cli.label import parse_changes, plan_changes
from controlplane.cli.merge import (
    LAST_APPLIED,
    apply_patch,
    last_applied,
    recorded,
    three_way_patch,
    with_record,
)
from controlplane.cli.rollout import pick_revision, rolled_back
from controlplane.schemas import load_object


def live_of(obj: dict[str, Any], **extra_spec: Any) -> dict[str, Any]:
    """What the server would hold after creating ``obj`` with apply (defaults, server metadata)."""
    stored = load_object(obj["kind"], with_record(obj))
    stored["spec"].update(extra_spec)
    stored["metadata"].update(uid="u1", resourceVersion="7", generation=1, creationTimestamp="2026-01-01T00:00:00Z")
    return stored


MACHINE = {"kind": "Machine", "metadata": {"name": "m1", "labels": {"disk": "ssd"}}}
UNIT = {"kind": "Unit", "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {"image": "local/web:1", "replicas": 2, "env": {"A": "1", "B": "2"}}}


# --- apply's three-way merge -------------------------------------------------------------------

def test_reapply_unchanged_file_is_an_empty_patch() -> None:
    assert apply_patch(UNIT, live_of(UNIT)) == {}


def test_a_field_set_elsewhere_survives_reapply_with_new_labels() -> None:
    live = live_of(MACHINE, unschedulable=True)  # cordoned since the last apply
    changed = {**MACHINE, "metadata": {"name": "m1", "labels": {"disk": "ssd", "zone": "a"}}}
    patch = apply_patch(changed, live)
    assert "spec" not in patch
    result = merge_patch(live, patch)
    assert result["spec"]["unschedulable"] is True
    assert result["metadata"]["labels"] == {"disk": "ssd", "zone": "a"}
    assert last_applied(result)["metadata"]["labels"] == {"disk": "ssd", "zone": "a"}


def test_a_field_removed_from_the_file_is_removed() -> None:
    live = live_of(UNIT)
    changed = {**UNIT, "spec": {"image": "local/web:1", "env": {"A": "1"}}}  # no replicas, no B
    patch = apply_patch(changed, live)
    assert patch["spec"] == {"replicas": None, "env": {"B": None}}
    result = merge_patch(live, patch)
    assert "replicas" not in result["spec"] and result["spec"]["env"] == {"A": "1"}


def test_a_field_never_in_the_file_is_left_when_others_are_removed() -> None:
    live = live_of(UNIT, replicas=5)  # scaled; the file says 2
    assert apply_patch(UNIT, live)["spec"] == {"replicas": 2}  # the file's own value wins, as kubectl
    no_replicas = {**UNIT, "spec": {"image": "local/web:1", "env": {"A": "1", "B": "2"}}}
    live_without = live_of(no_replicas, replicas=5)
    assert "spec" not in apply_patch(no_replicas, live_without)


def test_without_a_record_nothing_is_removed() -> None:
    live = load_object("Unit", {**UNIT, "metadata": {"name": "web", "labels": {"app": "web", "team": "x"}}})
    patch = apply_patch(UNIT, live)
    assert "labels" not in patch["metadata"]  # team stays: no earlier apply asked for it
    assert LAST_APPLIED in patch["metadata"]["annotations"]


def test_three_way_patch_nested_and_lists() -> None:
    last = {"a": {"x": 1, "y": 2}, "l": [1, 2], "gone": 1}
    new = {"a": {"x": 1}, "l": [1], "n": {"k": None, "v": 1}}
    live = {"a": {"x": 1, "y": 2, "z": 3}, "l": [1, 2], "gone": 1, "other": 4}
    assert three_way_patch(last, new, live) == {"gone": None, "a": {"y": None}, "l": [1], "n": {"v": 1}}


def test_a_secret_record_has_its_keys_only() -> None:
    secret = {"kind": "Secret", "metadata": {"name": "s"}, "data": {"password": "hunter2"}}
    assert "hunter2" not in recorded(secret)
    assert json.loads(recorded(secret))["data"] == {"password": ""}
    live = live_of_secret = load_object("Secret", with_record(secret))
    assert apply_patch(secret, live_of_secret) == {}
    removed = {**secret, "data": {"token": "t"}}
    assert apply_patch(removed, live)["data"] == {"password": None, "token": "t"}


# --- diff ---------------------------------------------------------------------------------------

def test_render_diff_hides_server_fields_and_the_record() -> None:
    live = live_of(UNIT)
    assert render_diff("unit/web", live, live) == ""
    merged = merge_patch(live, {"spec": {"image": "local/web:2"}, "metadata": {"resourceVersion": "8"}})
    text = render_diff("unit/web", live, merged)
    assert text.startswith("--- live/unit/web\n+++ merged/unit/web\n")
    assert "-  image: local/web:1\n" in text and "+  image: local/web:2\n" in text
    assert "resourceVersion" not in text and LAST_APPLIED not in text
    assert "status" not in shown(live)


def test_render_diff_of_a_new_object_and_of_secrets() -> None:
    assert render_diff("unit/web", None, live_of(UNIT)).count("\n+") > 3
    before = {"kind": "Secret", "metadata": {"name": "s"}, "data": {"a": "one", "b": "same"}}
    after = {"kind": "Secret", "metadata": {"name": "s"}, "data": {"a": "two", "b": "same"}}
    text = render_diff("secret/s", before, after)
    assert "one" not in text and "two" not in text
    assert "-  a: '<redacted: before>'" in text and "+  a: '<redacted: after>'" in text


# --- label / annotate ---------------------------------------------------------------------------

def test_parse_changes() -> None:
    assert parse_changes(["a=1", "b=", "c-", "d=x=y"]) == ({"a": "1", "b": "", "d": "x=y"}, ["c"])
    for bad in (["a"], ["=1"], ["-"], ["a=1", "a-"], ["a=1", "a=2"]):
        with pytest.raises(click.BadParameter):
            parse_changes(bad)


def test_plan_changes_needs_overwrite_to_change_a_value() -> None:
    current = {"a": "1", "b": "2"}
    with pytest.raises(CLIError, match="--overwrite"):
        plan_changes(current, {"a": "9"}, [], overwrite=False)
    assert plan_changes(current, {"a": "9"}, [], overwrite=True) == ({"a": "9"}, [])
    assert plan_changes(current, {"a": "1", "c": "3"}, ["b"], overwrite=False) == ({"c": "3", "b": None}, [])
    patch, warnings = plan_changes(current, {}, ["zz"], overwrite=False)
    assert patch == {} and warnings == ["warning: label 'zz' not found"]


# --- manifests ----------------------------------------------------------------------------------

def unit_yaml(name: str, image: str = "local/web:1") -> str:
    return f"kind: Unit\nmetadata: {{name: {name}}}\nspec: {{image: {image}}}\n"


def test_load_manifests_several_files_and_a_directory(tmp_path: Path) -> None:
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "b.yaml").write_text(unit_yaml("b"))
    (folder / "a.yml").write_text(unit_yaml("a"))
    (folder / "c.json").write_text(json.dumps({"kind": "Unit", "metadata": {"name": "c"}, "spec": {"image": "x"}}))
    (folder / "notes.txt").write_text("not a manifest")
    single = tmp_path / "z.yaml"
    single.write_text(unit_yaml("z"))
    names = [o["metadata"]["name"] for o in load_manifests([str(single), str(folder)])]
    assert names == ["z", "a", "b", "c"]


def test_load_manifests_one_bad_file_fails_all(tmp_path: Path) -> None:
    (tmp_path / "good.yaml").write_text(unit_yaml("good"))
    (tmp_path / "bad.yaml").write_text(unit_yaml("bad", image="''").replace("spec: {image: ''}", "spec: {replicas: -1}"))
    with pytest.raises(CLIError, match="bad.yaml"):
        load_manifests([str(tmp_path)])
    (tmp_path / "bad.yaml").write_text(unit_yaml("good"))
    with pytest.raises(CLIError, match="give each object once"):
        load_manifests([str(tmp_path)])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CLIError, match="no \\*.yaml"):
        load_manifests([str(empty)])


# --- edit ---------------------------------------------------------------------------------------

def test_edited_object() -> None:
    original = live_of(UNIT)
    original["status"] = {"replicas": 2}
    import yaml

    same = yaml.safe_dump({k: v for k, v in original.items() if k != "status"})
    assert edited_object(same, original, source="f") is None
    changed = same.replace("local/web:1", "local/web:2")
    assert edited_object(changed, original, source="f")["spec"]["image"] == "local/web:2"  # type: ignore[index]
    with pytest.raises(CLIError, match="cannot be changed"):
        edited_object(same.replace("name: web", "name: other"), original, source="f")
    with pytest.raises(CLIError, match="not valid YAML"):
        edited_object("kind: [unclosed\n", original, source="f")


# --- rollout ------------------------------------------------------------------------------------

def test_pick_revision_and_rolled_back() -> None:
    revisions = [{"revision": 1, "template": {"image": "a"}}, {"revision": 2, "template": {"image": "b"}},
                 {"revision": 3, "template": {"image": "c"}}]
    assert pick_revision(revisions, None)["revision"] == 2
    assert pick_revision(revisions, 1)["revision"] == 1
    with pytest.raises(CLIError, match="not found"):
        pick_revision(revisions, 9)
    with pytest.raises(CLIError, match="no earlier revision"):
        pick_revision(revisions[:1], None)
    unit = {"kind": "Unit", "metadata": {"name": "web", "resourceVersion": "5"},
            "spec": {"image": "c", "replicas": 4, "env": {"X": "1"}}, "status": {}}
    assert rolled_back(unit, {"image": "a"}) == {"kind": "Unit", "metadata": {"name": "web", "resourceVersion": "5"},
                                                  "spec": {"image": "a", "replicas": 4}}


def unit_at(image: str, *, generation: int, replicas: int = 1, uid: str = "u1") -> dict[str, Any]:
    return {"metadata": {"name": "web", "uid": uid, "generation": generation, "creationTimestamp": "t0",
                         "annotations": {}}, "spec": {"image": image, "replicas": replicas}}


def test_history_records_template_changes_only() -> None:
    one = unit_at("a", generation=1)
    assert [e["revision"] for e in history_of(one, [])] == [1]
    assert next_history(one, unit_at("a", generation=2, replicas=5), [], timestamp="t1") is None  # scaling
    two = unit_at("b", generation=2)
    history = next_history(one, two, [], timestamp="t1")
    assert history is not None
    assert [(e["revision"], e["template"]["image"], e["generation"]) for e in history] == [(1, "a", 1), (2, "b", 2)]
    assert "replicas" not in history[0]["template"]
    three = next_history(two, unit_at("a", generation=3), history, timestamp="t2")
    assert three is not None and [e["revision"] for e in three] == [1, 2, 3]
    assert history_of(unit_at("a", generation=3), three) == three
    # a unit deleted and created again under the same name starts afresh
    assert [e["revision"] for e in history_of(unit_at("z", generation=1, uid="u2"), three)] == [1]


def test_history_is_bounded() -> None:
    many = [{"revision": n, "uid": "u1", "template": {"image": "x" * 1000}} for n in range(1, 30)]
    assert [e["revision"] for e in bounded(many)] == list(range(30 - MAX_REVISIONS, 30))
    huge = [{"revision": n, "uid": "u1", "template": {"image": "x" * 300_000}} for n in range(1, 5)]
    assert [e["revision"] for e in bounded(huge)] == [3, 4]


def test_a_list_the_server_defaulted_is_unchanged() -> None:
    unit = {"kind": "Unit", "metadata": {"name": "api"}, "spec": {"image": "x", "ports": [{"containerPort": 8080}]}}
    live = live_of(unit)
    assert live["spec"]["ports"] == [{"containerPort": 8080, "hostPort": 0, "protocol": "tcp"}]
    assert apply_patch(unit, live) == {}
    other = {**unit, "spec": {"image": "x", "ports": [{"containerPort": 9090}]}}
    assert apply_patch(other, live)["spec"] == {"ports": [{"containerPort": 9090}]}
