"""Log tickets (controlplane/logticket.py): what an agent accepts, and every reason it refuses."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest

from controlplane.errors import BadRequest
from controlplane.logticket import (
    LogParams,
    ReplayCache,
    TicketRefused,
    TicketVerifier,
    b64url,
    issue,
    key_id,
    new_signing_key,
    parse_log_params,
    public_keys_from_wire,
    public_raw,
    unb64url,
    verify,
)

KEY = new_signing_key()
OTHER_KEY = new_signing_key()
WIRE = [base64.b64encode(public_raw(KEY)).decode()]
KEYS = public_keys_from_wire(WIRE)
NOW = 1_000_000.0
PARAMS = LogParams(follow=False, tail=10)


def ticket(**overrides: Any) -> str:
    options: dict[str, Any] = {"machine": "m1", "instance": "web-0", "params": PARAMS, "now": NOW}
    options.update(overrides)
    return issue(options.pop("key", KEY), **options)


def resigned(claims_change: Callable[[dict[str, Any]], None], *, key: Any = KEY) -> str:
    """A ticket whose claims were changed and then signed again with ``key``."""
    body, _ = ticket().split(".")
    claims = json.loads(unb64url(body))
    claims_change(claims)
    new_body = b64url(json.dumps(claims).encode())
    return f"{new_body}.{b64url(key.sign(new_body.encode()))}"


def tampered_body() -> str:
    body, signature = ticket().split(".")
    claims = json.loads(unb64url(body))
    claims["aud"] = "m2"
    return f"{b64url(json.dumps(claims).encode())}.{signature}"


def tampered_signature() -> str:
    body, signature = ticket().split(".")
    raw = bytearray(unb64url(signature))
    raw[0] ^= 1
    return f"{body}.{b64url(bytes(raw))}"


def other_key_claiming_ours() -> str:
    return resigned(lambda claims: None, key=OTHER_KEY)  # kid says KEY, signed by OTHER_KEY


# (ticket, machine, instance, params, now, why)
REFUSED = [
    (ticket(), "m1", "web-0", PARAMS, NOW + 30, "expired"),
    (ticket(now=NOW - 31), "m1", "web-0", PARAMS, NOW, "expired"),
    (ticket(ttl=3600), "m1", "web-0", PARAMS, NOW, "expiry too far in the future"),
    (ticket(), "m2", "web-0", PARAMS, NOW, "wrong machine"),
    (ticket(), "m1", "web-1", PARAMS, NOW, "wrong instance"),
    (ticket(), "m1", "web-0", LogParams(follow=True, tail=10), NOW, "altered params"),
    (ticket(), "m1", "web-0", LogParams(follow=False, tail=11), NOW, "altered params"),
    (ticket(), "m1", "web-0", LogParams(follow=False, tail=None), NOW, "altered params"),
    (resigned(lambda c: c.update(tail=True)), "m1", "web-0", LogParams(tail=1), NOW, "altered params"),
    (tampered_body(), "m2", "web-0", PARAMS, NOW, "bad signature"),
    (tampered_signature(), "m1", "web-0", PARAMS, NOW, "bad signature"),
    (other_key_claiming_ours(), "m1", "web-0", PARAMS, NOW, "bad signature"),
    (ticket(key=OTHER_KEY), "m1", "web-0", PARAMS, NOW, "unknown key"),
    (resigned(lambda c: c.update(kid="nope")), "m1", "web-0", PARAMS, NOW, "unknown key"),
    (resigned(lambda c: c.pop("kid")), "m1", "web-0", PARAMS, NOW, "malformed"),
    (resigned(lambda c: c.update(exp="soon")), "m1", "web-0", PARAMS, NOW, "malformed"),
    (resigned(lambda c: c.pop("nonce")), "m1", "web-0", PARAMS, NOW, "malformed"),
    ("", "m1", "web-0", PARAMS, NOW, "malformed"),
    ("no-dot-here", "m1", "web-0", PARAMS, NOW, "malformed"),
    ("a.b.c", "m1", "web-0", PARAMS, NOW, "malformed"),
    ("!!!.???", "m1", "web-0", PARAMS, NOW, "malformed"),
    (ticket() + "x" * 3000, "m1", "web-0", PARAMS, NOW, "malformed"),
    ("admin-token", "m1", "web-0", PARAMS, NOW, "malformed"),
]


@pytest.mark.parametrize(("token", "machine", "instance", "params", "now", "why"), REFUSED)
def test_refused_with_its_reason(token: str, machine: str, instance: str, params: LogParams, now: float,
                                 why: str) -> None:
    with pytest.raises(TicketRefused) as err:
        verify(token, KEYS, machine=machine, instance=instance, params=params, now=now)
    assert err.value.why == why
    assert err.value.code == 403 and why in err.value.message


def test_a_fitting_ticket_is_accepted_once() -> None:
    verifier = TicketVerifier("m1")
    good = ticket()
    claims = verifier.check(good, WIRE, instance="web-0", params=PARAMS, now=NOW + 29)
    assert claims["aud"] == "m1" and claims["instance"] == "web-0" and claims["tail"] == 10
    with pytest.raises(TicketRefused) as err:
        verifier.check(good, WIRE, instance="web-0", params=PARAMS, now=NOW + 1)
    assert err.value.why == "replayed"
    # a new ticket for the same request is fine: nonces differ
    verifier.check(ticket(), WIRE, instance="web-0", params=PARAMS, now=NOW + 1)


def test_verifier_of_another_machine_refuses() -> None:
    with pytest.raises(TicketRefused) as err:
        TicketVerifier("m2").check(ticket(), WIRE, instance="web-0", params=PARAMS, now=NOW)
    assert err.value.why == "wrong machine"


def test_no_keys_yet_refuses_everything() -> None:
    with pytest.raises(TicketRefused) as err:
        TicketVerifier("m1").check(ticket(), [], instance="web-0", params=PARAMS, now=NOW)
    assert err.value.why == "unknown key"


def test_replay_cache_forgets_expired_nonces_and_is_bounded() -> None:
    cache = ReplayCache(max_entries=2)
    cache.remember("a", 10.0, now=0.0)
    cache.remember("b", 20.0, now=0.0)
    with pytest.raises(TicketRefused, match="too many"):
        cache.remember("c", 30.0, now=5.0)
    cache.remember("c", 30.0, now=10.0)  # "a" expired at 10
    assert len(cache) == 2
    with pytest.raises(TicketRefused) as err:
        cache.remember("b", 20.0, now=15.0)
    assert err.value.why == "replayed"


def test_wire_keys_skip_garbage() -> None:
    keys = public_keys_from_wire([*WIRE, "not base64!", 42, None, base64.b64encode(b"short").decode()])
    assert list(keys) == [key_id(public_raw(KEY))]


@pytest.mark.parametrize(("query", "expected"), [
    ({}, LogParams(False, None)),
    ({"follow": "1"}, LogParams(True, None)),
    ({"follow": "true", "tail": "5"}, LogParams(True, 5)),
    ({"follow": "0", "tail": "0"}, LogParams(False, 0)),
    ({"follow": "false"}, LogParams(False, None)),
])
def test_log_params(query: dict[str, str], expected: LogParams) -> None:
    assert parse_log_params(query) == expected
    assert parse_log_params(expected.query()) == expected


@pytest.mark.parametrize("query", [{"follow": "yes"}, {"tail": "-1"}, {"tail": "x"}, {"tail": "99999999"},
                                   {"tail": "1e3"}, {"tail": " 5"}])
def test_bad_log_params(query: dict[str, str]) -> None:
    with pytest.raises(BadRequest):
        parse_log_params(query)
