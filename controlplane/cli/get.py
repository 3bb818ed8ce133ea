"""``cpctl get KIND [NAME]``: list or show objects in a table or as json/yaml/name, a JSONPath
template or custom columns (cli/outputs.py), sorted by a field or not, and optionally keep watching
them (re-listing by itself when the watch expires with 410)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from controlplane.errors import Gone

from .common import call, ref, resolve_kind
from .completion import complete_kind, complete_name
from .config import connection_options
from .durations import DURATION
from .outputs import OutputFormat, OutputParam, SortByParam, no_headers_option, sort_items
from .printers import render
from .rest import RestClient
from .terminal import echo

if TYPE_CHECKING:
    from .jsonpath import Path


def kind_argument(ctx: click.Context, param: click.Parameter, value: str) -> str:
    return resolve_kind(value)


def _print(text: str, output: OutputFormat | None = None) -> None:
    """``text`` and a newline; a JSONPath template's text as it is (kubectl's way: the template says)."""
    if text:
        echo(text, nl=output is None or output.kind != "jsonpath")


def _watch(
    api: RestClient, resource: str, output: OutputFormat, *, label_selector: str | None, field_selector: str | None,
    items: list[dict[str, Any]], revision: str, timeout: float | None, headers: bool,
) -> None:
    """Print the current objects, then each change as it happens."""
    header_done = not headers

    def show(objects: list[dict[str, Any]]) -> None:
        nonlocal header_done
        if not objects:
            return
        if output.is_table:
            _print(render(resource, objects, output, headers=not header_done), output)
            header_done = True
        elif output.kind == "name":
            _print("\n".join(ref(resource, (o.get("metadata") or {}).get("name", "")) for o in objects))
        else:
            for obj in objects:
                _print(render(resource, [obj], output, single=True), output)

    show(items)
    while True:
        try:
            for event in api.watch(
                resource, resource_version=revision, label_selector=label_selector,
                field_selector=field_selector, timeout_seconds=timeout,
            ):
                obj = event.get("object") or {}
                revision = str((obj.get("metadata") or {}).get("resourceVersion") or revision)
                if event.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                    show([obj])
            return  # the server ended the stream (timeout)
        except Gone:
            items, revision = api.list_all(resource, label_selector=label_selector, field_selector=field_selector)
            show(items)


@click.command("get")
@click.argument("kind", callback=kind_argument, metavar="KIND", shell_complete=complete_kind)
@click.argument("name", required=False, shell_complete=complete_name)
@click.option("-o", "--output", type=OutputParam(), default="table", show_default=True,
              help="table, wide, json, yaml, name, jsonpath='{.metadata.name}' or custom-columns=NAME:.metadata.name,...")
@click.option("--sort-by", type=SortByParam(), metavar="PATH", help="order a listing by a field, e.g. .metadata.name")
@no_headers_option
@click.option("-l", "--selector", "label_selector", metavar="SELECTOR",
              help="label selector: k=v, k!=v, 'k in (a,b)', k, !k (comma-separated, ANDed)")
@click.option("--field-selector", metavar="SELECTOR", help="field selector, e.g. spec.machine=m1")
@click.option("-w", "--watch", is_flag=True, help="after listing, print changes as they happen")
@click.option("--watch-timeout", type=DURATION, hidden=True,
              help="end --watch after this many seconds (scripts, tests)")
@connection_options
def get_command(
    kind: str, name: str | None, output: OutputFormat, sort_by: Path | None, no_headers: bool,
    label_selector: str | None, field_selector: str | None, watch: bool, watch_timeout: float | None,
) -> None:
    """Show objects of KIND (unit/u, machine/m, instance/i, endpoints/ep, events/ev, secret/sec)."""
    resource = kind
    if name:
        by_name = f"metadata.name={name}"
        field_selector = f"{field_selector},{by_name}" if field_selector else by_name

    def go(api: RestClient) -> None:
        if name and not watch:
            obj = api.get(resource, name)
            _print(render(resource, [obj], output, single=True, headers=not no_headers), output)
            return
        items, revision = api.list_all(resource, label_selector=label_selector, field_selector=field_selector)
        items = sort_items(items, sort_by)
        if watch:
            _watch(api, resource, output, label_selector=label_selector, field_selector=field_selector,
                   items=items, revision=revision, timeout=watch_timeout, headers=not no_headers)
            return
        if not items and output.is_table:
            echo(f"No {resource} found.", err=True)
            return
        _print(render(resource, items, output, resource_version=revision, headers=not no_headers), output)

    call(go)

