"""Shell completion of kinds and object names, on top of click's own (``_CPCTL_COMPLETE=bash_source
cpctl``; docs/cli.md "Shell completion"), which completes verbs and flags by itself.

Names are fetched from the API with the credentials every verb would use (flags, environment,
config file and context) and a short timeout. Completion must never print an error into the
user's shell, so any failure (no server, a refused token, a bad config file) completes nothing.
"""

from __future__ import annotations

from typing import Any

import click

from .common import KIND_ALIASES, KINDS

COMPLETION_TIMEOUT = 2.0
MAX_NAMES = 500  # one page: a completion menu longer than that helps nobody


def _items(values: list[str], incomplete: str) -> list[Any]:
    from click.shell_completion import CompletionItem

    return [CompletionItem(value) for value in values if value.startswith(incomplete)]


def complete_kind(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    """The kinds' plurals, and the other spellings only once they are being typed."""
    plurals = list(KINDS)
    if any(kind.startswith(incomplete) for kind in plurals):
        return _items(plurals, incomplete)
    return _items(sorted(KIND_ALIASES), incomplete.lower())


def names_of(ctx: click.Context, resource: str) -> list[str]:
    """The names of ``resource`` on the server; [] on any failure."""
    from .config import config_from_context
    from .rest import RestClient

    try:
        config = config_from_context(ctx)
        with RestClient(config.server, token=config.token, ca=config.ca, timeout=COMPLETION_TIMEOUT) as api:
            page = api.list(resource, limit=MAX_NAMES)
        return [str((item.get("metadata") or {}).get("name", "")) for item in page.get("items") or []]
    except Exception:  # noqa: BLE001 - completion fails silently, whatever went wrong
        return []


def complete_name(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    """Names of the kind given before (``cpctl get units <TAB>``)."""
    resource = ctx.params.get("kind")
    if not isinstance(resource, str) or resource not in KINDS:
        return []
    return _items(names_of(ctx, resource), incomplete)


def complete_context(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    """The config file's context names."""
    from .config import config_path, parse_config_text
    from .configfile import contexts_of

    try:
        path = config_path()
        return _items(sorted(contexts_of(parse_config_text(path.read_text(), path))), incomplete)
    except Exception:  # noqa: BLE001 - as above
        return []


def complete_names_of(resource: str) -> Any:
    """A ``shell_complete`` for an argument that always names a ``resource`` (INSTANCE, UNIT, MACHINE)."""

    def complete(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
        return _items(names_of(ctx, resource), incomplete)

    return complete
