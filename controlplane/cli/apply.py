"""``cpctl apply -f FILE|-``: declarative create-or-update of any objects in YAML or JSON.

Each document is created; one that exists already is compared with what is stored (both
defaulted by the same schemas the server uses) and replaced with the stored
resourceVersion only when it differs, so the output says ``created``, ``configured`` or
``unchanged`` honestly. Units are then waited for like ``cpctl run``.
"""

from __future__ import annotations

import json
from typing import IO, Any

import click

from controlplane.admission import with_admitted_fields
from controlplane.errors import AlreadyExists, Conflict, CPError, ServiceUnavailable

from .common import KIND_TO_RESOURCE, CLIError, call, error_line, ref
from .config import connection_options
from .rest import RestClient
from .run import DEFAULT_TIMEOUT
from .terminal import echo
from .wait import wait_for_units

SERVER_FIELDS = ("uid", "resourceVersion", "generation", "creationTimestamp")
REPLACE_ATTEMPTS = 5


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


def comparable(obj: dict[str, Any]) -> dict[str, Any]:
    """What a user controls: the object defaulted by the server's schemas, without status and
    the metadata the server sets."""
    from controlplane.schemas import load_object

    try:
        normalized = load_object(str(obj.get("kind")), obj)
    except CPError:
        normalized = dict(obj)  # invalid: the server will say why
    normalized.pop("status", None)
    meta = {k: v for k, v in (normalized.get("metadata") or {}).items() if k not in SERVER_FIELDS}
    meta.setdefault("labels", {})
    meta.setdefault("annotations", {})
    normalized["metadata"] = meta
    return normalized


def apply_object(api: RestClient, obj: dict[str, Any]) -> str:
    """Create or update one object; returns ``created``, ``configured`` or ``unchanged``."""
    resource = KIND_TO_RESOURCE[obj["kind"]]
    name = obj["metadata"]["name"]
    body = {k: v for k, v in obj.items() if k != "status"}
    body["metadata"] = {k: v for k, v in obj["metadata"].items() if k not in SERVER_FIELDS}
    try:
        api.create(resource, body)
        return "created"
    except AlreadyExists:
        pass
    for attempt in range(REPLACE_ATTEMPTS):
        current = api.get(resource, name)
        if comparable(current) == comparable(with_admitted_fields(obj["kind"], body, current)):
            return "unchanged"
        update = dict(body)
        update["metadata"] = {**body["metadata"], "resourceVersion": current["metadata"]["resourceVersion"]}
        try:
            api.replace(resource, name, update)
            return "configured"
        except Conflict:
            if attempt == REPLACE_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


@click.command("apply")
@click.option("-f", "--filename", "source", type=click.File("r"), required=True, metavar="FILE|-",
              help="YAML or JSON file with one or more objects ('-' for stdin)")
@click.option("--wait/--no-wait", default=True, show_default=True, help="wait until applied units are ready")
@click.option("--timeout", type=click.FloatRange(min=0), default=DEFAULT_TIMEOUT, show_default=True,
              help="seconds to wait")
@connection_options
def apply_command(source: IO[str], wait: bool, timeout: float) -> None:
    """Create or update the objects in FILE (YAML or JSON, several documents)."""
    objects = parse_documents(source.read(), source=getattr(source, "name", "-"))

    def go(api: RestClient) -> int:
        units: list[str] = []
        failed = 0
        for obj in objects:
            resource = KIND_TO_RESOURCE[obj["kind"]]
            name = ref(resource, obj["metadata"]["name"])
            try:
                outcome = apply_object(api, obj)
            except CPError as err:
                if isinstance(err, ServiceUnavailable):
                    raise  # the server is unreachable: the other objects would fail the same way
                failed += 1
                echo(f"error: {name}: {error_line(err)}", err=True)
                continue
            echo(f"{name} {outcome}")
            if resource == "units":
                units.append(obj["metadata"]["name"])
        if wait and units and not failed:
            wait_for_units(api, units, timeout=timeout)
        return failed

    if call(go):
        raise SystemExit(1)  # each failure has been reported on its own line
