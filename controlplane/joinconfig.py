"""Render the cloud-config a new machine joins the cluster with (``cpctl machine join-config``).

Pure: the CLI fetches the inputs (the servers' ``/dist/`` index, a join token, the CA) and this
module checks them and fills the template, deploy/cloud-config.yaml (carried in the package as
controlplane/deploy_files/, with the agent's systemd unit). The template is YAML whose strings hold
``{{name}}`` placeholders; rendering fills every string of the parsed document, drops the
write_files entries left empty (ca.pem without a CA) and dumps it again, so a value can never
break the YAML. Values that also land in a shell file or systemd's environment file (servers,
Docker URL, address, metadata) are checked to be single words without quotes first.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

import yaml

from controlplane.distfiles import PROJECT, SHA256_HEX, safe_name, wheel_name_version
from controlplane.metadata_flag import parse_metadata as parse_metadata_flag
from controlplane.validators import DNS_LABEL

DEFAULT_DOCKER = "unix:///var/run/docker.sock"
CA_FILE = "/etc/controlplane/ca.pem"
JOIN_TTL_SECONDS = 24 * 3600
PLACEHOLDER = re.compile(r"\{\{([a-z_]+)\}\}")
_WORD = re.compile(r"[A-Za-z0-9@%:/._+~=,\[\]-]+")  # no spaces, quotes, $ or backslashes
_TOKEN = re.compile(r"[\x21-\x7e]+")


class JoinConfigError(ValueError):
    """An input cannot go into a cloud-config; the message says which and why."""


@dataclass(frozen=True)
class Wheel:
    file: str
    sha256: str
    name: str
    version: str


@dataclass(frozen=True)
class JoinRequest:
    machine: str
    servers: tuple[str, ...]
    node_token: str
    wheels: tuple[Wheel, ...]
    metadata: Mapping[str, str] = field(default_factory=dict)
    address: str = ""
    docker: str = DEFAULT_DOCKER
    ca_pem: str = ""


def parse_servers(text: str) -> tuple[str, ...]:
    """``URL[,URL...]`` -> the URLs (http or https, a host, no query), without a trailing slash."""
    servers = tuple(s.strip().rstrip("/") for s in text.split(",") if s.strip())
    if not servers:
        raise JoinConfigError("--server: no URL given")
    for url in servers:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise JoinConfigError(f"--server: {url!r} is not an http(s)://HOST[:PORT] URL")
        if not _WORD.fullmatch(url) or "," in url:
            raise JoinConfigError(f"--server: {url!r} has characters a URL here may not have")
    return servers


def parse_metadata(text: str) -> dict[str, str]:
    """``k=v,k=v`` -> machine labels (controlplane/metadata_flag.py), as a JoinConfigError when bad."""
    try:
        return parse_metadata_flag(text)
    except ValueError as err:
        raise JoinConfigError(f"--metadata: {err}") from None


def check_address(address: str) -> str:
    if not address:
        return ""
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        raise JoinConfigError(f"--address: {address!r} is not an IP address") from None


def check_docker(url: str) -> str:
    scheme = url.partition("://")[0]
    if scheme not in ("unix", "ssh", "tcp") or not _WORD.fullmatch(url):
        raise JoinConfigError(f"--docker: {url!r} is not unix:///PATH, ssh://USER@HOST[:PORT] or tcp://HOST:PORT")
    return url


def wheels_of_index(index: Any, *, where: str = "/dist/") -> tuple[Wheel, ...]:
    """The wheels a ``/dist/`` index lists ([{"file", "sha256"}, ...]); image tarballs are skipped.
    Refuses an index without exactly one controlplane version, or with a name or hash out of shape."""
    if not isinstance(index, list):
        raise JoinConfigError(f"{where} did not answer a list of files")
    wheels: list[Wheel] = []
    for entry in index:
        file = str((entry or {}).get("file") or "") if isinstance(entry, dict) else ""
        sha = str(entry.get("sha256") or "") if isinstance(entry, dict) else ""
        if not file.endswith(".whl"):
            continue
        parsed = wheel_name_version(file)
        if parsed is None or not safe_name(file) or not SHA256_HEX.fullmatch(sha):
            raise JoinConfigError(f"{where} lists a wheel out of shape: {file[:80]!r}")
        wheels.append(Wheel(file, sha, *parsed))
    versions = {w.version for w in wheels if w.name == PROJECT}
    if len(versions) != 1:
        raise JoinConfigError(f"{where} serves {len(versions)} controlplane versions (want 1): "
                              "build the server's wheelhouse (make wheelhouse) or pass cp-apiserver --wheelhouse")
    return tuple(sorted(wheels, key=lambda w: w.file))


def requirements_text(wheels: Sequence[Wheel]) -> str:
    """pip requirements for hash-checking mode: ``name==version --hash=sha256:...`` per package."""
    hashes: dict[tuple[str, str], list[str]] = {}
    for wheel in wheels:
        hashes.setdefault((wheel.name, wheel.version), []).append(wheel.sha256)
    lines = []
    for (name, version), sums in sorted(hashes.items()):
        lines.append(f"{name}=={version} " + " ".join(f"--hash=sha256:{s}" for s in sums))
    return "\n".join(lines) + "\n"


def agent_args(request: JoinRequest) -> str:
    """cp-agent's flags for CP_AGENT_ARGS (one line, words without quotes)."""
    args = ["--machine", request.machine]
    if request.metadata:
        args += ["--metadata", ",".join(f"{k}={v}" for k, v in sorted(request.metadata.items()))]
    if request.address:
        args += ["--address", request.address]
    if request.docker != DEFAULT_DOCKER:
        args += ["--docker", request.docker]
    if request.ca_pem:
        args += ["--ca", CA_FILE]
    return " ".join(args)


