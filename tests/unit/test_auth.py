"""The role policy (``authorize``) and bearer-token parsing (``TokenTable``), without a server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from controlplane.api.auth import ANONYMOUS_ADMIN, TokenFileError, TokenTable, User, authorize, parse_tokens
from controlplane.errors import Forbidden, Unauthorized

ADMIN = User("root", "admin")
VIEWER = User("ro", "viewer")
NODE = User("node-m1", "node", "m1")

ON_M1 = {"spec": {"machine": "m1"}}
ON_M2 = {"spec": {"machine": "m2"}}
UNBOUND: dict[str, Any] = {"spec": {"machine": ""}}

# (user, verb, resource, subresource, name, obj, allowed)
POLICY = [
    # admin: everything
    (ADMIN, "create", "units", "", "", None, True),
    (ADMIN, "delete", "machines", "", "m3", None, True),
    (ADMIN, "update", "instances", "status", "web-0", ON_M2, True),
    (ADMIN, "get", "instances", "log", "web-0", None, True),
    (ANONYMOUS_ADMIN, "patch", "units", "", "web", None, True),
    # viewer: reads only (logs included)
    *[(VIEWER, verb, res, "", "", None, True) for verb in ("get", "list", "watch")
      for res in ("machines", "units", "instances", "endpoints", "events")],
    (VIEWER, "get", "instances", "log", "web-0", None, True),
    (VIEWER, "get", "units", "scale", "web", None, True),
    *[(VIEWER, verb, "units", "", "web", None, False) for verb in ("create", "update", "patch", "delete")],
    (VIEWER, "update", "units", "scale", "web", None, False),
    (VIEWER, "update", "machines", "status", "m1", None, False),
    (VIEWER, "update", "machines", "heartbeat", "m1", None, False),
    (VIEWER, "create", "events", "", "", None, False),
    # node: reads what an agent needs
    *[(NODE, verb, res, "", "", None, True) for verb in ("get", "list", "watch")
      for res in ("units", "instances", "endpoints", "machines", "events")],
    (NODE, "get", "instances", "log", "web-0", None, False),
    # node: its own machine's status and heartbeat
    (NODE, "update", "machines", "status", "m1", None, True),
    (NODE, "update", "machines", "heartbeat", "m1", None, True),
    (NODE, "update", "machines", "status", "m2", None, False),
    (NODE, "update", "machines", "heartbeat", "m2", None, False),
    (NODE, "update", "machines", "", "m1", None, False),
    (NODE, "patch", "machines", "", "m1", None, False),
    (NODE, "delete", "machines", "", "m1", None, False),
    (NODE, "create", "machines", "", "", None, False),
    # node: status of instances bound to its machine, and nothing else of instances
    (NODE, "update", "instances", "status", "web-0", ON_M1, True),
    (NODE, "update", "instances", "status", "web-0", ON_M2, False),
    (NODE, "update", "instances", "status", "web-0", UNBOUND, False),
    (NODE, "update", "instances", "status", "web-0", None, False),
    (NODE, "update", "instances", "", "web-0", ON_M1, False),
    (NODE, "delete", "instances", "", "web-0", ON_M1, False),
    # node: no unit writes
    *[(NODE, verb, "units", "", "web", None, False) for verb in ("create", "update", "patch", "delete")],
    (NODE, "update", "units", "scale", "web", None, False),
    (NODE, "update", "units", "status", "web", None, False),
    (NODE, "update", "endpoints", "", "web", None, False),
    # node: may record events
    (NODE, "create", "events", "", "", None, True),
    (NODE, "delete", "events", "", "e1", None, False),
]


@pytest.mark.parametrize(("user", "verb", "resource", "sub", "name", "obj", "allowed"), POLICY)
def test_policy(
    user: User, verb: str, resource: str, sub: str, name: str, obj: dict[str, Any] | None, allowed: bool
) -> None:
    if allowed:
        authorize(user, verb, resource, subresource=sub, name=name, obj=obj)
    else:
        with pytest.raises(Forbidden) as err:
            authorize(user, verb, resource, subresource=sub, name=name, obj=obj)
        assert err.value.code == 403
        assert user.name in err.value.message


def test_unknown_role_is_forbidden() -> None:
    with pytest.raises(Forbidden):
        authorize(User("x", "intruder"), "get", "units")


def _write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def _table(tmp_path: Path, text: str) -> TokenTable:
    return TokenTable.from_file(_write(tmp_path / "tokens.csv", text))


def test_token_file(tmp_path: Path) -> None:
    table = _table(tmp_path, "# comment\n\nt-admin,alice,admin\n t-view , bob , viewer \nt-node,n1,node,m1\n")
    assert table.authenticate("Bearer t-admin") == User("alice", "admin")
    assert table.authenticate("Bearer t-view") == User("bob", "viewer")
    assert table.authenticate("Bearer t-node ") == User("n1", "node", "m1")


@pytest.mark.parametrize("header", [None, "", "t-admin", "Basic dC1hZG1pbg==", "Bearer wrong", "Bearer ", "bearer t-admin"])
def test_authenticate_refuses(tmp_path: Path, header: str | None) -> None:
    table = _table(tmp_path, "t-admin,alice,admin\n")
    with pytest.raises(Unauthorized) as err:
        table.authenticate(header)
    assert err.value.code == 401


@pytest.mark.parametrize(
    ("text", "line", "why"),
    [
        ("t,alice\n", 1, "malformed line"),
        ("t,alice,admin,m1,extra\n", 1, "malformed line"),
        (",alice,admin\n", 1, "malformed line"),
        ("t,,admin\n", 1, "malformed line"),
        ('"t,alice,admin\n', 1, "malformed line"),
        ("t,alice,root\n", 1, "unknown role 'root'"),
        ("ok,a,admin\nt,n1,node\n", 2, "needs its machine"),
        ("ok,a,admin\n# c\nt,n1,node,\n", 3, "needs its machine"),
        ("t,alice,admin,m1\n", 1, "only a node token names a machine"),
        ("t,n1,node,M_1\n", 1, "not a DNS-1123 label"),
        ("t o k,alice,admin\n", 1, "malformed token"),
        ("t\n", 1, "malformed line"),
        ("same,a,admin\nother,b,viewer\n\nsame,c,viewer\n", 4, "duplicate token (first on line 1)"),
    ],
)
def test_token_file_errors(tmp_path: Path, text: str, line: int, why: str) -> None:
    with pytest.raises(TokenFileError) as err:
        _table(tmp_path, text)
    assert err.value.message.startswith(f"{tmp_path / 'tokens.csv'}:{line}: ")
    assert why in err.value.message and "\n" not in err.value.message
    assert "same" not in err.value.message.split(":", 2)[2]  # a token is never quoted back


def test_parse_tokens_is_pure() -> None:
    assert parse_tokens("a,alice,admin\nb,n,node,m2\n", source="x") == {
        "a": User("alice", "admin"), "b": User("n", "node", "m2")}
    with pytest.raises(TokenFileError, match="^x: no tokens"):
        parse_tokens("# nothing here\n\n", source="x")


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o601, 0o644, 0o666])
def test_token_file_open_to_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = _write(tmp_path / "tokens.csv", "t,alice,admin\n", mode)
    with pytest.raises(TokenFileError, match=f"mode {mode:04o}.*chmod 600"):
        TokenTable.from_file(path)


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_token_file_private_modes(tmp_path: Path, mode: int) -> None:
    table = TokenTable.from_file(_write(tmp_path / "tokens.csv", "t,alice,admin\n", mode))
    assert table.authenticate("Bearer t") == User("alice", "admin")


def test_token_file_missing(tmp_path: Path) -> None:
    with pytest.raises(TokenFileError, match="cannot read"):
        TokenTable.from_file(tmp_path / "nope.csv")


def test_reload_swaps_all_or_nothing(tmp_path: Path) -> None:
    path = _write(tmp_path / "tokens.csv", "old,alice,admin\n")
    table = TokenTable.from_file(path)
    assert table.reload(_write(path, "new,bob,viewer\n")) == 1
    assert table.authenticate("Bearer new") == User("bob", "viewer")
    with pytest.raises(Unauthorized):
        table.authenticate("Bearer old")
    with pytest.raises(TokenFileError):
        table.reload(_write(path, "fine,carol,admin\nbad,dave,root\n"))
    assert table.authenticate("Bearer new") == User("bob", "viewer")  # the old table stands
    with pytest.raises(Unauthorized):
        table.authenticate("Bearer fine")


def test_a_big_token_file_finds_each_token_and_only_whole_tokens() -> None:
    """Tokens are kept by digest (one lookup, not a scan of 2,000 comparisons per request): every
    token still finds its own user, and a prefix, an extension or another case of one finds none."""
    text = "".join(f"node-m{i}-secret,node-m{i},node,m{i}\n" for i in range(2000)) + "root-secret,root,admin\n"
    table = TokenTable(parse_tokens(text, source="tokens.csv"))
    assert table.authenticate("Bearer node-m1234-secret") == User("node-m1234", "node", "m1234")
    assert table.authenticate("Bearer root-secret") == User("root", "admin")
    for wrong in ("node-m1234-secre", "node-m1234-secretx", "NODE-M1234-SECRET", "", "node-m2000-secret"):
        with pytest.raises(Unauthorized):
            table.authenticate(f"Bearer {wrong}")
