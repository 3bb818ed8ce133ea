"""The role policy (``authorize``) and bearer-token parsing (``TokenTable``), without a server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from controlplane.api.auth import ANONYMOUS_ADMIN, TokenTable, User, authorize
from controlplane.errors import Forbidden, Invalid, Unauthorized

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


def _table(tmp_path: Path, text: str) -> TokenTable:
    path = tmp_path / "tokens.csv"
    path.write_text(text)
    return TokenTable.from_file(path)


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
    ("text", "line"),
    [
        ("t,alice\n", 1),
        ("t,alice,root\n", 1),
        ("ok,a,admin\nt,n1,node\n", 2),
        ("ok,a,admin\n# c\nt,n1,node,\n", 3),
        ("t\n", 1),
    ],
)
def test_token_file_errors(tmp_path: Path, text: str, line: int) -> None:
    with pytest.raises(Invalid) as err:
        _table(tmp_path, text)
    assert f":{line}:" in err.value.message


def test_token_file_missing(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        TokenTable.from_file(tmp_path / "nope.csv")
