"""Log tickets: the API server's own credential towards an agent's log endpoint.

A user's token never leaves the API server. To proxy ``GET /api/v1/instances/NAME/log`` the
server signs a short ticket for exactly that request and sends it as ``Authorization: CP-Ticket
<ticket>``; the agent accepts nothing else (Kubernetes' lesson: the apiserver authenticates to
the kubelet with its own credential). A ticket is ``base64url(claims JSON) "." base64url(Ed25519
signature)`` with the claims ``kid`` (which cluster key signed it), ``aud`` (machine name),
``instance``, ``follow``, ``tail``, ``exp`` (now + 30 s) and a random ``nonce``; the agent keeps
the nonces it accepted until they expire, so a ticket is good for one request only.

The same tickets authorize ``exec`` (``POST /api/v1/instances/NAME/exec``): an exec ticket has
``act: "exec"`` and ``cmd``, the SHA-256 of the command (controlplane/execstream.py), instead of
``follow`` and ``tail``. A log ticket says ``act: "logs"`` (one without ``act``, from an API server
of before, is a log ticket too), so neither kind can be used for the other.

Agents learn the public keys from their heartbeat replies (their authenticated channel to the
API). This module is pure apart from ``os.urandom`` in ``issue``; it imports only ``errors`` and
``cryptography`` so the agent can use it without the server's modules.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import heapq
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from controlplane.errors import BadRequest, Forbidden

TICKET_SCHEME = "CP-Ticket"
TICKET_TTL_SECONDS = 30.0
# an agent refuses tickets that claim to live longer than this (a skewed or hostile clock)
MAX_TICKET_LIFETIME_SECONDS = 120.0
MAX_TICKET_CHARS = 2048
REPLAY_CACHE_MAX = 100_000
MAX_TAIL = 1_000_000


ACT_LOGS, ACT_EXEC = "logs", "exec"


class TicketRefused(Forbidden):
    """A ticket that does not authorize this request; ``why`` is the short reason."""

    def __init__(self, why: str, *, action: str = ACT_LOGS) -> None:
        super().__init__(f"{'log' if action == ACT_LOGS else action} ticket refused: {why}")
        self.why = why


@dataclass(frozen=True)
class LogParams:
    """What a log request asks for, in one canonical form on both sides of the ticket."""

    follow: bool = False
    tail: int | None = None

    def query(self) -> dict[str, str]:
        params = {"follow": "1"} if self.follow else {}
        if self.tail is not None:
            params["tail"] = str(self.tail)
        return params


def parse_log_params(query: Mapping[str, str]) -> LogParams:
    """``follow`` (1/true/0/false/absent) and ``tail`` (a non-negative integer or absent)."""
    follow_raw = query.get("follow", "").lower()
    if follow_raw not in ("", "0", "false", "1", "true"):
        raise BadRequest(f"follow must be 1, true, 0 or false, got {follow_raw[:20]!r}")
    tail_raw = query.get("tail", "")
    tail: int | None = None
    if tail_raw:
        if not tail_raw.isdigit() or len(tail_raw) > 7 or int(tail_raw) > MAX_TAIL:
            raise BadRequest(f"tail must be an integer from 0 to {MAX_TAIL}, got {tail_raw[:20]!r}")
        tail = int(tail_raw)
    return LogParams(follow=follow_raw in ("1", "true"), tail=tail)


# ---- keys ----

def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def new_signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def private_raw(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def public_raw(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_id(public: bytes) -> str:
    """A short, stable name of a public key (so rotation can keep several keys valid at once)."""
    return b64url(hashlib.sha256(public).digest()[:9])


def public_keys_from_wire(encoded: Iterable[object]) -> dict[str, Ed25519PublicKey]:
    """The heartbeat reply's ``logSigningKeys`` (standard base64 of the raw 32-byte keys) by key id;
    anything that is not such a key is skipped."""
    keys: dict[str, Ed25519PublicKey] = {}
    for item in encoded:
        if not isinstance(item, str):
            continue
        try:
            raw = base64.b64decode(item, validate=True)
            keys[key_id(raw)] = Ed25519PublicKey.from_public_bytes(raw)
        except (binascii.Error, ValueError):
            continue
    return keys


# ---- tickets ----

def issue(key: Ed25519PrivateKey, *, machine: str, instance: str, params: LogParams, now: float,
          ttl: float = TICKET_TTL_SECONDS, nonce: str | None = None) -> str:
    """A ticket for one log request of ``instance`` on ``machine``, valid ``ttl`` seconds from ``now``."""
    return _signed(key, {"act": ACT_LOGS, "aud": machine, "instance": instance, "follow": params.follow,
                         "tail": params.tail}, now=now, ttl=ttl, nonce=nonce)


def issue_exec(key: Ed25519PrivateKey, *, machine: str, instance: str, command_digest: str, now: float,
               ttl: float = TICKET_TTL_SECONDS, nonce: str | None = None) -> str:
    """A ticket for one exec of the command whose digest is ``command_digest`` in ``instance`` on ``machine``."""
    return _signed(key, {"act": ACT_EXEC, "aud": machine, "instance": instance, "cmd": command_digest},
                   now=now, ttl=ttl, nonce=nonce)


def _signed(key: Ed25519PrivateKey, claims: dict[str, Any], *, now: float, ttl: float, nonce: str | None) -> str:
    claims = {**claims, "kid": key_id(public_raw(key)), "exp": round(now + ttl, 3),
              "nonce": nonce or b64url(os.urandom(18))}
    body = b64url(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode())
    return f"{body}.{b64url(key.sign(body.encode()))}"


def _claims(ticket: str, keys: Mapping[str, Ed25519PublicKey]) -> dict[str, Any]:
    """The claims of a ticket whose signature verifies under one of ``keys``."""
    if len(ticket) > MAX_TICKET_CHARS or ticket.count(".") != 1:
        raise TicketRefused("malformed")
    body, signature = ticket.split(".")
    try:
        claims = json.loads(unb64url(body))
        sig = unb64url(signature)
    except (binascii.Error, ValueError) as err:
        raise TicketRefused("malformed") from err
    if not isinstance(claims, dict) or not isinstance(claims.get("kid"), str):
        raise TicketRefused("malformed")
    public = keys.get(claims["kid"])
    if public is None:
        raise TicketRefused("unknown key")
    try:
        public.verify(sig, body.encode())
    except InvalidSignature as err:
        raise TicketRefused("bad signature") from err
    return claims


def _checked(ticket: str, keys: Mapping[str, Ed25519PublicKey], *, action: str, machine: str, instance: str,
             now: float) -> dict[str, Any]:
    """The claims of a ticket that verifies, is live, and is for this action, machine and instance."""
    try:
        claims = _claims(ticket, keys)
    except TicketRefused as err:
        raise TicketRefused(err.why, action=action) from err
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or isinstance(exp, bool) or not isinstance(claims.get("nonce"), str):
        raise TicketRefused("malformed", action=action)
    if exp <= now:
        raise TicketRefused("expired", action=action)
    if exp > now + MAX_TICKET_LIFETIME_SECONDS:
        raise TicketRefused("expiry too far in the future", action=action)
    if claims.get("act", ACT_LOGS) != action:
        raise TicketRefused(f"wrong action (a ticket for {str(claims.get('act'))[:20]})", action=action)
    if claims.get("aud") != machine:
        raise TicketRefused("wrong machine", action=action)
    if claims.get("instance") != instance:
        raise TicketRefused("wrong instance", action=action)
    return claims


def verify_exec(ticket: str, keys: Mapping[str, Ed25519PublicKey], *, machine: str, instance: str,
                command_digest: str, now: float) -> dict[str, Any]:
    """The claims of ``ticket`` if it authorizes exactly this exec; TicketRefused otherwise."""
    claims = _checked(ticket, keys, action=ACT_EXEC, machine=machine, instance=instance, now=now)
    if claims.get("cmd") != command_digest:
        raise TicketRefused("altered command", action=ACT_EXEC)
    return claims


def verify(ticket: str, keys: Mapping[str, Ed25519PublicKey], *, machine: str, instance: str,
           params: LogParams, now: float) -> dict[str, Any]:
    """The claims of ``ticket`` if it authorizes this request (signature, expiry, action, audience,
    instance and parameters); TicketRefused with the first reason otherwise. Replays are ReplayCache's job."""
    claims = _checked(ticket, keys, action=ACT_LOGS, machine=machine, instance=instance, now=now)
    tail = claims.get("tail")
    if claims.get("follow") is not params.follow or tail != params.tail or type(tail) is not type(params.tail):
        raise TicketRefused("altered params")
    return claims


