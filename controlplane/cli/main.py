"""The ``cpctl`` entry point: the click group and the registration of every verb.

Each verb lives in its own module; this one only wires them together, so ``cpctl --help``
lists them in one place. ``python -m controlplane.cli.main`` runs it too (tests use that).
"""

from __future__ import annotations

import importlib

import click

from controlplane import __version__

from .apply import apply_command
from .config import connection_options
from .create import create_group
from .delete import delete_command
from .describe import describe_command
from .get import get_command
from .logs import logs_command
from .machines import (
    cordon_command,
    drain_command,
    list_machines_command,
    list_units_command,
    uncordon_command,
)
from .run import run_command
from .scale import scale_command
from .tokens import token_group
from .version import version_command

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, "--version", prog_name="cpctl", message="%(prog)s %(version)s")
@connection_options
def main() -> None:
    """cpctl: run and inspect units on a controlplane cluster.

    The server comes from --server, else CPCTL_SERVER, else ~/.config/cpctl/config.yaml
    (likewise --token/CPCTL_TOKEN and --ca/CPCTL_CA).
    Exit codes: 0 success, 1 the server refused or failed, 2 usage error, 3 a wait missed its goal.
    """


for command in (
    run_command, apply_command, create_group, get_command, describe_command, scale_command, delete_command, logs_command,
    list_machines_command, list_units_command, cordon_command, uncordon_command, drain_command, version_command,
    token_group,
):
    main.add_command(command)


def _add_dev_commands() -> None:
    """``cpctl dev up/down/status`` lives in its own module (another part of the project);
    it is added when present, as a click command or group named ``dev``."""
    for module_name in ("controlplane.cli.dev", "controlplane.dev"):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name == module_name:
                continue
            raise
        dev = getattr(module, "dev", None)
        if isinstance(dev, click.Command):
            main.add_command(dev, "dev")
            return


_add_dev_commands()

if __name__ == "__main__":
    main(prog_name="cpctl")
