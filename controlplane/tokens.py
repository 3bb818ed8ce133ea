"""Stored bearer tokens (``/api/v1/tokens``, TOKEN_API.md): values, hashes, expiry, durations.

Pure functions shared by the API server (api/tokens.py, api/auth.py), cpctl (cli/tokens.py) and the
agent (agent/jointoken.py), so a value is made, split and checked in one place. A value is
``<id>.<secret>``: the id is the Token object's name (so the server finds it without a scan), the
secret is 32 random bytes in URL-safe base64 (43 characters) and only its SHA-256 is stored
(``secretHash``, a field no read ever serves: ``public_view``).
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from typing import Any, TypedDict

from controlplane.model import ObjectMeta

# ---- the Token object on the wire (TOKEN_API.md) ----


class TokenSpec(TypedDict, total=False):
    role: str
    machine: str  # for role node (required), else ""
    ttlSeconds: int  # 0: no expiry
    description: str
    join: bool  # a join token: good only for POST /api/v1/tokens/exchange, once


class TokenStatus(TypedDict, total=False):
    expiresAt: str  # RFC 3339, "" for never
    createdAt: str
    lastUsed: str  # written at most once a minute per token


class Token(TypedDict, total=False):
    apiVersion: str
    kind: str
    metadata: ObjectMeta
    spec: TokenSpec
    status: TokenStatus


TOKENS_RESOURCE = "tokens"
TOKEN_ROLES = ("node", "viewer", "admin")
EXCHANGE_PATH = "/api/v1/tokens/exchange"
NOT_A_JOIN_TOKEN = "not a join token"  # in the 403 of an exchange with any other token (the agent looks for it)
HASH_FIELD = "secretHash"  # stored with the object, never served
SECRET_BYTES = 32
SECRET_CHARS = 43  # len(urlsafe_b64encode(32 bytes)) without the "=" padding
LAST_USED_EVERY_SECONDS = 60.0
MAX_TTL_SECONDS = 10 * 365 * 86400
DESCRIPTION_MAX = 256
_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_SECRET = re.compile(rf"[A-Za-z0-9_-]{{{SECRET_CHARS}}}")
_RFC3339 = "%Y-%m-%dT%H:%M:%S.%fZ"


def new_token_name() -> str:
    """``tok-<8 hex>``: the name of a token created without one."""
    return f"tok-{secrets.token_hex(4)}"


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(SECRET_BYTES)).decode().rstrip("=")


def split_value(value: str) -> tuple[str, str] | None:
    """``(id, secret)`` of a well-formed value, else None (a CSV token, a typo, anything else)."""
    name, sep, secret = value.partition(".")
    if not sep or not _NAME.fullmatch(name) or not _SECRET.fullmatch(secret):
        return None
    return name, secret


def hash_matches(stored_hash: str, secret: str) -> bool:
    """Constant-time comparison of the stored SHA-256 (hex) with the presented secret's."""
    return hmac.compare_digest(stored_hash.encode(), secret_hash(secret).encode())


@functools.lru_cache(maxsize=8192)
def parse_time(text: str) -> float | None:
    """Seconds since the epoch of one of our RFC 3339 stamps (``model.now_rfc3339``); None if empty or bad.
    Memoised: every heartbeat asks about the same few stamps (its token's, its machine's)."""
    if not text:
        return None
    try:
        return dt.datetime.strptime(text, _RFC3339).replace(tzinfo=dt.UTC).timestamp()
    except ValueError:
        return None


def expired(status: Mapping[str, Any], now: float) -> bool:
    """Whether a token with this status is past its ``expiresAt`` ("" never expires; a stamp that
    cannot be read counts as expired: a token is refused rather than kept forever by a typo)."""
    text = str(status.get("expiresAt") or "")
    if not text:
        return False
    when = parse_time(text)
    return when is None or now >= when


def last_used_due(last_used: str, now: float, *, every: float = LAST_USED_EVERY_SECONDS) -> bool:
    """Whether ``status.lastUsed`` is old enough to be written again (at most once a minute)."""
    then = parse_time(last_used)
    return then is None or now - then >= every


def stored_token_problem(obj: Mapping[str, Any] | None, secret: str, now: float) -> str:
    """Why the stored token ``obj`` does not let ``secret`` in ("" when it does)."""
    if obj is None or not hash_matches(str(obj.get(HASH_FIELD) or ""), secret):
        return "invalid bearer token"
    if expired(obj.get("status") or {}, now):
        return "bearer token expired"
    return ""


def public_view(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A Token as every reader sees it: without its hash."""
    return {key: value for key, value in obj.items() if key != HASH_FIELD}
