"""Bearer-token authentication and the role policy (admin, viewer, node).

The policy is a pure function of (user, verb, resource, subresource, object) so it is
table-tested without a server. A node token is bound to one machine: it reads what an
agent needs and writes only its own machine's status and heartbeat and the status of
instances bound to that machine.
"""

from __future__ import annotations

import csv
import hmac
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controlplane.errors import Forbidden, Invalid, Unauthorized

ROLES = ("admin", "viewer", "node")
READ_VERBS = {"get", "list", "watch"}
NODE_READABLE = {"units", "instances", "endpoints", "machines", "events"}


@dataclass(frozen=True)
class User:
    name: str
    role: str
    machine: str = ""


ANONYMOUS_ADMIN = User("anonymous", "admin")


class TokenTable:
    """Tokens from a CSV file: ``token,user,role[,machine]`` (lines starting with # are comments)."""

    def __init__(self, users: dict[str, User]) -> None:
        self._users = users

    @classmethod
    def from_file(cls, path: str | Path) -> TokenTable:
        users: dict[str, User] = {}
        with open(path, newline="") as handle:
            for lineno, row in enumerate(csv.reader(handle), start=1):
                if not row or not row[0].strip() or row[0].lstrip().startswith("#"):
                    continue
                if len(row) < 3 or row[2].strip() not in ROLES:
                    raise Invalid(f"{path}:{lineno}: expected token,user,role[,machine] with role in {ROLES}")
                token, name, role = (c.strip() for c in row[:3])
                machine = row[3].strip() if len(row) > 3 else ""
                if role == "node" and not machine:
                    raise Invalid(f"{path}:{lineno}: a node token needs its machine name")
                users[token] = User(name, role, machine)
        return cls(users)

    def authenticate(self, header: str | None) -> User:
        if not header or not header.startswith("Bearer "):
            raise Unauthorized("missing bearer token")
        token = header[len("Bearer "):].strip()
        for known, user in self._users.items():
            if hmac.compare_digest(known.encode(), token.encode()):
                return user
        raise Unauthorized("invalid bearer token")


def _may_read_secret(user: User, verb: str, name: str, node_secrets: Collection[str]) -> bool:
    """Secrets: a viewer lists, gets and watches them (the handlers redact the values); a node gets
    one by name, and only one that an instance bound to its machine uses; nothing else."""
    if user.role == "viewer":
        return verb in READ_VERBS
    return user.role == "node" and verb == "get" and bool(name) and name in node_secrets


def authorize(
    user: User, verb: str, resource: str, *, subresource: str = "", name: str = "", obj: dict[str, Any] | None = None,
    node_secrets: Collection[str] = (),
) -> None:
    """Raise Forbidden unless ``user`` may do ``verb`` on ``resource[/name][/subresource]``.

    ``obj`` is the stored object for writes to existing objects (node checks its binding);
    ``node_secrets`` the Secrets the instances bound to a node's machine use (secretref.secrets_used_on)."""
    if user.role == "admin":
        return
    if resource == "secrets":
        if not subresource and _may_read_secret(user, verb, name, node_secrets):
            return
        raise Forbidden(f'user "{user.name}" ({user.role}) cannot {verb} secrets' + (f"/{name}" if name else ""))
    if verb in READ_VERBS and subresource != "log":
        if user.role == "viewer" or (user.role == "node" and resource in NODE_READABLE):
            return
    if user.role == "viewer" and verb in READ_VERBS and subresource == "log":
        return
    if user.role == "node":
        if resource == "machines" and name == user.machine and subresource in ("status", "heartbeat"):
            return
        if resource == "instances" and subresource == "status" and obj is not None:
            if (obj.get("spec") or {}).get("machine") == user.machine:
                return
        if resource == "events" and verb == "create":
            return
    what = f"{resource}/{name}/{subresource}" if subresource else (f"{resource}/{name}" if name else resource)
    raise Forbidden(f'user "{user.name}" ({user.role}) cannot {verb} {what}')
