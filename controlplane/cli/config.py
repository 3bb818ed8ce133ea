"""Where cpctl finds its server: flags, then environment, then ``~/.config/cpctl/config.yaml``.

Each setting (server, token, ca) is resolved on its own, so a token from the environment
can go with the server of the config file that ``cpctl dev up`` wrote. Flags are accepted
both before the verb (``cpctl --server URL get units``) and after it
(``cpctl get units --server URL``); the latter wins. The file may name several contexts
(configfile.py, ``cpctl config``): ``--context NAME``, else its ``current-context``, picks one.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from controlplane.servers import parse_servers

from .configfile import flat_values, selected_values
from .terminal import echo

DEFAULT_SERVER = "http://127.0.0.1:7070"
ENV_VARS = {"server": "CPCTL_SERVER", "token": "CPCTL_TOKEN", "ca": "CPCTL_CA"}
FLAGS_KEY = "cpctl.flags"
F = TypeVar("F", bound=Callable[..., Any])


class ConfigError(click.ClickException):
    """The config file exists but cannot be used (exit 1, like any refused request)."""

    def show(self, file: Any = None) -> None:
        echo(f"error: {self.format_message()}", err=True)


@dataclass(frozen=True)
class Config:
    server: str
    token: str | None = None
    ca: str | None = None


def config_path(home: str | Path | None = None) -> Path:
    """``~/.config/cpctl/config.yaml`` (HOME decides, so tests and ``dev up`` can move it)."""
    base = Path(home) if home is not None else Path.home()
    return base / ".config" / "cpctl" / "config.yaml"


def parse_config_text(text: str, path: Path) -> dict[str, Any]:
    """The file's mapping ({} when empty); ConfigError when it is not YAML or not a mapping."""
    data: Any = flat_values(text)  # dev up's flat file, without importing yaml (10-15 ms)
    if data is None:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must be a mapping with the keys server, token and ca (or contexts)")
    return data


def read_token_file(path: str) -> str:
    """A context's ``token-file``: the token on its first line; like the server's token file, one that
    group or others may read is refused."""
    target = Path(path).expanduser()
    try:
        mode = target.stat().st_mode
        if mode & 0o077:
            raise ConfigError(f"{target}: mode {stat.S_IMODE(mode):04o} lets group or others read the token; "
                              f"chmod 600 {target}")
        lines = target.read_text().strip().splitlines()
    except OSError as err:
        raise ConfigError(f"cannot read the token file {target}: {err.strerror or err}") from err
    return lines[0].strip() if lines else ""


def read_config_file(path: Path, *, context: str | None = None) -> dict[str, str]:
    """The server/token/ca the file gives ``context`` (or its current context, or its top level); an
    absent file is empty (unless a context is asked for), an unreadable one a ConfigError."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        if context:
            raise ConfigError(f'no context "{context}": there is no config file {path}') from None
        return {}
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror or err}") from err
    try:
        values = selected_values(parse_config_text(text, path), context=context)
    except ValueError as err:
        raise ConfigError(f"{path}: {err}") from err
    token_file = values.pop("token-file", "")
    if token_file and "token" not in values:
        values["token"] = read_token_file(token_file)
    return values


def resolve_config(
    *, flags: Mapping[str, str | None], env: Mapping[str, str], file_values: Mapping[str, str]
) -> Config:
    """Pure: each key from the flags, else the environment, else the file; server has a default."""
    values: dict[str, str | None] = {}
    for key, var in ENV_VARS.items():
        values[key] = flags.get(key) or env.get(var) or file_values.get(key) or None
    try:  # "URL[,URL...]": every server of the cluster, failed over in order (controlplane/servers.py)
        server = ",".join(parse_servers(values["server"] or DEFAULT_SERVER))
    except ValueError as err:
        raise ConfigError(f"--server/CPCTL_SERVER/server: {err}") from err
    return Config(server=server, token=values["token"], ca=values["ca"])


def load_config(flags: Mapping[str, str | None], *, env: Mapping[str, str] | None = None) -> Config:
    env = os.environ if env is None else env
    context = flags.get("context") or None
    needs_file = bool(context) or any(not flags.get(key) and not env.get(var) for key, var in ENV_VARS.items())
    file_values = read_config_file(config_path(), context=context) if needs_file else {}
    return resolve_config(flags=flags, env=env, file_values=file_values)


def _remember(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value:
        ctx.meta.setdefault(FLAGS_KEY, {})[str(param.name)] = value


def _complete_context(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    from .completion import complete_context

    return complete_context(ctx, param, incomplete)


def connection_options(func: F) -> F:
    """``--context``, ``--server``, ``--token`` and ``--ca`` on a group or a command (stored in ``ctx.meta``)."""
    options = [
        click.option("--context", metavar="NAME", expose_value=False, callback=_remember,
                     shell_complete=_complete_context,
                     help="the config file's context to use (default: its current-context)"),
        click.option("--server", metavar="URL[,URL...]", expose_value=False, callback=_remember,
                     help="API server URL; several, comma-separated, are failed over in order [env CPCTL_SERVER]"),
        click.option("--token", metavar="TOKEN", expose_value=False, callback=_remember,
                     help="bearer token [env CPCTL_TOKEN]"),
        click.option("--ca", metavar="FILE", expose_value=False, callback=_remember,
                     help="CA certificate for an https server [env CPCTL_CA]"),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def config_from_context(ctx: click.Context | None = None) -> Config:
    ctx = ctx or click.get_current_context()
    return load_config(dict(ctx.meta.get(FLAGS_KEY) or {}))
