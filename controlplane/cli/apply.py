"""``cpctl apply -f FILE|DIR|- [-f ...]``: declarative create-or-merge of objects in YAML or JSON.

Every ``-f`` is read (a directory: its ``*.yaml``, ``*.yml`` and ``*.json``, sorted) and every
object parsed and checked against the schemas before anything is sent: one bad file, and
nothing is. Each object is then created; one that exists already gets the three-way merge
patch of cli/merge.py (with the live resourceVersion as precondition, recomputed on a
conflict), so fields the file never set survive and fields removed from it are removed; the
output says ``created``, ``configured`` or ``unchanged``. ``--dry-run=server`` sends the same
requests with ``?dryRun=All``; ``--dry-run=client`` prints the objects and sends nothing. Units
are then waited for like ``cpctl run``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from controlplane.errors import AlreadyExists, Conflict, CPError, ServiceUnavailable

from .common import KIND_TO_RESOURCE, CLIError, call, error_line, ref
from .config import connection_options
from .dryrun import CLIENT, SERVER, dry_run_option, dry_run_suffix, print_objects
from .durations import DURATION
from .merge import apply_patch, with_record
from .rest import RestClient
from .run import DEFAULT_TIMEOUT
from .terminal import echo
from .wait import wait_for_units

PATCH_ATTEMPTS = 5
MANIFEST_SUFFIXES = (".yaml", ".yml", ".json", ".service")  # .service: a fleet unit file


def parse_documents(text: str, *, source: str = "-") -> list[dict[str, Any]]:
    """The objects in ``text``: JSON, or YAML with several documents; ``kind: List`` is expanded;
    a fleet unit file (``source`` ends in .service) is converted (cli/convert.py)."""
    if source.endswith(".service"):
        from .convert import unit_file_objects

        return unit_file_objects(text, source=source)
    import yaml  # ~10 ms: only when a file is applied

    stripped = text.lstrip()
    docs: list[Any]
    try:
        if stripped.startswith(("{", "[")):
            try:
                loaded = json.loads(text)
                docs = loaded if isinstance(loaded, list) else [loaded]
            except ValueError:
                docs = _load_yaml(text)
        else:
            docs = _load_yaml(text)
    except yaml.YAMLError as err:
        raise CLIError(f"{source}: not valid YAML or JSON: {' '.join(str(err).split())}") from err
    objects: list[dict[str, Any]] = []
    for number, doc in enumerate(docs, start=1):
        if doc is None:
            continue
        if not isinstance(doc, dict):
            raise CLIError(f"{source}: document {number} is not an object")
        if str(doc.get("kind", "")).endswith("List") and isinstance(doc.get("items"), list):
            objects.extend(item for item in doc["items"] if isinstance(item, dict))
            continue
        objects.append(doc)
    for number, obj in enumerate(objects, start=1):
        if obj.get("kind") not in KIND_TO_RESOURCE:
            raise CLIError(f"{source}: object {number} has kind {obj.get('kind')!r}; "
                           f"expected one of {', '.join(KIND_TO_RESOURCE)}")
        if not isinstance(obj.get("metadata"), dict) or not obj["metadata"].get("name"):
            raise CLIError(f"{source}: object {number} ({obj['kind']}) has no metadata.name")
    return objects


def _load_yaml(text: str) -> list[Any]:
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return list(yaml.load_all(text, Loader=loader))


def read_sources(paths: Sequence[str]) -> list[tuple[str, str]]:
    """(source name, text) of every file named: ``-`` is stdin, a directory its manifests, sorted."""
    sources: list[tuple[str, str]] = []
    for path in paths:
        if path == "-":
            sources.append(("-", sys.stdin.read()))
            continue
        target = Path(path)
        files = (sorted(p for p in target.iterdir() if p.is_file() and p.suffix in MANIFEST_SUFFIXES)
                 if target.is_dir() else [target])
        if target.is_dir() and not files:
            raise CLIError(f"{path}: no *.yaml, *.yml, *.json or *.service file in this directory")
        for file in files:
            try:
                sources.append((str(file), file.read_text(encoding="utf-8")))
            except (OSError, UnicodeDecodeError) as err:
                raise CLIError(f"{file}: cannot read: {err}") from err
    return sources


def check_object(obj: dict[str, Any], *, source: str) -> None:
    """The object as the server's schemas read it (a 422 found before anything is sent)."""
    from controlplane.schemas import load_object

    try:
        load_object(str(obj["kind"]), obj)
    except CPError as err:
        raise CLIError(f"{source}: {error_line(err)}") from err


