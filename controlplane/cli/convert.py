"""``cpctl convert FILE.service``: a fleet unit file as the Unit it means (YAML on stdout), and one
line on stderr for each thing of it that could not be mapped. ``cpctl apply -f X.service`` reads
a unit file through ``unit_file_objects`` the same way. The converting itself is pure and lives in
controlplane/fleetunit.py."""

from __future__ import annotations

from pathlib import PurePath
from typing import IO, Any

import click

from controlplane.fleetunit import UnitFileError, convert

from .common import CLIError
from .printers import dump_yaml
from .terminal import echo


def unit_file_objects(text: str, *, source: str) -> list[dict[str, Any]]:
    """The Unit of the fleet unit file ``source``; what was not mapped goes to stderr, a line each."""
    try:
        conversion = convert(text, filename=source)
    except UnitFileError as err:
        raise CLIError(f"{source}: {err}") from err
    for line in conversion.unmapped:
        echo(f"warning: {PurePath(source).name}: {line}", err=True)
    return [conversion.unit]


@click.command("convert")
@click.argument("file", type=click.File("r"), required=False, metavar="FILE.service")
@click.option("-f", "--filename", "option_file", type=click.File("r"), metavar="FILE.service",
              help="the fleet unit file (the same as the argument)")
def convert_command(file: IO[str] | None, option_file: IO[str] | None) -> None:
    """Print the Unit (YAML) a fleet unit file means; what could not be mapped goes to stderr.

    NAME.service becomes unit NAME; a template NAME@.service becomes unit NAME (instances NAME-0,
    NAME-1, ...). Apply it with `cpctl apply -f FILE.service`.
    """
    source = file or option_file
    if source is None or (file is not None and option_file is not None):
        raise click.UsageError("give one fleet unit file, as FILE or -f FILE")
    name = getattr(source, "name", "-")
    if not str(name).endswith(".service"):
        raise click.UsageError(f"{name}: a fleet unit file's name ends in .service (it names the unit)")
    [unit] = unit_file_objects(source.read(), source=str(name))
    echo(dump_yaml(unit).rstrip("\n"))
