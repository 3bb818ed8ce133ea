"""Bearer-token authentication and the role policy (admin, viewer, node).

Tokens come from two places: the CSV token file (for bootstrapping admins; SIGHUP reloads it) and
the Token objects in etcd (api/tokens.py), looked up by id in the tokens' watch cache, so every API
server honours a new or revoked token as soon as its cache sees the change. A join token (a stored
node token with ``spec.join``) authenticates for ``POST /api/v1/tokens/exchange`` only.

The policy is a pure function of (user, verb, resource, subresource, object) so it is
table-tested without a server. A node token is bound to one machine: it reads what an
agent needs and writes only its own machine's status and heartbeat and the status of
instances bound to that machine. The token file is checked whole (mode 0600 or stricter,
every line well formed, no token twice) at start and on each reload (SIGHUP), and a bad
file is never half-applied.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
import re
import stat
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from controlplane.errors import Forbidden, Invalid, Unauthorized
from controlplane.tokens import EXCHANGE_PATH, TOKENS_RESOURCE

log = logging.getLogger(__name__)

ROLES = ("admin", "viewer", "node")
READ_VERBS = {"get", "list", "watch"}
NODE_READABLE = {"units", "instances", "endpoints", "machines", "events"}


@dataclass(frozen=True)
class User:
    name: str
    role: str
    machine: str = ""
    token: str = ""  # the id of a stored token ("" for the token file's)
    join: bool = False  # a join token: only POST /api/v1/tokens/exchange


class StoredTokens(Protocol):
    """The Token objects of etcd, as the auth path reads them (api/tokens.py implements it)."""

    def user_of(self, value: str) -> User | None:
        """The user of a stored token's value; None when it is not one; Unauthorized when it expired."""


ANONYMOUS_ADMIN = User("anonymous", "admin")


class TokenFileError(Invalid):
    """The token file is unusable; the message is one line naming the file (and the line)."""


TOKEN_FILE_FORMAT = "token,user,role[,machine] (machine only, and always, for role node)"
_TOKEN = re.compile(r"[\x21-\x7e]+")  # what survives a Bearer header: visible ASCII, no spaces
_MACHINE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def _user_of_row(row: list[str], where: str) -> tuple[str, User]:
    cells = [c.strip() for c in row]
    if len(cells) not in (3, 4) or not all(cells[:3]):
        raise TokenFileError(f"{where}: malformed line: expected {TOKEN_FILE_FORMAT}")
    token, name, role = cells[:3]
    machine = cells[3] if len(cells) == 4 else ""
    if not _TOKEN.fullmatch(token):
        raise TokenFileError(f"{where}: malformed token: only visible ASCII characters, no spaces")
    if role not in ROLES:
        raise TokenFileError(f"{where}: unknown role {role[:40]!r}; expected one of {', '.join(ROLES)}")
    if role == "node" and not machine:
        raise TokenFileError(f"{where}: a node token needs its machine name (4th column)")
    if role != "node" and len(cells) == 4:
        raise TokenFileError(f"{where}: only a node token names a machine; {role} has a 4th column")
    if machine and not _MACHINE.fullmatch(machine):
        raise TokenFileError(f"{where}: machine {machine[:70]!r} is not a DNS-1123 label")
    return token, User(name, role, machine)


def parse_tokens(text: str, *, source: str) -> dict[str, User]:
    """Pure: token -> User from the file's text; TokenFileError ``source:line: why`` on the first
    bad line (never quoting a token). Lines starting with # and blank lines are skipped."""
    users: dict[str, User] = {}
    first_line: dict[str, int] = {}
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            raise TokenFileError(f"{source}:{reader.line_num}: malformed line: {err}") from err
        where = f"{source}:{reader.line_num}"
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        token, user = _user_of_row(row, where)
        if token in users:
            raise TokenFileError(f"{where}: duplicate token (first on line {first_line[token]})")
        users[token] = user
        first_line[token] = reader.line_num
    if not users:
        raise TokenFileError(f"{source}: no tokens; expected lines {TOKEN_FILE_FORMAT}")
    return users