class ReplayCache:
    """Nonces accepted and not yet expired. Bounded: when full of live nonces it refuses (fails closed)."""

    def __init__(self, *, max_entries: int = REPLAY_CACHE_MAX) -> None:
        self.max_entries = max_entries
        self._expiry: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._expiry)

    def _purge(self, now: float) -> None:
        while self._heap and self._heap[0][0] <= now:
            _, nonce = heapq.heappop(self._heap)
            self._expiry.pop(nonce, None)

    def remember(self, nonce: str, exp: float, *, now: float) -> None:
        """Record ``nonce`` until ``exp``; TicketRefused if it was seen before (or no room is left)."""
        self._purge(now)
        if nonce in self._expiry:
            raise TicketRefused("replayed")
        if len(self._expiry) >= self.max_entries:
            raise TicketRefused("too many tickets in flight; retry shortly")
        self._expiry[nonce] = exp
        heapq.heappush(self._heap, (exp, nonce))


class TicketVerifier:
    """An agent's check of every log request: a valid ticket for this machine, used once."""

    def __init__(self, machine: str) -> None:
        self.machine = machine
        self.replays = ReplayCache()
        self._wire: tuple[object, ...] = ()
        self._keys: dict[str, Ed25519PublicKey] = {}

    def keys(self, wire: Iterable[object]) -> dict[str, Ed25519PublicKey]:
        wire = tuple(wire)
        if wire != self._wire:
            self._wire, self._keys = wire, public_keys_from_wire(wire)
        return self._keys

    def check(self, ticket: str, wire_keys: Iterable[object], *, instance: str, params: LogParams,
              now: float) -> dict[str, Any]:
        claims = verify(ticket, self.keys(wire_keys), machine=self.machine, instance=instance, params=params,
                        now=now)
        self.replays.remember(claims["nonce"], float(claims["exp"]), now=now)
        return claims

    def check_exec(self, ticket: str, wire_keys: Iterable[object], *, instance: str, command_digest: str,
                   now: float) -> dict[str, Any]:
        claims = verify_exec(ticket, self.keys(wire_keys), machine=self.machine, instance=instance,
                             command_digest=command_digest, now=now)
        try:
            self.replays.remember(claims["nonce"], float(claims["exp"]), now=now)
        except TicketRefused as err:
            raise TicketRefused(err.why, action=ACT_EXEC) from err
        return claims