def load_manifests(paths: Sequence[str]) -> list[dict[str, Any]]:
    """Every object of every ``-f``, parsed and checked; any mistake anywhere is a CLIError before
    anything is sent (an object named twice too)."""
    objects: list[dict[str, Any]] = []
    seen: dict[tuple[str, str], str] = {}
    for source, text in read_sources(paths):
        for obj in parse_documents(text, source=source):
            check_object(obj, source=source)
            key = (str(obj["kind"]), str(obj["metadata"]["name"]))
            if key in seen:
                raise CLIError(f"{source}: {key[0]} {key[1]!r} is also in {seen[key]}; give each object once")
            seen[key] = source
            objects.append(obj)
    return objects


def apply_object(api: RestClient, obj: dict[str, Any], *, dry_run: bool = False) -> str:
    """Create or merge one object; returns ``created``, ``configured`` or ``unchanged``."""
    resource = KIND_TO_RESOURCE[obj["kind"]]
    name = obj["metadata"]["name"]
    try:
        api.create(resource, with_record(obj), dry_run=dry_run)
        return "created"
    except AlreadyExists:
        pass
    for attempt in range(PATCH_ATTEMPTS):
        live = api.get(resource, name)
        patch = apply_patch(obj, live)
        if not patch:
            return "unchanged"
        patch.setdefault("metadata", {})["resourceVersion"] = live["metadata"]["resourceVersion"]
        try:
            api.patch(resource, name, patch, dry_run=dry_run)
            return "configured"
        except Conflict:
            if attempt == PATCH_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


@click.command("apply")
@click.option("-f", "--filename", "paths", multiple=True, required=True, metavar="FILE|DIR|-",
              help="YAML or JSON file, a directory of them, or '-' for stdin (repeatable)")
@dry_run_option
@click.option("--wait/--no-wait", default=True, show_default=True, help="wait until applied units are ready")
@click.option("--timeout", type=DURATION, default=DEFAULT_TIMEOUT, show_default=True,
              help="how long to wait: 30s, 2m, 1h30m or seconds")
@connection_options
def apply_command(paths: tuple[str, ...], dry_run: str, wait: bool, timeout: float) -> None:
    """Create or merge the objects in FILE(s) (YAML or JSON, several documents)."""
    objects = load_manifests(paths)
    if dry_run == CLIENT:
        print_objects([with_record(obj) for obj in objects])
        return

    def go(api: RestClient) -> int:
        units: list[str] = []
        failed = 0
        for obj in objects:
            resource = KIND_TO_RESOURCE[obj["kind"]]
            name = ref(resource, obj["metadata"]["name"])
            try:
                outcome = apply_object(api, obj, dry_run=dry_run == SERVER)
            except CPError as err:
                if isinstance(err, ServiceUnavailable):
                    raise  # the server is unreachable: the other objects would fail the same way
                failed += 1
                echo(f"error: {name}: {error_line(err)}", err=True)
                continue
            echo(f"{name} {outcome}{dry_run_suffix(dry_run)}")
            if resource == "units":
                units.append(obj["metadata"]["name"])
        if wait and units and not failed and dry_run != SERVER:
            wait_for_units(api, units, timeout=timeout)
        return failed

    if call(go):
        raise SystemExit(1)  # each failure has been reported on its own line
