"""kubectl's output habits without a server: JSONPath templates, custom columns, --sort-by, --no-headers."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from click.testing import CliRunner

from controlplane.cli.jsonpath import TemplateError, evaluate, parse_path, parse_template, render_template
from controlplane.cli.main import main
from controlplane.cli.outputs import parse_output, sort_items
from controlplane.cli.printers import render

NOW = dt.datetime(2025, 1, 1, 12, 0, 0, tzinfo=dt.UTC)


def instance(name: str, phase: str, created: str, restarts: int, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"kind": "Instance", "metadata": {"name": name, "creationTimestamp": created, "labels": labels or {}},
            "spec": {"unit": "web", "machine": "m1"}, "status": {"phase": phase, "restarts": restarts}}


ITEMS = [instance("web-1", "Running", "2025-01-01T11:00:00Z", 10, {"app": "web"}),
         instance("web-0", "Pending", "2025-01-01T10:00:00Z", 2),
         instance("web-2", "Running", "2025-01-01T11:30:00Z", 9)]
LIST = {"kind": "InstanceList", "items": ITEMS}


@pytest.mark.parametrize(("template", "want"), [
    ("{.kind}", "InstanceList"),
    ("{.items[*].metadata.name}", "web-1 web-0 web-2"),
    ("{items[*].metadata.name}", "web-1 web-0 web-2"),
    ('{range .items[*]}{.metadata.name}{"\\n"}{end}', "web-1\nweb-0\nweb-2\n"),
    ("{range .items[*]}{.metadata.name}:{.status.phase} {end}", "web-1:Running web-0:Pending web-2:Running "),
    ('{.items[?(@.status.phase=="Running")].metadata.name}', "web-1 web-2"),
    ("{.items[?(@.status.restarts>5)].metadata.name}", "web-1 web-2"),
    ("{.items[?(@.metadata.labels.app)].metadata.name}", "web-1"),
    ("{.items[0].metadata.labels}", '{"app":"web"}'),
    ("{.items[-1].metadata.name}", "web-2"),
    ("{.items[0:2].metadata.name}", "web-1 web-0"),
    ("{.items[0].metadata['name']}", "web-1"),
    ("{..phase}", "Running Pending Running"),
    ("{.items[0].nothing.here}", ""),
    ("names: {.items[5].metadata.name}.", "names: ."),
    ("{$.items[1].status.restarts}", "2"),
    ("{range .items[*]}[{range .metadata.labels.*}{@}{end}]{end}", "[web][][]"),
])
def test_templates(template: str, want: str) -> None:
    assert render_template(parse_template(template), LIST) == want


@pytest.mark.parametrize(("template", "why"), [
    ("{.items[", "unclosed"), ("{range .items[*]}{.x}", "without {end}"), ("{end}", "without {range}"),
    ("{.items[abc]}", "cannot parse [abc]"), ("{}", "empty"), ("{.a..}", "after '..'"), ("{.a b}", "unexpected"),
    ('{.items[?(@.x=="y)]}', "unclosed"), ('{.items[?(@.x==y)]}', "bad literal"), ("{'unterminated}", "unclosed"),
])
def test_bad_templates(template: str, why: str) -> None:
    with pytest.raises(TemplateError, match=why.replace("[", r"\[").replace("{", r"\{")):
        parse_template(template)


def test_paths_with_and_without_braces_agree() -> None:
    obj = ITEMS[0]
    assert list(evaluate(parse_path(".metadata.name"), obj)) == list(evaluate(parse_path("{.metadata.name}"), obj))
    assert list(evaluate(parse_path("."), obj)) == [obj]


def test_custom_columns_and_no_headers() -> None:
    columns = parse_output("custom-columns=NAME:.metadata.name,PHASE:{.status.phase},APP:.metadata.labels.app")
    assert render("instances", ITEMS, columns).splitlines() == [
        "NAME    PHASE     APP", "web-1   Running   web", "web-0   Pending   <none>", "web-2   Running   <none>"]
    assert render("instances", ITEMS, columns, headers=False).splitlines()[0] == "web-1   Running   web"
    table = render("instances", ITEMS, "table", headers=False, now=NOW).splitlines()
    assert len(table) == 3 and table[0].startswith("web-1 ") and "NAME" not in table[0]
    for bad in ("custom-columns=NAME", "custom-columns=:.a", "custom-columns=A:.b[", "custom-columns=A:"):
        with pytest.raises(ValueError):
            parse_output(bad)


def test_sort_by() -> None:
    def names(path: str) -> list[str]:
        return [i["metadata"]["name"] for i in sort_items(ITEMS, parse_path(path))]

    assert names(".metadata.creationTimestamp") == ["web-0", "web-1", "web-2"]
    assert names("{.status.restarts}") == ["web-0", "web-2", "web-1"]  # by number: 2 < 9 < 10
    assert names(".metadata.labels.app") == ["web-0", "web-2", "web-1"]  # missing first, stable
    assert sort_items(ITEMS, None) == ITEMS


def test_jsonpath_of_one_object_is_the_object_itself() -> None:
    assert render("instances", ITEMS[:1], "jsonpath={.metadata.name}", single=True) == "web-1"
    assert render("instances", ITEMS, "jsonpath={.kind}") == "InstanceList"


@pytest.mark.parametrize(("args", "why"), [
    (["-o", "jsonpath={.items["], "error: -o/--output: unclosed {"),
    (["-o", "jsonpath={range .items[*]}"], "error: -o/--output: {range} without {end}"),
    (["-o", "custom-columns=NAME"], "error: -o/--output: custom-columns wants HEADER:PATH"),
    (["-o", "xml"], "error: -o/--output: unknown output format 'xml'"),
    (["--sort-by", ".a["], "error: --sort-by: unclosed ["),
])
def test_bad_expressions_are_one_line_and_exit_2(args: list[str], why: str) -> None:
    result = CliRunner().invoke(main, ["get", "instances", *args, "--server", "http://127.0.0.1:9"])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [result.output.strip()] and result.output.startswith(why), \
        result.output
