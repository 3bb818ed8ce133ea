"""tools/check_shape.py, the house shape rules of `make lint`: module and function lengths."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

TOOL = Path(__file__).resolve().parents[2] / "tools" / "check_shape.py"


@pytest.fixture(scope="module")
def shape() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_shape", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_shape"] = module
    spec.loader.exec_module(module)
    return module


def _function(name: str, body_lines: int, *, indent: str = "") -> str:
    body = "".join(f"{indent}    x = {i}\n" for i in range(body_lines))
    return f"{indent}def {name}() -> None:\n{body}"


def test_a_short_module_passes(shape: ModuleType) -> None:
    assert shape.check_source("m.py", _function("f", 59)) == []  # 60 lines with the def


def test_a_long_function_is_named_with_its_line(shape: ModuleType) -> None:
    source = "import os\n\n\n" + _function("f", 60)
    assert shape.check_source("m.py", source) == [
        "m.py:4: f has 61 lines (max 60; or say why above its def with '# long: ...')"
    ]


def test_a_long_method_and_a_nested_function_are_named_by_path(shape: ModuleType) -> None:
    source = "class C:\n" + _function("run", 61, indent="    ") + "\n\ndef outer() -> None:\n" \
        + _function("inner", 61, indent="    ")
    problems = shape.check_source("m.py", source)
    assert [p.split(": ")[1].split(" has")[0] for p in problems] == ["C.run", "outer", "outer.inner"]


def test_a_long_mark_directly_above_excuses_it(shape: ModuleType) -> None:
    marked = "# long: one table, reads best whole\n" + _function("f", 70)
    assert shape.check_source("m.py", marked) == []
    decorated = "import functools\n\n\n# long: one table\n@functools.cache\n" + _function("f", 70)
    assert shape.check_source("m.py", decorated) == []
    # a blank line between the mark and the def does not count
    assert len(shape.check_source("m.py", "# long: no\n\n" + _function("f", 70))) == 1
    # nor does a plain comment
    assert len(shape.check_source("m.py", "# it is long\n" + _function("f", 70))) == 1


def test_a_long_module_is_one_problem(shape: ModuleType) -> None:
    source = "".join(f"X{i} = {i}\n" for i in range(401))
    assert shape.check_source("big.py", source) == ["big.py:1: module has 401 lines (max 400)"]
    assert shape.check_source("ok.py", source.split("X400")[0]) == []


def test_main_exit_status_lists_offenders(shape: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "fine.py").write_text(_function("f", 3))
    assert shape.main([str(tmp_path / "pkg")]) == 0
    (tmp_path / "pkg" / "long.py").write_text(_function("g", 80))
    assert shape.main([str(tmp_path / "pkg")]) == 1
    out = capsys.readouterr()
    assert out.out.strip().endswith("g has 81 lines (max 60; or say why above its def with '# long: ...')")
    assert "1 shape problem(s)" in out.err
