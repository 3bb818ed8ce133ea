"""``cpctl config get-contexts | current-context | use-context NAME | set-context NAME``: the contexts
of ``~/.config/cpctl/config.yaml`` (the file's shape: configfile.py and docs/cli.md "Contexts").

Reading goes through config.py like every verb; writing loads the whole file with yaml, changes
only what was asked, and writes it back with mode 0600 from the first byte (it may hold tokens),
atomically. The top-level server/token/ca of a single-server file are kept as they are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .completion import complete_context
from .config import ConfigError, config_path, parse_config_text
from .configfile import contexts_of
from .outputs import no_headers_option
from .printers import format_table, without_header
from .terminal import echo


def _load(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror or err}") from err
    return dict(parse_config_text(text, path))


def _contexts(data: dict[str, Any], path: Path) -> dict[str, dict[str, Any]]:
    try:
        return contexts_of(data)
    except ValueError as err:
        raise ConfigError(f"{path}: {err}") from err


def _save(path: Path, data: dict[str, Any]) -> None:
    import yaml

    from controlplane.devproc import write_private

    path.parent.mkdir(parents=True, exist_ok=True)
    write_private(path, yaml.safe_dump(data, sort_keys=False, default_flow_style=False))


def updated_context(entry: dict[str, Any], *, server: str | None, token: str | None, token_file: str | None,
                    ca: str | None) -> dict[str, Any]:
    """Pure: ``entry`` with the given fields set; a token and a token file replace each other."""
    result = dict(entry)
    if server:
        result["server"] = server
    if token:
        result.pop("token-file", None)
        result["token"] = token
    if token_file:
        result.pop("token", None)
        result["token-file"] = str(Path(token_file).expanduser().resolve())
    if ca:
        result["ca"] = str(Path(ca).expanduser().resolve())
    return result


def contexts_table(data: dict[str, Any], contexts: dict[str, dict[str, Any]], *, headers: bool) -> str:
    """Pure: CURRENT NAME SERVER AUTH CA, one context a row (tokens are never printed)."""
    current = data.get("current-context")
    rows = []
    for name in sorted(contexts):
        entry = contexts[name]
        auth = "token" if entry.get("token") else ("token-file" if entry.get("token-file") else "<none>")
        rows.append(["*" if name == current else "", name, str(entry.get("server") or "<none>"), auth,
                     str(entry.get("ca") or "<none>")])
    return without_header(format_table(["CURRENT", "NAME", "SERVER", "AUTH", "CA"], rows), headers=headers)


@click.group("config")
def config_group() -> None:
    """The contexts (named server, token and CA) of ~/.config/cpctl/config.yaml."""


@config_group.command("get-contexts")
@click.option("-o", "--output", type=click.Choice(["table", "name"]), default="table", show_default=True)
@no_headers_option
def get_contexts_command(output: str, no_headers: bool) -> None:
    """List the contexts; * marks the current one."""
    path = config_path()
    data = _load(path)
    contexts = _contexts(data, path)
    if output == "name":
        for name in sorted(contexts):
            echo(name)
    elif contexts:
        echo(contexts_table(data, contexts, headers=not no_headers))
    else:
        echo(f"No contexts in {path}.", err=True)


@config_group.command("current-context")
def current_context_command() -> None:
    """Print the current context's name."""
    current = _load(config_path()).get("current-context")
    if not current:
        raise ConfigError("current-context is not set (cpctl config use-context NAME sets it)")
    echo(str(current))


@config_group.command("use-context")
@click.argument("name", shell_complete=complete_context)
def use_context_command(name: str) -> None:
    """Make NAME the context every later cpctl command uses."""
    path = config_path()
    data = _load(path)
    if name not in _contexts(data, path):
        known = ", ".join(sorted(_contexts(data, path))) or "none"
        raise ConfigError(f'no context "{name}" in {path} (known: {known})')
    data["current-context"] = name
    _save(path, data)
    echo(f'Switched to context "{name}".')


@config_group.command("set-context")
@click.argument("name", shell_complete=complete_context)
@click.option("--server", metavar="URL[,URL...]", help="the API server(s) of this context")
@click.option("--token", metavar="TOKEN", help="a bearer token, kept in the config file (mode 0600)")
@click.option("--token-file", type=click.Path(dir_okay=False), help="a file holding the bearer token (mode 0600)")
@click.option("--ca", type=click.Path(dir_okay=False), help="the CA certificate of an https server")
@click.option("--use", is_flag=True, help="also make it the current context")
def set_context_command(name: str, server: str | None, token: str | None, token_file: str | None,
                        ca: str | None, use: bool) -> None:
    """Create context NAME, or change the fields given of an existing one."""
    if token and token_file:
        raise click.UsageError("give --token or --token-file, not both")
    path = config_path()
    data = _load(path)
    contexts = _contexts(data, path)
    existed = name in contexts
    contexts[name] = updated_context(contexts.get(name, {}), server=server, token=token, token_file=token_file,
                                     ca=ca)
    data["contexts"] = contexts
    if use:
        data["current-context"] = name
    _save(path, data)
    echo(f'Context "{name}" {"modified" if existed else "created"}.')
