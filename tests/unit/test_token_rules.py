"""The pure parts of stored tokens: durations, values, hashes, expiry, lastUsed pacing, the role
policy and join scope, the Token schema's rules, the stored-token lookup, cpctl's request and table,
and the agent's token file."""

from __future__ import annotations

import datetime as dt
import os
import stat
from pathlib import Path
from typing import Any

import click
import pytest

from agent.jointoken import exchange_until_answered, is_not_a_join_token, write_token_file
from controlplane.api.auth import TokenTable, User, authorize, check_join_scope
from controlplane.api.tokens import StoredTokenTable, token_from_body
from controlplane.cli.tokens import expires_text, token_request, token_table
from controlplane.errors import BadRequest, Forbidden, Invalid, ServiceUnavailable, Unauthorized
from controlplane.model import rfc3339
from controlplane.schemas import load_object
from controlplane.tokens import (
    EXCHANGE_PATH,
    SECRET_CHARS,
    expired,
    hash_matches,
    last_used_due,
    new_secret,
    new_token_name,
    parse_time,
    public_view,
    secret_hash,
    split_value,
    stored_token_problem,
)

NOW = 1_800_000_000.0
SECRET = "A" * SECRET_CHARS


def test_a_new_value_splits_into_its_name_and_secret() -> None:
    name, secret = new_token_name(), new_secret()
    assert name.startswith("tok-") and len(name) == 12 and len(secret) == SECRET_CHARS
    assert split_value(f"{name}.{secret}") == (name, secret)
    assert new_secret() != secret


@pytest.mark.parametrize("value", [
    "admin-token", "tok-1.short", f"Tok-1.{SECRET}", f"tok-1.{SECRET}A", f".{SECRET}", f"tok-1.{SECRET[:-1]}=",
    f"-tok.{SECRET}", f"tok-1.{SECRET[:-1]}+", f"tok-1{SECRET}", f"{'a' * 64}.{SECRET}",
])
def test_what_is_not_a_stored_token_value(value: str) -> None:
    assert split_value(value) is None


def test_hash_check() -> None:
    digest = secret_hash(SECRET)
    assert len(digest) == 64 and SECRET not in digest
    assert hash_matches(digest, SECRET)
    assert not hash_matches(digest, "B" * SECRET_CHARS)
    assert not hash_matches("", SECRET)


@pytest.mark.parametrize(("expires_at", "now", "is_expired"), [
    ("", NOW, False),
    (rfc3339(NOW + 1), NOW, False),
    (rfc3339(NOW), NOW, True),
    (rfc3339(NOW - 1), NOW, True),
    ("not a time", NOW, True),  # refused rather than kept forever
])
def test_expiry(expires_at: str, now: float, is_expired: bool) -> None:
    assert expired({"expiresAt": expires_at}, now) is is_expired


def test_times_round_trip() -> None:
    assert parse_time(rfc3339(NOW)) == NOW and parse_time("") is None and parse_time("yesterday") is None


@pytest.mark.parametrize(("last_used", "due"), [
    ("", True), (rfc3339(NOW - 61), True), (rfc3339(NOW - 60), True), (rfc3339(NOW - 59), False),
    (rfc3339(NOW), False), ("garbage", True),
])
def test_last_used_is_written_at_most_once_a_minute(last_used: str, due: bool) -> None:
    assert last_used_due(last_used, NOW) is due


def _stored(*, expires_at: str = "", join: bool = False, role: str = "node", machine: str = "m1") -> dict[str, Any]:
    return {"metadata": {"name": "tok-1", "resourceVersion": "7"}, "secretHash": secret_hash(SECRET),
            "spec": {"role": role, "machine": machine, "join": join},
            "status": {"expiresAt": expires_at, "lastUsed": rfc3339(NOW)}}


@pytest.mark.parametrize(("obj", "secret", "problem"), [
    (_stored(), SECRET, ""),
    (_stored(), "B" * SECRET_CHARS, "invalid bearer token"),
    (None, SECRET, "invalid bearer token"),
    (_stored(expires_at=rfc3339(NOW - 1)), SECRET, "bearer token expired"),
    (_stored(expires_at=rfc3339(NOW - 1)), "B" * SECRET_CHARS, "invalid bearer token"),  # no hint without the secret
])
def test_stored_token_problem(obj: dict[str, Any] | None, secret: str, problem: str) -> None:
    assert stored_token_problem(obj, secret, NOW) == problem


def test_public_view_has_no_hash() -> None:
    view = public_view(_stored())
    assert "secretHash" not in view and view["spec"]["machine"] == "m1"


ADMIN, VIEWER, NODE = User("a", "admin"), User("v", "viewer"), User("n", "node", "m1")