def check_machine(name: str) -> str:
    if len(name) > 63 or not DNS_LABEL.fullmatch(name):
        raise JoinConfigError(f"machine name {name!r} is not a DNS-1123 label")
    return name


def template_values(request: JoinRequest, *, agent_unit: str) -> dict[str, str]:
    """Every placeholder's value, after checking each input."""
    check_machine(request.machine)
    if not _TOKEN.fullmatch(request.node_token):
        raise JoinConfigError("the node token must be one word of visible ASCII characters")
    if request.ca_pem and "-----BEGIN CERTIFICATE-----" not in request.ca_pem:
        raise JoinConfigError("the CA file holds no PEM certificate")
    parse_servers(",".join(request.servers))
    check_docker(request.docker)
    version = next(w.version for w in request.wheels if w.name == PROJECT)
    return {
        "machine": request.machine, "servers": ",".join(request.servers), "agent_args": agent_args(request),
        "docker": request.docker, "node_token": request.node_token,
        "ca_pem": request.ca_pem.strip() + "\n" if request.ca_pem.strip() else "",
        "ca_file": CA_FILE if request.ca_pem else "",
        "wheel_sums": "".join(f"{w.sha256}  {w.file}\n" for w in request.wheels),
        "requirements": requirements_text(request.wheels), "agent_unit": agent_unit, "version": version,
    }


def fill(text: str, values: Mapping[str, str]) -> str:
    """Replace the placeholders of one string; a multi-line value only as the whole string."""
    match = PLACEHOLDER.fullmatch(text)
    if match:
        return _value(match[1], values)

    def one(m: re.Match[str]) -> str:
        value = _value(m[1], values)
        if "\n" in value:
            raise JoinConfigError(f"{{{{{m[1]}}}}} is multi-line: it must be the whole string")
        return value

    return PLACEHOLDER.sub(one, text)


def _value(name: str, values: Mapping[str, str]) -> str:
    if name not in values:
        raise JoinConfigError(f"the template names an unknown placeholder {{{{{name}}}}}")
    return values[name]


def fill_tree(node: Any, values: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return fill(node, values)
    if isinstance(node, list):
        return [fill_tree(item, values) for item in node]
    if isinstance(node, dict):
        return {key: fill_tree(value, values) for key, value in node.items()}
    return node


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings as ``|`` blocks, so the rendered files read as they will be written."""


def _str_representer(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_BlockDumper.add_representer(str, _str_representer)


def render(template: str, values: Mapping[str, str], *, machine: str) -> str:
    """The cloud-config: the template with every placeholder filled, empty files left out."""
    doc = fill_tree(yaml.safe_load(template), values)
    doc["write_files"] = [f for f in doc.get("write_files") or [] if f.get("content")]
    body = yaml.dump(doc, Dumper=_BlockDumper, sort_keys=False, width=4096, allow_unicode=False)
    left = PLACEHOLDER.search(body)
    if left:
        raise JoinConfigError(f"placeholder {left[0]} left in the rendered cloud-config")
    return (f"#cloud-config\n# controlplane {values.get('version', '')}: machine {machine} joins the cluster.\n"
            "# It holds the machine's token (a join token is good once, within its TTL): keep it private.\n" + body)


def packaged_file(name: str) -> str:
    """A file of controlplane/deploy_files: ``cloud-config.yaml`` or ``cp-agent.service``."""
    return resources.files("controlplane").joinpath("deploy_files", name).read_text(encoding="utf-8")


def render_join_config(request: JoinRequest) -> str:
    values = template_values(request, agent_unit=packaged_file("cp-agent.service"))
    return render(packaged_file("cloud-config.yaml"), values, machine=request.machine)
