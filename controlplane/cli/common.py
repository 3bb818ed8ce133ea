"""What every cpctl command shares: KIND aliases, the client call wrapper and the error line.

``call`` runs one function against a ``RestClient`` (blocking, stdlib only: cli/rest.py) built
from the resolved config and turns every expected failure into an ``error: ...`` line and an exit
code (1 refused or unreachable, 3 waited in vain), so no command prints a traceback for them.
Nothing here imports aiohttp: a command that still hands ``call`` a coroutine function
(``async def go(api: Client)``) gets the async ``controlplane.client.Client``, imported then.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

import click

from controlplane.errors import CPError
from controlplane.model import RESOURCES

from .config import Config, config_from_context
from .rest import RestClient
from .terminal import echo

if TYPE_CHECKING:
    from controlplane.client import Client

T = TypeVar("T")

# what users type -> resource; kind names (Unit, Machine, ...) match case-insensitively too
KIND_ALIASES: dict[str, str] = {
    "unit": "units", "units": "units", "u": "units",
    "machine": "machines", "machines": "machines", "m": "machines",
    "instance": "instances", "instances": "instances", "i": "instances",
    "endpoints": "endpoints", "endpoint": "endpoints", "ep": "endpoints",
    "events": "events", "event": "events", "ev": "events",
    "secrets": "secrets", "secret": "secrets", "sec": "secrets",
}
# the singular used in "unit/web created"
SINGULAR = {"units": "unit", "machines": "machine", "instances": "instance", "endpoints": "endpoints",
            "events": "event", "secrets": "secret"}
# resource (URL plural) -> kind, and back; in the order cpctl lists them (units first)
KINDS: dict[str, str] = {resource: RESOURCES[resource] for resource in SINGULAR}
KIND_TO_RESOURCE: dict[str, str] = {kind: resource for resource, kind in KINDS.items()}


def resolve_kind(text: str) -> str:
    """The URL plural for a KIND as typed (singular, plural or short, any case)."""
    resource = KIND_ALIASES.get(text.strip().lower())
    if resource is None:
        known = "unit(s)/u, machine(s)/m, instance(s)/i, endpoints/ep, event(s)/ev, secret(s)/sec"
        raise click.BadParameter(f"unknown kind {text!r}; expected one of {known}", param_hint="KIND")
    return resource


def ref(resource: str, name: str) -> str:
    """``unit/web``: how cpctl names an object in its output."""
    return f"{SINGULAR.get(resource, resource)}/{name}"


class CLIError(click.ClickException):
    """An expected failure: one ``error: ...`` line on stderr and ``exit_code``."""

    def __init__(self, message: str, *, details: list[str] | None = None) -> None:
        super().__init__(message)
        self.details = list(details or [])

    def show(self, file: Any = None) -> None:
        echo(f"error: {self.format_message()}", err=True)
        for line in self.details:
            echo(line, err=True)


class WaitTimeout(CLIError):
    """A wait that ended before its goal: exit 3."""

    exit_code = 3


def error_line(err: CPError) -> str:
    """The Status message on one line, with any cause the message does not already name."""
    message = " ".join(str(err.message).split())
    extra = []
    for cause in err.causes:
        text = f"{cause.field}: {cause.message}" if cause.field else cause.message
        text = " ".join(text.split())
        if text and text not in message:
            extra.append(text)
    if extra:
        message = f"{message}; {'; '.join(extra)}"
    return message


def make_client(ctx: click.Context | None = None) -> RestClient:
    config = config_from_context(ctx)
    return RestClient(config.server, token=config.token, ca=config.ca)


CO_COROUTINE = 0x80  # inspect.CO_COROUTINE, without importing inspect (an ``async def`` function)


def call(func: Callable[[RestClient], T] | Callable[[Client], Awaitable[T]], *,
         ctx: click.Context | None = None) -> T:
    """``func(client)``; CPErrors become ``error: ...`` and exit 1, Ctrl-C exits 130."""
    try:
        if getattr(getattr(func, "__code__", None), "co_flags", 0) & CO_COROUTINE:
            return _call_async(cast("Callable[[Client], Awaitable[T]]", func), config_from_context(ctx))
        with make_client(ctx) as api:
            return cast("Callable[[RestClient], T]", func)(api)
    except CPError as err:
        raise CLIError(error_line(err)) from err
    except KeyboardInterrupt:
        raise SystemExit(130) from None


def _call_async(func: Callable[[Client], Awaitable[T]], config: Config) -> T:
    """The old way: a coroutine against the aiohttp client, on a fresh event loop."""
    import asyncio

    from controlplane.client import Client

    async def runner() -> T:
        async with Client(config.server, token=config.token, ca=config.ca) as client:
            return await func(client)

    return asyncio.run(runner())


def echo_lines(lines: list[str]) -> None:
    for line in lines:
        echo(line)
