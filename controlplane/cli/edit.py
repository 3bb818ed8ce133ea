"""``cpctl edit KIND NAME``: the live object in ``$VISUAL``/``$EDITOR`` (vi), written back on save.

The object (without its status, which a write ignores) goes to a private temporary file as YAML;
after the editor exits, an unchanged object is ``Edit cancelled, no changes made.``; a changed
one is sent as a replace carrying the resourceVersion it was read at, so an edit never silently
overwrites a change made meanwhile (409). When the file does not parse, names another object,
or the server refuses it, the error is printed, the file is kept and its path given, and the
exit code is 1; otherwise the file is removed.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import click

from controlplane.errors import CPError

from .apply import parse_documents
from .common import CLIError, call, error_line, ref, resolve_kind
from .config import connection_options
from .printers import dump_yaml
from .rest import RestClient
from .terminal import echo

CANCELLED = "Edit cancelled, no changes made."


def editor_command() -> list[str]:
    """``$VISUAL``, else ``$EDITOR``, else vi; split as a shell would (``code --wait``)."""
    return shlex.split(os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi")


def editable(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k != "status"}


def edited_object(text: str, original: dict[str, Any], *, source: str) -> dict[str, Any] | None:
    """Pure: the object in the edited ``text``; None when it is the original; CLIError when the
    file holds something else than one object of the same kind and name."""
    docs = parse_documents(text, source=source)
    if len(docs) != 1:
        raise CLIError(f"{source}: expected one object, found {len(docs)}")
    obj = docs[0]
    if obj.get("kind") != original.get("kind") or obj["metadata"].get("name") != original["metadata"]["name"]:
        raise CLIError(f"{source}: the kind and metadata.name cannot be changed by edit")
    return None if editable(obj) == editable(original) else obj


def run_editor(path: Path) -> None:
    command = [*editor_command(), str(path)]
    try:
        code = subprocess.call(command)
    except OSError as err:
        raise CLIError(f"cannot run the editor {command[0]!r}: {err}; set EDITOR") from err
    if code != 0:
        raise CLIError(f"the editor {command[0]!r} exited with code {code}; nothing was changed", details=[
            f"your file is kept in {path}"])


@click.command("edit")
@click.argument("kind", callback=lambda ctx, param, value: resolve_kind(value), metavar="KIND")
@click.argument("name")
@connection_options
def edit_command(kind: str, name: str) -> None:
    """Edit object NAME of KIND in $EDITOR; saved changes are applied."""

    def go(api: RestClient) -> None:
        original = api.get(kind, name)
        fd, raw_path = tempfile.mkstemp(prefix=f"cpctl-edit-{kind}-{name}-", suffix=".yaml")
        path = Path(raw_path)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:  # mode 0600: a Secret's values stay private
            handle.write(dump_yaml(editable(original)))
        run_editor(path)
        try:
            obj = edited_object(path.read_text(encoding="utf-8"), original, source=str(path))
            if obj is None:
                path.unlink()
                echo(CANCELLED)
                return
            api.replace(kind, name, obj)
        except CLIError as err:
            err.details.append(f"your changes are kept in {path}")
            raise
        except CPError as err:
            raise CLIError(error_line(err), details=[f"your changes are kept in {path}"]) from err
        path.unlink()
        echo(f"{ref(kind, name)} edited")

    call(go)
