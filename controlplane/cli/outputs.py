"""The ``-o`` formats that take an argument, ``--sort-by`` and ``--no-headers``: kubectl's habits.

``-o jsonpath=TEMPLATE`` applies a kubectl JSONPath template (cli/jsonpath.py) to the object, or
to the ``<Kind>List`` of a listing; ``-o custom-columns=NAME:PATH,...`` prints a table with one
column per path (several values joined by ``,``, none as ``<none>``); ``--sort-by=PATH`` orders
a listing by the value at PATH (numbers by number, the rest as text, objects without it first);
``--no-headers`` drops the header line of any table. A bad template, column spec or path is one
``error: ...`` line on stderr and exit 2 (a usage error, without click's usage banner). Everything
here is pure. cli/jsonpath.py is imported only when a template or path is given (start-up).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import click

from .common import CLIError

if TYPE_CHECKING:
    from .jsonpath import Path

PLAIN_OUTPUTS = ("table", "wide", "json", "yaml", "name")
NONE = "<none>"


class OutputFormat(NamedTuple):
    """``-o`` as parsed: ``kind`` is a plain format, ``jsonpath`` or ``custom-columns``."""

    kind: str
    template: list[Any] | None = None  # jsonpath's nodes
    columns: tuple[tuple[str, Path], ...] = ()

    @property
    def is_table(self) -> bool:
        return self.kind in ("table", "wide", "custom-columns")


def parse_columns(spec: str) -> tuple[tuple[str, Path], ...]:
    """Pure: ``NAME:.metadata.name,PHASE:{.status.phase}`` as (header, path) pairs."""
    from .jsonpath import TemplateError, parse_path

    columns = []
    for part in spec.split(","):
        header, sep, path = part.partition(":")
        if not sep or not header.strip() or not path.strip():
            raise TemplateError(f"custom-columns wants HEADER:PATH[,HEADER:PATH...], got {part!r}")
        columns.append((header.strip(), parse_path(path)))
    return tuple(columns)


def parse_output(text: str) -> OutputFormat:
    """Pure: ``-o``'s value; TemplateError for a bad template, ValueError for an unknown format."""
    name, sep, arg = text.partition("=")
    if not sep and name in PLAIN_OUTPUTS:
        return OutputFormat(name)
    from .jsonpath import TemplateError, parse_template

    if sep and name == "jsonpath":
        if not arg:
            raise TemplateError("jsonpath wants a template, e.g. jsonpath='{.metadata.name}'")
        return OutputFormat("jsonpath", template=parse_template(arg))
    if sep and name == "custom-columns":
        return OutputFormat("custom-columns", columns=parse_columns(arg))
    known = ", ".join(PLAIN_OUTPUTS)
    raise ValueError(f"unknown output format {text!r}; expected one of {known}, jsonpath=TEMPLATE, "
                     "custom-columns=HEADER:PATH,...")


class BadExpression(CLIError):
    """A template, column spec or path cpctl cannot use: one line, exit 2 (usage)."""

    exit_code = 2


def _flag(param: click.Parameter | None) -> str:
    return "/".join(param.opts) if param is not None and param.opts else "the value"


class OutputParam(click.ParamType):
    name = "format"

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "FORMAT"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> OutputFormat:
        if isinstance(value, OutputFormat):
            return value
        try:
            return parse_output(str(value))
        except ValueError as err:  # TemplateError included
            raise BadExpression(f"{_flag(param)}: {err}") from err

    def shell_complete(self, ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
        from click.shell_completion import CompletionItem

        choices = [*PLAIN_OUTPUTS, "jsonpath=", "custom-columns="]
        return [CompletionItem(choice) for choice in choices if choice.startswith(incomplete)]


class SortByParam(click.ParamType):
    name = "path"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Path:
        from .jsonpath import Path, TemplateError, parse_path

        if isinstance(value, Path):
            return value
        try:
            return parse_path(str(value))
        except TemplateError as err:
            raise BadExpression(f"{_flag(param)}: {err}") from err


NO_HEADERS_HELP = "print tables without their header line"


def no_headers_option(func: Any) -> Any:
    """``--no-headers`` on a command that prints a table."""
    return click.option("--no-headers", is_flag=True, help=NO_HEADERS_HELP)(func)


def sort_key(value: list[Any]) -> tuple[int, float, str]:
    """Missing values first, then numbers by value, then everything else by its text."""
    from .jsonpath import text_of

    if not value:
        return (0, 0.0, "")
    first = value[0]
    if isinstance(first, int | float) and not isinstance(first, bool):
        return (1, float(first), "")
    return (2, 0.0, text_of(first))


def sort_items(items: list[dict[str, Any]], path: Path | None) -> list[dict[str, Any]]:
    """Pure: ``items`` ordered by the value at ``path`` (stable; unchanged without a path)."""
    if path is None:
        return list(items)
    from .jsonpath import evaluate

    return sorted(items, key=lambda item: sort_key(list(evaluate(path, item, root=item))))


def column_rows(items: list[dict[str, Any]], columns: tuple[tuple[str, Path], ...]) -> tuple[list[str], list[list[str]]]:
    """Pure: the headers and the cells of ``-o custom-columns``."""
    from .jsonpath import evaluate, text_of

    rows = []
    for item in items:
        row = []
        for _, path in columns:
            values = [text_of(value) for value in evaluate(path, item, root=item)]
            row.append(",".join(values) if values else NONE)
        rows.append(row)
    return [header for header, _ in columns], rows


def jsonpath_text(output: OutputFormat, data: Any) -> str:
    from .jsonpath import render_template

    assert output.template is not None
    return render_template(output.template, data)