@pytest.mark.parametrize(("user", "verb", "allowed"), [
    (ADMIN, "create", True), (ADMIN, "list", True), (ADMIN, "watch", True), (ADMIN, "delete", True),
    (VIEWER, "list", False), (VIEWER, "get", False), (VIEWER, "watch", False), (VIEWER, "create", False),
    (NODE, "get", False), (NODE, "list", False), (NODE, "create", False), (NODE, "delete", False),
])
def test_tokens_are_for_admins_only(user: User, verb: str, allowed: bool) -> None:
    if allowed:
        authorize(user, verb, "tokens")
    else:
        with pytest.raises(Forbidden, match="tokens are for admins only"):
            authorize(user, verb, "tokens", name="tok-1")


JOIN = User("tok-1", "node", "m1", token="tok-1", join=True)


@pytest.mark.parametrize(("user", "method", "path", "allowed"), [
    (JOIN, "POST", EXCHANGE_PATH, True),
    (JOIN, "GET", EXCHANGE_PATH, False),
    (JOIN, "POST", "/api/v1/machines/m1/heartbeat", False),
    (JOIN, "GET", "/api/v1/units", False),
    (JOIN, "GET", "/readyz", False),
    (NODE, "POST", "/api/v1/machines/m1/heartbeat", True),
    (NODE, "POST", EXCHANGE_PATH, True),  # the handler answers it: 403 not a join token
    (ADMIN, "GET", "/api/v1/tokens", True),
])
def test_a_join_token_is_good_for_the_exchange_only(user: User, method: str, path: str, allowed: bool) -> None:
    if allowed:
        check_join_scope(user, method, path)
    else:
        with pytest.raises(Unauthorized, match="join token is good only for"):
            check_join_scope(user, method, path)


@pytest.mark.parametrize(("spec", "field"), [
    ({"role": "node", "machine": "m1"}, None),
    ({"role": "node", "machine": "m1", "join": True, "ttlSeconds": 3600, "description": "x" * 256}, None),
    ({"role": "viewer"}, None),
    ({"role": "admin", "machine": ""}, None),
    ({"role": "node"}, "spec.machine"),
    ({"role": "viewer", "machine": "m1"}, "spec.machine"),
    ({"role": "admin", "join": True}, "spec.join"),
    ({"role": "root"}, "spec.role"),
    ({"role": "node", "machine": "M_1"}, "spec.machine"),
    ({"role": "viewer", "ttlSeconds": -1}, "spec.ttlSeconds"),
    ({"role": "viewer", "ttlSeconds": "60"}, "spec.ttlSeconds"),
    ({"role": "viewer", "description": "x" * 257}, "spec.description"),
    ({"role": "viewer", "join": 1}, "spec.join"),
    ({"role": "viewer", "value": "x"}, "spec.value"),
])
def test_token_spec_rules(spec: dict[str, Any], field: str | None) -> None:
    body = {"metadata": {"name": "t1"}, "spec": spec}
    if field is None:
        assert load_object("Token", body)["spec"]["role"] == spec["role"]
    else:
        with pytest.raises(Invalid) as err:
            load_object("Token", body)
        assert field in [c.field for c in err.value.causes]


def test_a_create_body_gets_a_name_and_may_not_bring_a_hash() -> None:
    obj, generated = token_from_body({"spec": {"role": "viewer"}})
    assert generated and obj["metadata"]["name"].startswith("tok-")
    obj, generated = token_from_body({"metadata": {"name": "ci"}, "spec": {"role": "viewer"}})
    assert not generated and obj["metadata"]["name"] == "ci"
    with pytest.raises(Invalid):
        token_from_body({"spec": {"role": "viewer"}, "secretHash": secret_hash(SECRET)})
    with pytest.raises(Invalid, match="reserved"):
        token_from_body({"metadata": {"name": "exchange"}, "spec": {"role": "viewer"}})
    with pytest.raises(BadRequest):
        token_from_body({"kind": "Secret", "spec": {"role": "viewer"}})


class _Cache:
    def __init__(self, objects: dict[str, dict[str, Any]]) -> None:
        self.objects = objects

    def get(self, name: str) -> dict[str, Any] | None:
        return self.objects.get(name)


class _Registry:
    def __init__(self, objects: dict[str, dict[str, Any]]) -> None:
        self.caches = {"tokens": _Cache(objects)}


def _table(**stored: Any) -> TokenTable:
    table = TokenTable({"file-token": User("ops", "admin")})
    table.stored = StoredTokenTable(_Registry({"tok-1": _stored(**stored)}), clock=lambda: NOW)  # type: ignore[arg-type]
    return table


