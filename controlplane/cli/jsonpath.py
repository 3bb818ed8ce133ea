"""kubectl's JSONPath templates for ``-o jsonpath=...``, ``-o custom-columns=...`` and ``--sort-by``.

kubectl's syntax is a template, not RFC 9535 JSONPath: literal text with ``{...}`` actions in it,
``{range EXPR}...{end}`` loops, ``{"\\n"}`` string literals, and paths that start with ``.`` (the
current object, ``@``) or ``$`` (the root). No Python JSONPath library parses that template (they
take one bare RFC 9535 expression each), and the paths themselves are a small subset, so this is
a small pure parser and evaluator (tests/unit/test_cli_jsonpath.py) rather than a dependency.

A path is steps: ``.name`` or ``['name']`` (a key), ``[N]`` (an index, negative from the end),
``[A:B]`` (a slice), ``[*]`` or ``.*`` (every element or value), ``..name`` (every ``name`` at any
depth) and the filter ``[?(@.path OP literal)]`` (OP one of == != < <= > >=; ``[?(@.path)]`` keeps
elements that have the path). A key that is missing yields nothing: kubectl's
``--allow-missing-template-keys`` default. Anything malformed is a ``TemplateError`` whose message
says where.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

Step = tuple[str, Any]  # ("key", name) | ("index", n) | ("slice", (a, b)) | ("all", None) | ("deep", name) | ("filter", Filter)
_NAME = re.compile(r"[A-Za-z_$][-\w$]*")
_FILTER = re.compile(r"\?\(\s*@((?:\.[-\w$]+|\[[^\]]*\])+)\s*(?:(==|!=|<=|>=|<|>)\s*(.+?))?\s*\)")
_OPERATORS = {"==": lambda a, b: a == b, "!=": lambda a, b: a != b, "<": lambda a, b: a < b,
              "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b}


class TemplateError(ValueError):
    """A template or path that cannot be parsed; the message quotes it."""


@dataclass(frozen=True)
class Filter:
    path: tuple[Step, ...]
    operator: str | None
    literal: Any


@dataclass(frozen=True)
class Path:
    """A parsed path; ``root`` when it starts at ``$`` rather than the current object."""

    steps: tuple[Step, ...]
    root: bool = False


def _literal(text: str, expression: str) -> Any:
    try:
        return json.loads(text.replace("'", '"') if text.startswith("'") else text)
    except ValueError as err:
        raise TemplateError(f"bad literal {text!r} in filter of {expression!r}") from err


def _bracket(inner: str, expression: str) -> Step:
    inner = inner.strip()
    if inner == "*":
        return ("all", None)
    if len(inner) >= 2 and inner[0] == inner[-1] and inner[0] in "'\"":
        return ("key", inner[1:-1])
    filtered = _FILTER.fullmatch(inner)
    if filtered:
        path, operator, literal = filtered.groups()
        value = _literal(literal, expression) if operator else None
        return ("filter", Filter(parse_path(path, what=expression).steps, operator, value))
    if re.fullmatch(r"-?\d*:-?\d*", inner):
        start, _, stop = inner.partition(":")
        return ("slice", (int(start) if start else None, int(stop) if stop else None))
    if re.fullmatch(r"-?\d+", inner):
        return ("index", int(inner))
    raise TemplateError(f"cannot parse [{inner}] in {expression!r}")


def _closing_bracket(text: str, start: int, expression: str) -> int:
    """The index of the ``]`` closing the ``[`` at ``start`` (brackets and quotes nest inside filters)."""
    depth, quote = 0, ""
    for pos in range(start, len(text)):
        char = text[pos]
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
            if depth == 0:
                return pos
    raise TemplateError(f"unclosed [ in {expression!r}")


def parse_path(text: str, *, what: str | None = None) -> Path:
    """Pure: ``.items[*].metadata.name``, ``$.spec``, ``{.status.phase}`` (braces optional) as a Path."""
    expression = what or text
    text = text.strip()
    if text.startswith("{") and text.endswith("}"):
        text = text[1:-1].strip()
    if _NAME.match(text) and not text.startswith("$"):  # "{metadata.name}": kubectl takes it too
        text = "." + text
    root = text.startswith("$")
    pos = 1 if root or text.startswith("@") else 0
    steps: list[Step] = []
    while pos < len(text):
        if text.startswith("..", pos):
            name = _NAME.match(text, pos + 2)
            if name is None:
                raise TemplateError(f"expected a field name after '..' in {expression!r}")
            steps.append(("deep", name.group()))
            pos = name.end()
        elif text[pos] == ".":
            if text.startswith(".*", pos):
                steps.append(("all", None))
                pos += 2
                continue
            name = _NAME.match(text, pos + 1)
            if name is None:
                if pos + 1 == len(text) and not steps:  # "." alone: the object itself
                    break
                raise TemplateError(f"expected a field name at {text[pos:pos + 10]!r} in {expression!r}")
            steps.append(("key", name.group()))
            pos = name.end()
        elif text[pos] == "[":
            end = _closing_bracket(text, pos, expression)
            steps.append(_bracket(text[pos + 1:end], expression))
            pos = end + 1
        else:
            raise TemplateError(f"unexpected {text[pos:pos + 10]!r} in {expression!r}; a path starts with '.'")
    return Path(tuple(steps), root)


def _deep(value: Any, name: str) -> Iterator[Any]:
    if isinstance(value, dict):
        if name in value:
            yield value[name]
        for child in value.values():
            yield from _deep(child, name)
    elif isinstance(value, list):
        for child in value:
            yield from _deep(child, name)


def _keep(item: Any, condition: Filter) -> bool:
    found = list(evaluate(Path(condition.path), item))
    if condition.operator is None:
        return bool(found)
    try:
        return any(_OPERATORS[condition.operator](value, condition.literal) for value in found)
    except TypeError:  # "a" < 3: not comparable, so not kept
        return False


def _step(value: Any, step: Step) -> Iterator[Any]:
    kind, arg = step
    if kind == "key":
        if isinstance(value, dict) and arg in value:
            yield value[arg]
    elif kind == "all":
        yield from value if isinstance(value, list) else value.values() if isinstance(value, dict) else ()
    elif kind == "index":
        if isinstance(value, list) and -len(value) <= arg < len(value):
            yield value[arg]
    elif kind == "slice":
        if isinstance(value, list):
            yield from value[arg[0]:arg[1]]
    elif kind == "deep":
        yield from _deep(value, arg)
    elif kind == "filter" and isinstance(value, list):
        yield from (item for item in value if _keep(item, arg))


def evaluate(path: Path, current: Any, *, root: Any = None) -> Iterator[Any]:
    """Pure: every value ``path`` selects from ``current`` (``$`` paths from ``root``)."""
    values = [root if path.root and root is not None else current]
    for step in path.steps:
        values = [found for value in values for found in _step(value, step)]
    yield from values


def text_of(value: Any) -> str:
    """How kubectl prints a selected value: strings bare, everything else as JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))


