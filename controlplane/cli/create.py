"""``cpctl create secret NAME --from-literal KEY=VALUE --from-file [KEY=]PATH``: kubectl's habit.

A Secret can also be written with ``cpctl apply -f`` (``kind: Secret``, ``data: {key: value}``);
this command spares writing the file. Values are sent once and never printed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from controlplane.secretref import valid_key

from .common import call, ref
from .config import connection_options
from .dryrun import CLIENT, NONE, dry_run_option, dry_run_suffix, print_objects
from .rest import RestClient


@click.group("create")
def create_group() -> None:
    """Create an object from command-line values (see also: apply -f)."""


def parse_literal(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` (the value may contain '=')."""
    key, sep, value = text.partition("=")
    if not sep or not valid_key(key):
        raise click.BadParameter(f"expected KEY=VALUE with KEY of letters, digits, '-', '_', '.'; got key {key!r}",
                                 param_hint="--from-literal")
    return key, value


def read_file_entry(text: str) -> tuple[str, str]:
    """``[KEY=]PATH``: the file's text (UTF-8) under KEY, or under the file's name."""
    key, sep, path = text.partition("=")
    if not sep:
        key, path = Path(text).name, text
    if not valid_key(key):
        raise click.BadParameter(f"{key!r} is not a valid key; name one with KEY=PATH", param_hint="--from-file")
    try:
        return key, Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise click.BadParameter(f"cannot read {path!r}: {err}", param_hint="--from-file") from err


def secret_object(name: str, literals: tuple[str, ...], files: tuple[str, ...]) -> dict[str, Any]:
    data: dict[str, str] = {}
    for key, value in [*(parse_literal(t) for t in literals), *(read_file_entry(t) for t in files)]:
        if key in data:
            raise click.BadParameter(f"key {key!r} is given twice", param_hint="--from-literal/--from-file")
        data[key] = value
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "data": data}


@create_group.command("secret")
@click.argument("name")
@click.option("--from-literal", "literals", multiple=True, metavar="KEY=VALUE", help="a key and its value")
@click.option("--from-file", "files", multiple=True, metavar="[KEY=]PATH",
              help="a key (default: the file's name) and the file's content")
@dry_run_option
@connection_options
def create_secret_command(name: str, literals: tuple[str, ...], files: tuple[str, ...], dry_run: str) -> None:
    """Create Secret NAME (units use it with spec.secretEnv: {VAR: NAME/KEY})."""
    if not literals and not files:
        raise click.UsageError("give at least one --from-literal KEY=VALUE or --from-file [KEY=]PATH")
    secret = secret_object(name, literals, files)
    if dry_run == CLIENT:
        print_objects([secret])  # the keys only: a value is never printed
        return

    def go(api: RestClient) -> None:
        api.create("secrets", secret, dry_run=dry_run != NONE)
        click.echo(f"{ref('secrets', name)} created{dry_run_suffix(dry_run)}")

    call(go)
