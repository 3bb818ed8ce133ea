"""``cpctl token create | list | revoke``: the cluster's stored bearer tokens (admins only; TOKEN_API.md).

``create`` prints the value and nothing else on stdout, once (the server never shows it again), so
``TOKEN=$(cpctl token create --role viewer)`` works; ``list`` shows ids, roles and times, never a
value; ``revoke ID`` deletes it, and every API server refuses it within a second.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from typing import TYPE_CHECKING, Any

import click

from controlplane.model import API_VERSION
from controlplane.tokens import TOKEN_ROLES, TOKENS_RESOURCE

from .common import call
from .config import connection_options
from .durations import Duration
from .outputs import no_headers_option
from .printers import age, dump_yaml, format_table, parse_time, without_header
from .terminal import echo

if TYPE_CHECKING:
    from controlplane.client import Client


def _whole_seconds(ctx: click.Context, param: click.Parameter, value: float | None) -> int:
    """The server takes whole seconds (0: never expires); a part second rounds up."""
    return 0 if value is None else math.ceil(value)


def token_request(*, role: str, machine: str | None, ttl_seconds: int, description: str, join: bool,
                  name: str | None) -> dict[str, Any]:
    """The body of POST /api/v1/tokens; UsageError for what the server would refuse anyway."""
    if role == "node" and not machine:
        raise click.UsageError("a node token needs --machine NAME")
    if role != "node" and machine:
        raise click.UsageError(f"only a node token names a machine; drop --machine for role {role}")
    if join and role != "node":
        raise click.UsageError("--join goes with --role node")
    spec: dict[str, Any] = {"role": role, "ttlSeconds": ttl_seconds, "description": description, "join": join}
    if machine:
        spec["machine"] = machine
    return {"apiVersion": API_VERSION, "kind": "Token", "metadata": {"name": name} if name else {}, "spec": spec}


def expires_text(expires_at: str, now: dt.datetime) -> str:
    """``never``, ``expired``, or how long it has left (``in 5m``)."""
    if not expires_at:
        return "never"
    when = parse_time(expires_at)
    if when is None or when <= now:
        return "expired"
    return "in " + age(now.isoformat(), when)


def token_table(items: list[dict[str, Any]], now: dt.datetime) -> str:
    rows = []
    for obj in items:
        meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
        last = status.get("lastUsed") or ""
        rows.append([str(meta.get("name", "")), str(spec.get("role", "")), spec.get("machine") or "-",
                     "yes" if spec.get("join") else "no", expires_text(str(status.get("expiresAt") or ""), now),
                     f"{age(last, now)} ago" if last else "never", age(meta.get("creationTimestamp"), now),
                     spec.get("description") or ""])
    return format_table(["NAME", "ROLE", "MACHINE", "JOIN", "EXPIRES", "LAST-USED", "AGE", "DESCRIPTION"], rows)


@click.group("token")
def token_group() -> None:
    """Bearer tokens stored in the cluster (admins only): create, list, revoke."""


@token_group.command("create")
@click.option("--role", type=click.Choice(TOKEN_ROLES), required=True)
@click.option("--machine", metavar="NAME", help="the machine a node token is bound to (node only, required)")
@click.option("--ttl", "ttl_seconds", type=Duration(minimum=1), callback=_whole_seconds,
              help="expire after 30s, 2m, 24h, 7d, 1h30m, ... (default: never)")
@click.option("--description", metavar="TEXT", default="", help="what the token is for (at most 256 characters)")
@click.option("--join", is_flag=True, help="a join token: the agent exchanges it, once, for a node token")
@click.option("--name", metavar="ID", help="the token's id (default: tok-<8 hex>)")
@connection_options
def create_command(role: str, machine: str | None, ttl_seconds: int, description: str, join: bool,
                   name: str | None) -> None:
    """Create a token and print its value (only this once)."""
    body = token_request(role=role, machine=machine, ttl_seconds=ttl_seconds, description=description, join=join,
                         name=name)

    async def go(api: Client) -> dict[str, Any]:
        return await api.create(TOKENS_RESOURCE, body)

    echo(str(call(go).get("value", "")))


@token_group.command("list")
@click.option("-o", "--output", type=click.Choice(["table", "json", "yaml"]), default="table", show_default=True)
@no_headers_option
@connection_options
def list_command(output: str, no_headers: bool) -> None:
    """The tokens (items[].metadata.name is the id); never a value."""

    async def go(api: Client) -> tuple[list[dict[str, Any]], str]:
        return await api.list_all(TOKENS_RESOURCE)

    items, revision = call(go)
    if output == "table":
        if not items:
            echo("No tokens found.", err=True)
            return
        echo(without_header(token_table(items, dt.datetime.now(dt.UTC)), headers=not no_headers))
        return
    data = {"kind": "TokenList", "apiVersion": API_VERSION, "metadata": {"resourceVersion": revision}, "items": items}
    echo(json.dumps(data, indent=2) if output == "json" else dump_yaml(data).rstrip("\n"))


@token_group.command("revoke")
@click.argument("token_id", metavar="ID")
@connection_options
def revoke_command(token_id: str) -> None:
    """Revoke token ID: every API server refuses it within a second."""

    async def go(api: Client) -> None:
        await api.delete(TOKENS_RESOURCE, token_id)

    call(go)
    echo(f"token/{token_id} revoked")