# ---- templates ------------------------------------------------------------------------------------

Node = tuple[str, Any]  # ("text", str) | ("path", Path) | ("range", (Path, list[Node]))


def _string_literal(action: str, template: str) -> str:
    try:
        if action.startswith("'"):
            action = '"' + action[1:-1].replace('"', '\\"') + '"'
        value = json.loads(action)
    except ValueError as err:
        raise TemplateError(f"bad string literal {action} in {template!r}") from err
    return str(value)


def _actions(template: str) -> Iterator[tuple[str, str]]:
    """("text", ...) and ("action", ...) pieces of a template, braces matched outside quotes."""
    pos = 0
    while pos < len(template):
        start = template.find("{", pos)
        if start < 0:
            yield ("text", template[pos:])
            return
        if start > pos:
            yield ("text", template[pos:start])
        end, quote = start + 1, ""
        while end < len(template) and (quote or template[end] != "}"):
            char = template[end]
            quote = ("" if char == quote else quote) if quote else (char if char in "'\"" else "")
            end += 1
        if end >= len(template):
            raise TemplateError(f"unclosed {{ in {template!r}")
        yield ("action", template[start + 1:end].strip())
        pos = end + 1


def parse_template(template: str) -> list[Node]:
    """Pure: the template as nodes; TemplateError for an unbalanced range/end or a bad path."""
    stack: list[list[Node]] = [[]]
    ranges: list[Path] = []
    for kind, piece in _actions(template):
        if kind == "text":
            stack[-1].append(("text", piece))
        elif piece.startswith(("'", '"')):
            stack[-1].append(("text", _string_literal(piece, template)))
        elif piece.startswith("range ") or piece == "range":
            ranges.append(parse_path(piece[len("range"):].strip() or ".", what=template))
            stack.append([])
        elif piece == "end":
            if not ranges:
                raise TemplateError(f"{{end}} without {{range}} in {template!r}")
            body = stack.pop()
            stack[-1].append(("range", (ranges.pop(), body)))
        elif not piece:
            raise TemplateError(f"empty {{}} in {template!r}")
        else:
            stack[-1].append(("path", parse_path(piece, what=template)))
    if ranges:
        raise TemplateError(f"{{range}} without {{end}} in {template!r}")
    return stack[0]


def _render(nodes: list[Node], current: Any, root: Any, out: list[str]) -> None:
    for kind, arg in nodes:
        if kind == "text":
            out.append(arg)
        elif kind == "path":
            out.append(" ".join(text_of(value) for value in evaluate(arg, current, root=root)))
        else:
            path, body = arg
            for item in evaluate(path, current, root=root):
                _render(body, item, root, out)


def render_template(nodes: list[Node], data: Any) -> str:
    """Pure: the parsed template applied to ``data`` (the object, or the List of a listing)."""
    out: list[str] = []
    _render(nodes, data, data, out)
    return "".join(out)