def read_token_file(path: str | Path) -> dict[str, User]:
    """The tokens of ``path``; TokenFileError when it is readable by group or others, unreadable
    or invalid."""
    try:
        mode = os.stat(path).st_mode
        if mode & 0o077:
            raise TokenFileError(f"{path}: mode {stat.S_IMODE(mode):04o} lets group or others at the tokens; "
                                 f"chmod 600 {path}")
        with open(path, encoding="utf-8", newline="") as handle:
            text = handle.read()
    except OSError as err:
        raise TokenFileError(f"{path}: cannot read the token file: {err.strerror or err}") from err
    except UnicodeDecodeError as err:
        raise TokenFileError(f"{path}: not UTF-8 text (byte {err.start})") from err
    return parse_tokens(text, source=str(path))


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class TokenTable:
    """Bearer tokens from a CSV file: ``token,user,role[,machine]``; ``reload`` swaps in a new file's.

    The file's tokens are kept by their SHA-256, so finding one is one dict lookup whatever the
    file's size (a scan comparing each token cost every request O(tokens): with a node token per
    machine, 2,000 machines' heartbeats made 2,000 x 1,000 comparisons a second). Looking up a
    digest tells a timing attacker nothing about the token itself."""

    def __init__(self, users: dict[str, User]) -> None:
        self._users = {_digest(token): user for token, user in users.items()}
        self.stored: StoredTokens | None = None  # attached by api/tokens.py once the registry exists

    @classmethod
    def from_file(cls, path: str | Path) -> TokenTable:
        return cls(read_token_file(path))

    def reload(self, path: str | Path) -> int:
        """Replace every token with those of ``path`` (all or nothing); returns how many there are.
        A bad file raises TokenFileError and leaves the table as it was."""
        users = read_token_file(path)
        self._users = {_digest(token): user for token, user in users.items()}
        return len(users)

    def authenticate(self, header: str | None, *, method: str = "", path: str = "") -> User:
        """The user of the bearer token in ``header``, for a request of ``method`` on ``path`` (a join
        token authenticates for the exchange only); Unauthorized otherwise."""
        if not header or not header.startswith("Bearer "):
            raise Unauthorized("missing bearer token")
        token = header[len("Bearer "):].strip()
        user = self._users.get(_digest(token))
        if user is not None:
            return user
        stored = self.stored.user_of(token) if self.stored is not None else None
        if stored is None:
            raise Unauthorized("invalid bearer token")
        check_join_scope(stored, method, path)
        return stored


def check_join_scope(user: User, method: str, path: str) -> None:
    """Unauthorized unless ``user`` is not a join token or this is the exchange (its only use)."""
    if user.join and not (method == "POST" and path == EXCHANGE_PATH):
        raise Unauthorized(f"a join token is good only for POST {EXCHANGE_PATH}")


def _may_read_secret(user: User, verb: str, name: str, node_secrets: Collection[str]) -> bool:
    """Secrets: a viewer lists, gets and watches them (the handlers redact the values); a node gets
    one by name, and only one that an instance bound to its machine uses; nothing else."""
    if user.role == "viewer":
        return verb in READ_VERBS
    return user.role == "node" and verb == "get" and bool(name) and name in node_secrets


def reload_tokens(table: TokenTable, path: str | Path) -> None:
    """SIGHUP: load ``path`` again; on a bad file keep serving with the old tokens, say so in one line."""
    try:
        count = table.reload(path)
    except TokenFileError as err:
        log.error("token file not reloaded, still serving the previous tokens: %s", err.message)
        return
    log.info("token file %s reloaded: %d tokens", path, count)


def authorize(
    user: User, verb: str, resource: str, *, subresource: str = "", name: str = "", obj: dict[str, Any] | None = None,
    node_secrets: Collection[str] = (),
) -> None:
    """Raise Forbidden unless ``user`` may do ``verb`` on ``resource[/name][/subresource]``.

    ``obj`` is the stored object for writes to existing objects (node checks its binding);
    ``node_secrets`` the Secrets the instances bound to a node's machine use (secretref.secrets_used_on)."""
    if user.role == "admin":
        return
    if resource == TOKENS_RESOURCE:
        raise Forbidden(f'user "{user.name}" ({user.role}) cannot {verb} tokens: tokens are for admins only')
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
