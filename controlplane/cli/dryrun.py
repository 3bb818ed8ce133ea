"""``--dry-run=none|client|server``, shared by the verbs that write (apply, create, run, scale, delete).

As kubectl: ``server`` sends the request with ``?dryRun=All``, so the server validates, admits
and answers, and writes nothing (the output line ends in ``(server dry run)``); ``client`` sends
nothing at all and prints what would be sent (``(dry run)``). A bare ``--dry-run`` is ``client``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from .terminal import echo

NONE, CLIENT, SERVER = "none", "client", "server"
F = TypeVar("F", bound=Callable[..., Any])


def dry_run_option(func: F) -> F:
    option = click.option(
        "--dry-run", "dry_run", type=click.Choice([NONE, CLIENT, SERVER]), default=NONE, show_default=True,
        is_flag=False, flag_value=CLIENT,
        help="server: the server checks the request and stores nothing; client: print it, send nothing")
    return option(func)


def dry_run_suffix(mode: str) -> str:
    """What an output line ends with in this mode."""
    return {NONE: "", CLIENT: " (dry run)", SERVER: " (server dry run)"}[mode]


def print_objects(objects: list[dict[str, Any]]) -> None:
    """The objects a client dry run would have sent, as YAML documents (a Secret's values redacted)."""
    from controlplane.model import SECRET_REDACTED

    from .printers import dump_yaml

    def shown(obj: dict[str, Any]) -> dict[str, Any]:
        if obj.get("kind") == "Secret" and isinstance(obj.get("data"), dict):
            return {**obj, "data": {key: SECRET_REDACTED for key in obj["data"]}}
        return obj

    echo("---\n".join(dump_yaml(shown(obj)) for obj in objects).rstrip("\n"))
