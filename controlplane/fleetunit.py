"""fleet unit files as Units: the pure converter behind ``cpctl convert`` and ``cpctl apply -f X.service``.

A fleet user's unit is a systemd service whose ``ExecStart`` runs ``/usr/bin/docker run ...``,
with placement in ``[X-Fleet]`` (ANCHORS.md). ``convert(text, filename=)`` reads one and returns the
Unit it means plus one line for each thing it could not map, so nothing is dropped silently but
what has no meaning here:

- the file name gives the unit's name: ``NAME.service`` is unit NAME, a template ``NAME@.service``
  is unit NAME whose instances are NAME-0, NAME-1, ... (fleet's NAME@1, NAME@2);
- ``[X-Fleet]``: ``MachineMetadata=k=v ...`` -> placement.machineMetadata (same key ORed, keys
  ANDed), ``Conflicts=GLOB ...`` -> placement.conflicts, except a template's ``Conflicts=NAME@*``
  (its instances conflict with each other) -> placement.spread required (a template without it
  gets spread preferred: fleet let its instances share a machine), ``MachineOf=U.service`` ->
  placement.machineOf, ``MachineID=M`` -> placement.machine, ``Global=true`` -> spec.global;
- ``ExecStart=/usr/bin/docker run [flags] IMAGE [ARGS...]``: the image, the arguments (the
  command), ``-p [IP:]HOST:CONTAINER[/udp]`` -> ports (the IP is dropped: the agent publishes on
  its machine's address), ``-e K=V`` -> env, ``--restart`` -> restartPolicy, ``-m``/``--memory`` and
  ``--cpus`` -> resources, ``-u``/``--user`` -> user; ``--name`` (instances are named by the
  cluster), ``-d``, ``--rm``, ``-i``, ``-t`` and ``--init`` mean nothing here and are dropped;
- ``ExecStartPre``/``ExecStop``/``ExecStopPost`` lines running ``docker kill|rm|pull|stop`` map to
  nothing (the agent pulls, stops and removes) and are dropped, as are ``After=``/``Requires=``/
  ``Wants=`` on docker.service; ``[Service] Restart=`` -> restartPolicy; ``[Unit] Description=`` ->
  the annotation ``description``.

Anything else (other docker flags, other keys, systemd specifiers such as ``%i`` in what is kept)
is reported. A file that has no ``docker run`` ExecStart cannot be converted (UnitFileError).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

from controlplane.model import API_VERSION, SPREAD_PREFERRED, SPREAD_REQUIRED, UNIT_NAME_MAX

# docker run flags that take a value (the next token, or after "="); others are switches
VALUE_FLAGS = frozenset({
    "-p", "--publish", "-e", "--env", "--name", "-v", "--volume", "--restart", "-m", "--memory", "--cpus",
    "-u", "--user", "-w", "--workdir", "--net", "--network", "--env-file", "-h", "--hostname", "--add-host",
    "--dns", "--entrypoint", "-l", "--label", "--log-driver", "--log-opt", "--cap-add", "--cap-drop",
    "--pids-limit", "--link", "--volumes-from", "--device", "--mount", "--expose", "--ulimit",
    "--stop-signal", "--stop-timeout", "--security-opt", "-c", "--cpu-shares", "--memory-swap",
    "--health-cmd", "--health-interval", "--health-timeout", "--health-retries", "--cidfile", "--ip",
    "--platform", "--pull", "--tmpfs", "--shm-size", "--sysctl", "--group-add", "--cpuset-cpus",
})
HARMLESS_SWITCHES = frozenset({"-d", "--detach", "--rm", "-i", "--interactive", "-t", "--tty", "-it", "-ti",
                               "--init"})
DOCKER_HOUSEKEEPING = frozenset({"kill", "rm", "pull", "stop"})
DOCKER_DEPENDENCIES = frozenset({"docker.service", "docker.socket"})
RESTART_POLICIES = {"always": "Always", "unless-stopped": "Always", "on-failure": "OnFailure", "no": "Never"}
SYSTEMD_RESTART = {"always": "Always", "on-failure": "OnFailure", "no": "Never"}
SPECIFIER = re.compile(r"%[a-zA-Z]")
MEMORY = re.compile(r"^(\d+(?:\.\d+)?)([bkmg]?)b?$", re.IGNORECASE)
MEMORY_MB = {"b": 1 / 2**20, "k": 1 / 1024, "m": 1, "g": 1024, "": 1 / 2**20}
SPEC_ORDER = ("image", "command", "env", "ports", "restartPolicy", "resources", "user", "global", "placement")


class UnitFileError(ValueError):
    """The file cannot become a Unit at all (no name, no ``docker run`` ExecStart, bad syntax)."""


@dataclass
class Conversion:
    """The Unit a fleet unit file means, and one line for each thing of it that was not mapped."""

    unit: dict[str, Any]
    unmapped: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Entry:
    section: str
    key: str
    value: str
    line: int

    def where(self) -> str:
        return f"line {self.line}: [{self.section}] {self.key}={self.value}"


def entries(text: str) -> Iterator[Entry]:
    """``Key=Value`` lines with their section; comments (# ;) and blank lines skipped, a trailing
    backslash continues a line (systemd's syntax, as far as fleet files use it)."""
    section, pending, start = "", "", 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not pending and (not line or line[0] in "#;"):
            continue
        if line.endswith("\\"):
            pending, start = pending + line[:-1] + " ", start or number
            continue
        line, first = (pending + line).strip(), start or number
        pending, start = "", 0
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise UnitFileError(f"line {first}: {line!r} is not Key=Value")
        yield Entry(section, key.strip(), value.strip(), first)


def unit_name(filename: str) -> tuple[str, list[str]]:
    """The unit's name from the file's (``NAME.service`` / ``NAME@.service``), and what was changed."""
    base = PurePath(filename).name
    if not base.endswith(".service"):
        raise UnitFileError(f"{base}: a fleet unit file's name ends in .service")
    stem, notes = base[: -len(".service")], []
    name, at, instance = stem.partition("@")
    if at and instance:
        notes.append(f"{base} is instance {instance!r} of template {name}@.service: converted as the template")
    clean = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:UNIT_NAME_MAX].strip("-")
    if not clean:
        raise UnitFileError(f"{base}: no unit name in the file name")
    if clean != name:
        notes.append(f"unit name {name!r} is not a DNS label: named {clean!r}")
    return clean, notes


def _command(value: str) -> list[str]:
    """An Exec line's argv, without systemd's prefixes (- @ + ! :)."""
    value = value.lstrip("-@+!:")
    try:
        return shlex.split(value)
    except ValueError as err:
        raise UnitFileError(f"cannot split {value!r}: {err}") from err


def _docker(argv: list[str]) -> str | None:
    """The docker subcommand of ``argv`` (None: not docker)."""
    if len(argv) >= 2 and PurePath(argv[0]).name == "docker":
        return argv[1]
    return None


@dataclass
class _Unit:
    """The Unit being built, and what could not be mapped."""

    name: str
    template: bool
    spec: dict[str, Any] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    unmapped: list[str] = field(default_factory=list)
    self_conflict: bool = False
    exec_start: Entry | None = None

    @property
    def placement(self) -> dict[str, Any]:
        placement: dict[str, Any] = self.spec.setdefault("placement", {})
        return placement

    def skip(self, what: str, why: str = "not mapped") -> None:
        self.unmapped.append(f"{what}: {why}")

    def keep(self, what: str, value: str) -> str:
        """``value`` as kept, reporting a systemd specifier or variable it carries."""
        if SPECIFIER.search(value) or "$" in value:
            self.skip(what, f"{value!r} uses a systemd specifier or variable, which is kept literally "
                            "(CP_INSTANCE, CP_UNIT and CP_MACHINE are set in every container)")
        return value


def convert(text: str, *, filename: str) -> Conversion:
    """PURE: the Unit of the fleet unit file ``text`` named ``filename``."""
    name, notes = unit_name(filename)
    unit = _Unit(name, template="@" in PurePath(filename).name, unmapped=notes)
    for entry in entries(text):
        handler = SECTIONS.get(entry.section)
        if handler is None:
            unit.skip(entry.where(), f"section [{entry.section}] is not mapped" if entry.section else "not in a section")
        else:
            handler(unit, entry)
    if unit.exec_start is None:
        raise UnitFileError(f"{PurePath(filename).name}: no ExecStart=/usr/bin/docker run ... line")
    _docker_run(unit, _command(unit.exec_start.value)[2:])
    if unit.template:
        unit.placement.setdefault("spread", SPREAD_REQUIRED if unit.self_conflict else SPREAD_PREFERRED)
    if not unit.placement:
        unit.spec.pop("placement")
    metadata: dict[str, Any] = {"name": name}
    if unit.annotations:
        metadata["annotations"] = unit.annotations
    spec = {key: unit.spec[key] for key in SPEC_ORDER if key in unit.spec}
    return Conversion({"apiVersion": API_VERSION, "kind": "Unit", "metadata": metadata, "spec": spec},
                      unit.unmapped)


# ---- sections -----------------------------------------------------------------------------------

def _unit_section(unit: _Unit, entry: Entry) -> None:
    if entry.key == "Description":
        unit.annotations["description"] = entry.value
    elif entry.key in ("After", "Requires", "Wants", "BindsTo") and set(entry.value.split()) <= DOCKER_DEPENDENCIES:
        pass  # the agent runs every container on its Docker engine
    else:
        unit.skip(entry.where())


def _service_section(unit: _Unit, entry: Entry) -> None:
    if entry.key == "ExecStart":
        argv = _command(entry.value)
        if _docker(argv) != "run":
            raise UnitFileError(f"line {entry.line}: ExecStart is not /usr/bin/docker run ...: cannot convert")
        if unit.exec_start is not None:
            raise UnitFileError(f"line {entry.line}: a second ExecStart")
        unit.exec_start = entry
    elif entry.key in ("ExecStartPre", "ExecStop", "ExecStopPost") and \
            _docker(_command(entry.value)) in DOCKER_HOUSEKEEPING:
        pass  # the agent pulls, stops and removes its containers itself
    elif entry.key == "Restart" and entry.value in SYSTEMD_RESTART:
        unit.spec["restartPolicy"] = SYSTEMD_RESTART[entry.value]
    else:
        unit.skip(entry.where())


def _unit_ref(unit: _Unit, entry: Entry, value: str) -> str:
    """``U.service`` or ``U@N.service`` -> U (machineOf names a unit)."""
    stem = value.removesuffix(".service")
    base, at, instance = stem.partition("@")
    if at:
        unit.skip(entry.where(), f"names instance {value!r}: mapped to unit {base!r} (any of its instances)")
    return base


def _conflict(unit: _Unit, entry: Entry, pattern: str) -> None:
    glob = pattern.removesuffix(".service")
    base, at, rest = glob.partition("@")
    if at and rest == "*":
        if base == unit.name:
            unit.self_conflict = True  # its own instances: one per machine
            return
        glob = base
    elif at:
        unit.skip(entry.where(), f"{pattern!r} names one instance: mapped to unit {base!r}")
        glob = base
    if glob == unit.name and not unit.template:
        return  # a single instance never conflicts with itself
    conflicts: list[str] = unit.placement.setdefault("conflicts", [])
    if glob not in conflicts:
        conflicts.append(glob)


def _fleet_section(unit: _Unit, entry: Entry) -> None:
    values = _command(entry.value) if entry.key in ("MachineMetadata", "Conflicts") else [entry.value]
    if entry.key == "MachineMetadata":
        wanted: dict[str, list[str]] = unit.placement.setdefault("machineMetadata", {})
        for pair in values:
            key, sep, value = pair.partition("=")
            if not sep or not key or not value:
                unit.skip(entry.where(), f"{pair!r} is not key=value")
            elif value not in wanted.setdefault(key, []):
                wanted[key].append(value)
    elif entry.key == "Conflicts":
        for pattern in values:
            _conflict(unit, entry, pattern)
    elif entry.key == "MachineOf":
        unit.placement["machineOf"] = _unit_ref(unit, entry, entry.value)
    elif entry.key == "MachineID":
        unit.placement["machine"] = entry.value
    elif entry.key == "Global":
        if entry.value.lower() in ("true", "yes", "1", "on"):
            unit.spec["global"] = True
        elif entry.value.lower() not in ("false", "no", "0", "off"):
            unit.skip(entry.where(), "not a boolean")
    else:
        unit.skip(entry.where())


SECTIONS = {"Unit": _unit_section, "Service": _service_section, "X-Fleet": _fleet_section}


# ---- docker run ---------------------------------------------------------------------------------

def _flags(args: list[str]) -> tuple[list[tuple[str, str | None]], list[str]]:
    """``docker run``'s flags (with their values) and the rest: IMAGE [ARGS...]."""
    flags: list[tuple[str, str | None]] = []
    i = 0
    while i < len(args) and args[i].startswith("-") and args[i] != "-":
        flag, sep, value = args[i].partition("=")
        if sep:
            flags.append((flag, value))
        elif flag in VALUE_FLAGS and i + 1 < len(args):
            i += 1
            flags.append((flag, args[i]))
        else:
            flags.append((flag, None))
        i += 1
    return flags, args[i:]


def _docker_run(unit: _Unit, args: list[str]) -> None:
    flags, rest = _flags(args)
    if not rest:
        raise UnitFileError("ExecStart: docker run names no image")
    unit.spec = {"image": unit.keep("image", rest[0]), **unit.spec}
    if rest[1:]:
        unit.spec["command"] = [unit.keep("command", arg) for arg in rest[1:]]
    for flag, value in flags:
        what = f"docker run {flag}" + (f" {value}" if value is not None else "")
        if value is None:
            if flag not in HARMLESS_SWITCHES:
                unit.skip(what)
            continue
        handler = FLAG_HANDLERS.get(flag)
        if handler is None:
            unit.skip(what)
        else:
            handler(unit, what, value)


def _publish(unit: _Unit, what: str, value: str) -> None:
    spec, _, protocol = value.partition("/")
    parts = spec.split(":")
    if len(parts) == 3:
        unit.skip(what, f"the address {parts[0]!r} is dropped (the agent publishes on its machine's address)")
        parts = parts[1:]
    host, container = (parts[0] or "0", parts[1]) if len(parts) == 2 else ("0", parts[0])
    if not (host.isdigit() and container.isdigit()) or protocol not in ("", "tcp", "udp"):
        unit.skip(what, "not HOST:CONTAINER[/tcp|udp] with single ports")
        return
    unit.spec.setdefault("ports", []).append(
        {"containerPort": int(container), "hostPort": int(host), "protocol": protocol or "tcp"})


def _env(unit: _Unit, what: str, value: str) -> None:
    key, sep, val = value.partition("=")
    if not sep:
        unit.skip(what, "takes its value from the host's environment")
        return
    unit.spec.setdefault("env", {})[key] = unit.keep(what, val)


def _restart(unit: _Unit, what: str, value: str) -> None:
    policy = RESTART_POLICIES.get(value.split(":", 1)[0])
    if policy is None:
        unit.skip(what)
    else:
        unit.spec["restartPolicy"] = policy


def _memory(unit: _Unit, what: str, value: str) -> None:
    match = MEMORY.match(value)
    if match is None:
        unit.skip(what, "not a size")
        return
    megabytes = max(1, round(float(match.group(1)) * MEMORY_MB[match.group(2).lower()]))
    unit.spec.setdefault("resources", {})["memoryMB"] = megabytes


def _cpus(unit: _Unit, what: str, value: str) -> None:
    try:
        unit.spec.setdefault("resources", {})["cpu"] = float(value)
    except ValueError:
        unit.skip(what, "not a number")


def _user(unit: _Unit, what: str, value: str) -> None:
    unit.spec["user"] = unit.keep(what, value)


def _name(unit: _Unit, what: str, value: str) -> None:
    """The cluster names instances (NAME-0, NAME-1, ...) and their containers: nothing to keep."""


FLAG_HANDLERS = {
    "-p": _publish, "--publish": _publish, "-e": _env, "--env": _env, "--restart": _restart,
    "-m": _memory, "--memory": _memory, "--cpus": _cpus, "-u": _user, "--user": _user, "--name": _name,
}