def test_the_token_file_and_the_stored_tokens_authenticate() -> None:
    table = _table()
    assert table.authenticate("Bearer file-token") == User("ops", "admin")
    assert table.authenticate(f"Bearer tok-1.{SECRET}") == User("tok-1", "node", "m1", token="tok-1")
    assert _table(join=True).authenticate(f"Bearer tok-1.{SECRET}", method="POST", path=EXCHANGE_PATH).join
    for method, path in (("", ""), ("POST", "/api/v1/machines/m1/heartbeat"), ("GET", EXCHANGE_PATH)):
        with pytest.raises(Unauthorized, match="join token is good only for"):
            _table(join=True).authenticate(f"Bearer tok-1.{SECRET}", method=method, path=path)
    for header in (f"Bearer tok-1.{'B' * SECRET_CHARS}", f"Bearer tok-2.{SECRET}", "Bearer tok-1", None, "Basic x"):
        with pytest.raises(Unauthorized):
            table.authenticate(header)
    with pytest.raises(Unauthorized, match="expired"):
        _table(expires_at=rfc3339(NOW - 1)).authenticate(f"Bearer tok-1.{SECRET}")


def test_cpctl_token_request() -> None:
    body = token_request(role="node", machine="m1", ttl_seconds=60, description="d", join=True, name=None)
    assert body == {"apiVersion": "v1", "kind": "Token", "metadata": {},
                    "spec": {"role": "node", "machine": "m1", "ttlSeconds": 60, "description": "d", "join": True}}
    assert token_request(role="viewer", machine=None, ttl_seconds=0, description="", join=False,
                         name="ci")["metadata"] == {"name": "ci"}
    for kwargs in ({"role": "node", "machine": None}, {"role": "admin", "machine": "m1"},
                   {"role": "viewer", "machine": None, "join": True}):
        with pytest.raises(click.UsageError):
            token_request(**{"ttl_seconds": 0, "description": "", "join": False, "name": None, **kwargs})


def test_cpctl_token_table_shows_no_value() -> None:
    now = dt.datetime.fromtimestamp(NOW, dt.UTC)
    assert expires_text("", now) == "never"
    assert expires_text(rfc3339(NOW - 5), now) == "expired"
    assert expires_text(rfc3339(NOW + 300), now) == "in 5m"
    obj = public_view(_stored(expires_at=rfc3339(NOW + 90)))
    obj["metadata"]["creationTimestamp"] = rfc3339(NOW - 3 * 3600)
    lines = token_table([obj], now).splitlines()
    assert lines[0].split() == ["NAME", "ROLE", "MACHINE", "JOIN", "EXPIRES", "LAST-USED", "AGE", "DESCRIPTION"]
    assert lines[1].split() == ["tok-1", "node", "m1", "no", "in", "90s", "0s", "ago", "3h"]


def test_the_agent_rewrites_its_token_file_privately_and_whole(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("join-value\n")
    os.chmod(path, 0o644)
    write_token_file(path, "tok-1." + SECRET)
    assert path.read_text() == f"tok-1.{SECRET}\n"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["token"]  # no temporary file left behind


def test_the_agent_keeps_a_token_that_is_not_a_join_token() -> None:
    assert is_not_a_join_token(Forbidden('the token of user "n" (node) is not a join token; ...'))
    assert not is_not_a_join_token(Forbidden("user n cannot create tokens"))
    assert not is_not_a_join_token(Unauthorized("not a join token"))


class _ExchangeClient:
    """Answers the exchange with each of ``answers`` in turn (an exception is raised)."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.calls = 0

    async def request(self, method: str, path: str) -> Any:
        assert (method, path) == ("POST", EXCHANGE_PATH)
        self.calls += 1
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


async def _no_sleep(seconds: float) -> None:
    return None


@pytest.mark.parametrize(("answers", "deadline", "result", "calls"), [
    ([{"value": "tok-2." + SECRET}], None, (True, "tok-2." + SECRET), 1),
    ([Forbidden("the token of user x (node) is not a join token; ...")], None, (True, None), 1),
    ([ServiceUnavailable("down"), Unauthorized("no"), {"value": "tok-3." + SECRET}], None,
     (True, "tok-3." + SECRET), 3),
    ([ServiceUnavailable("down")], 0.0, (False, None), 1),  # past its deadline: the agent starts anyway
    ([{"kind": "Token"}, Forbidden("... not a join token")], None, (True, None), 2),  # no value: asked again
])
async def test_the_agent_asks_until_answered_or_out_of_patience(
        tmp_path: Path, answers: list[Any], deadline: float | None, result: tuple[bool, str | None],
        calls: int) -> None:
    path = tmp_path / "token"
    path.write_text("join\n")
    client = _ExchangeClient(*answers)
    assert await exchange_until_answered(client, path, deadline=deadline, sleep=_no_sleep) == result  # type: ignore[arg-type]
    assert client.calls == calls
    assert path.read_text() == (f"{result[1]}\n" if result[1] else "join\n")
