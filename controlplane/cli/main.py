"""The ``cpctl`` entry point: the click group and the table of every verb.

Each verb lives in its own module; this one only names them, so ``cpctl --help`` lists them in
one place. A verb's module is imported only when that verb runs (or for ``--help``): ``cpctl get``
does not pay for what ``cpctl machine join-config`` or ``cpctl dev`` import, which keeps cpctl's
start-up within a few times a bare Python's (bench/bench_cli_startup.py).
``python -m controlplane.cli.main`` runs it too (tests use that).

A command's process skips the interpreter's last garbage collection at exit (``gc.freeze`` at
exit, ``skip_final_collection``): the objects cpctl imported live until the end anyway, and
collecting them took 10-20 ms of every command's wall time. Files and connections are still
closed as before: they are closed by the commands or freed by reference counting.
"""

from __future__ import annotations

import atexit
import gc
import importlib
from collections.abc import Mapping
from typing import Any

import click

from controlplane import __version__

from .config import connection_options

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}
# verb -> "module:attribute" of its click command or group (a new verb is one line here)
COMMANDS: dict[str, str] = {
    "run": "controlplane.cli.run:run_command",
    "apply": "controlplane.cli.apply:apply_command",
    "diff": "controlplane.cli.diff:diff_command",
    "edit": "controlplane.cli.edit:edit_command",
    "label": "controlplane.cli.label:label_command",
    "annotate": "controlplane.cli.label:annotate_command",
    "rollout": "controlplane.cli.rollout:rollout_group",
    "convert": "controlplane.cli.convert:convert_command",
    "create": "controlplane.cli.create:create_group",
    "get": "controlplane.cli.get:get_command",
    "describe": "controlplane.cli.describe:describe_command",
    "scale": "controlplane.cli.scale:scale_command",
    "delete": "controlplane.cli.delete:delete_command",
    "logs": "controlplane.cli.logs:logs_command",
    "exec": "controlplane.cli.exec:exec_command",
    "list-machines": "controlplane.cli.machines:list_machines_command",
    "list-units": "controlplane.cli.machines:list_units_command",
    "cordon": "controlplane.cli.machines:cordon_command",
    "uncordon": "controlplane.cli.machines:uncordon_command",
    "drain": "controlplane.cli.machines:drain_command",
    "version": "controlplane.cli.version:version_command",
    "machine": "controlplane.cli.join:machine_group",
    "token": "controlplane.cli.tokens:token_group",
    "dev": "controlplane.cli.dev:dev",
    "config": "controlplane.cli.configcmd:config_group",
}


class LazyGroup(click.Group):
    """A group whose commands are imported on first use, from ``lazy_commands``."""

    def __init__(self, *args: Any, lazy_commands: Mapping[str, str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands = dict(lazy_commands)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy_commands:
            self.add_command(load_command(self.lazy_commands[cmd_name]), cmd_name)
        return super().get_command(ctx, cmd_name)


def skip_final_collection() -> None:
    """At exit, freeze what is left instead of collecting it (registered once however often called)."""
    atexit.unregister(gc.freeze)
    atexit.register(gc.freeze)


def load_command(spec: str) -> click.Command:
    """The click command named by ``"module:attribute"``."""
    module_name, _, attribute = spec.partition(":")
    command = getattr(importlib.import_module(module_name), attribute)
    if not isinstance(command, click.Command):
        raise TypeError(f"{spec} is not a click command")
    return command


@click.group(cls=LazyGroup, lazy_commands=COMMANDS, context_settings=CONTEXT)
@click.version_option(__version__, "--version", prog_name="cpctl", message="%(prog)s %(version)s")
@connection_options
def main() -> None:
    """cpctl: run and inspect units on a controlplane cluster.

    The server comes from --server, else CPCTL_SERVER, else ~/.config/cpctl/config.yaml
    (likewise --token/CPCTL_TOKEN and --ca/CPCTL_CA); --context NAME picks one of the
    file's contexts (cpctl config get-contexts).
    Exit codes: 0 success, 1 the server refused or failed, 2 usage error, 3 a wait missed its goal.
    """
    skip_final_collection()


if __name__ == "__main__":
    main(prog_name="cpctl")
