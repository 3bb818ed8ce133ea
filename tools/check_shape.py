"""House shape rules, checked by ``make lint``: no module over 400 lines, no function over 60.

A function may be longer when a comment line ``# long: <reason>`` sits directly above its
``def`` (above its decorators, if any): the reason is then part of the code, next to it.
Lines are counted as ``ast`` sees them (``lineno`` to ``end_lineno``, docstring included).
Exit status 1, with one line per offender, when anything breaks a rule.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
LONG_MARK = "# long:"
DEFAULT_ROOTS = ("controlplane", "agent")

FunctionNode = ast.FunctionDef | ast.AsyncFunctionDef


def _functions(tree: ast.AST) -> Iterator[tuple[str, FunctionNode]]:
    """Every function and method with its dotted name (``Class.method``, ``outer.inner``)."""

    def walk(node: ast.AST, prefix: str) -> Iterator[tuple[str, FunctionNode]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, FunctionNode):
                name = f"{prefix}{child.name}"
                yield name, child
                yield from walk(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                yield from walk(child, f"{prefix}{child.name}.")
            else:
                yield from walk(child, prefix)

    yield from walk(tree, "")


def _marked_long(lines: list[str], node: FunctionNode) -> bool:
    """True when the line just above the def (or its first decorator) is a ``# long:`` comment."""
    first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
    above = first - 2  # lines are 1-based; the one above ``first``
    return above >= 0 and lines[above].strip().startswith(LONG_MARK)


def check_source(path: str, source: str) -> list[str]:
    """The offences of one module, as ``path:line: message`` lines."""
    lines = source.splitlines()
    problems: list[str] = []
    if len(lines) > MAX_MODULE_LINES:
        problems.append(f"{path}:1: module has {len(lines)} lines (max {MAX_MODULE_LINES})")
    for name, node in _functions(ast.parse(source, filename=path)):
        length = (node.end_lineno or node.lineno) - node.lineno + 1
        if length > MAX_FUNCTION_LINES and not _marked_long(lines, node):
            problems.append(f"{path}:{node.lineno}: {name} has {length} lines (max {MAX_FUNCTION_LINES}; "
                            f"or say why above its def with '{LONG_MARK} ...')")
    return problems


def python_files(roots: list[str]) -> list[Path]:
    files: list[Path] = []
    for root in roots:
        base = Path(root)
        files.extend([base] if base.is_file() else sorted(base.rglob("*.py")))
    return files


def main(argv: list[str]) -> int:
    roots = argv or list(DEFAULT_ROOTS)
    problems = [p for path in python_files(roots) for p in check_source(str(path), path.read_text())]
    for problem in problems:
        print(problem)
    if problems:
        print(f"{len(problems)} shape problem(s)", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
