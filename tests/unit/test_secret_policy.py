"""Secrets without a server: the role policy, which Secrets a machine uses, redaction, the schemas."""

from __future__ import annotations

from typing import Any

import pytest

from controlplane.api.auth import User, authorize
from controlplane.errors import Forbidden, Invalid
from controlplane.model import SECRET_MAX_BYTES, SECRET_REDACTED
from controlplane.schemas import load_object
from controlplane.secretref import SecretRef, parse_ref, redacted, secret_refs, secrets_used_on

ADMIN = User("root", "admin")
VIEWER = User("ro", "viewer")
NODE = User("node-m1", "node", "m1")
USED_ON_M1 = frozenset({"db"})

# (user, verb, name, subresource, node_secrets, allowed)
POLICY = [
    *[(ADMIN, verb, "db", "", frozenset(), True) for verb in ("get", "list", "watch", "create", "update",
                                                               "patch", "delete")],
    *[(VIEWER, verb, "db", "", frozenset(), True) for verb in ("get", "list", "watch")],
    *[(VIEWER, verb, "db", "", frozenset(), False) for verb in ("create", "update", "patch", "delete")],
    (VIEWER, "get", "db", "status", frozenset(), False),
    (NODE, "get", "db", "", USED_ON_M1, True),
    (NODE, "get", "other", "", USED_ON_M1, False),  # not used by an instance bound to m1
    (NODE, "get", "db", "", frozenset(), False),  # nothing bound to m1 uses it
    (NODE, "get", "", "", USED_ON_M1, False),
    (NODE, "list", "", "", USED_ON_M1, False),
    (NODE, "watch", "", "", USED_ON_M1, False),
    *[(NODE, verb, "db", "", USED_ON_M1, False) for verb in ("create", "update", "patch", "delete")],
    (NODE, "update", "db", "status", USED_ON_M1, False),
]


@pytest.mark.parametrize(("user", "verb", "name", "sub", "used", "allowed"), POLICY)
def test_secret_policy(user: User, verb: str, name: str, sub: str, used: frozenset[str], allowed: bool) -> None:
    call = lambda: authorize(user, verb, "secrets", name=name, subresource=sub, node_secrets=used)  # noqa: E731
    if allowed:
        call()
    else:
        with pytest.raises(Forbidden):
            call()


def test_node_secrets_do_not_open_other_resources() -> None:
    with pytest.raises(Forbidden):
        authorize(NODE, "create", "units", node_secrets=frozenset({"db"}))


def instance(machine: str, secret_env: dict[str, str] | None, *, name: str = "web-0") -> dict[str, Any]:
    template: dict[str, Any] = {"image": "x"}
    if secret_env is not None:
        template["secretEnv"] = secret_env
    return {"metadata": {"name": name}, "spec": {"unit": "web", "machine": machine, "template": template}}


def test_secrets_used_on_reads_bound_instances_only() -> None:
    instances = [
        instance("m1", {"A": "db/password", "B": "db/user", "C": "tls/key"}),
        instance("m2", {"A": "other/x"}, name="o-0"),
        instance("", {"A": "pending/x"}, name="p-0"),
        instance("m1", None, name="plain-0"),
        {"metadata": {"name": "no-template"}, "spec": {"machine": "m1", "template": None}},
    ]
    assert secrets_used_on("m1", instances) == {"db", "tls"}
    assert secrets_used_on("m2", instances) == {"other"}
    assert secrets_used_on("", instances) == frozenset()  # an unbound instance opens nothing


def test_refs_are_parsed_and_sorted_and_malformed_ones_dropped() -> None:
    assert secret_refs({"secretEnv": {"B": "db/user", "A": "db/pass.word", "C": "nokey"}}) == [
        SecretRef("A", "db", "pass.word"), SecretRef("B", "db", "user")]
    for bad in ("db", "db/", "/key", "DB/key", "db/a/b", "db/..", "db/" + "k" * 254):
        with pytest.raises(ValueError) as err:
            parse_ref("V", bad)
        assert "secretname/key" in str(err.value)


def test_redacted_keeps_keys_and_hides_values() -> None:
    secret = {"kind": "Secret", "metadata": {"name": "db"}, "data": {"password": "hunter2", "user": "app"}}
    shown = redacted(secret)
    assert shown["data"] == {"password": SECRET_REDACTED, "user": SECRET_REDACTED}
    assert shown["metadata"] == {"name": "db"} and secret["data"]["password"] == "hunter2"  # a copy


def secret_body(data: Any) -> dict[str, Any]:
    return {"kind": "Secret", "metadata": {"name": "db"}, "data": data}


def test_secret_schema_accepts_env_and_file_names() -> None:
    obj = load_object("Secret", secret_body({"PASSWORD": "x", "tls.crt": "y", "a-b_c": ""}))
    assert obj["data"] == {"PASSWORD": "x", "tls.crt": "y", "a-b_c": ""} and obj["apiVersion"] == "v1"
    assert load_object("Secret", {"metadata": {"name": "empty"}})["data"] == {}


@pytest.mark.parametrize("data", [{"a/b": "x"}, {"..": "x"}, {"": "x"}, {"k": 1}, {"k": None}, ["k"]])
def test_secret_schema_refuses_bad_keys_and_values(data: Any) -> None:
    with pytest.raises(Invalid) as err:
        load_object("Secret", secret_body(data))
    assert any(c.field.startswith("data") for c in err.value.causes)


def test_secret_size_is_bounded_and_the_refusal_names_no_value() -> None:
    value = "v" * (SECRET_MAX_BYTES // 2) + "UNIQUE-VALUE-MARK"
    with pytest.raises(Invalid) as err:
        load_object("Secret", secret_body({"a": value, "b": value}))
    assert str(SECRET_MAX_BYTES) in err.value.message and "UNIQUE-VALUE-MARK" not in str(err.value.to_status())
    load_object("Secret", secret_body({"a": "v" * (SECRET_MAX_BYTES - 1)}))


def unit(**spec: Any) -> dict[str, Any]:
    return {"kind": "Unit", "metadata": {"name": "web"}, "spec": {"image": "local/web:1", **spec}}


def test_unit_secret_env_and_security_fields() -> None:
    obj = load_object("Unit", unit(secretEnv={"DB_PASSWORD": "db/password"}, user="65534:65534", pidsLimit=100,
                                   allowPrivilegeEscalation=False, capAdd=["NET_ADMIN"]))
    spec = obj["spec"]
    assert spec["secretEnv"] == {"DB_PASSWORD": "db/password"} and spec["user"] == "65534:65534"
    assert spec["pidsLimit"] == 100 and spec["capAdd"] == ["NET_ADMIN"]
    assert "secretEnv" not in load_object("Unit", unit())["spec"]  # absent means none


@pytest.mark.parametrize(("spec", "field"), [
    ({"secretEnv": {"1BAD": "db/x"}}, "spec.secretEnv"),
    ({"secretEnv": {"A": "db"}}, "spec.secretEnv"),
    ({"secretEnv": {"A": "db/x"}, "env": {"A": "plain"}}, "spec.secretEnv"),
    ({"user": "root;rm"}, "spec.user"),
    ({"user": "1:2:3"}, "spec.user"),
    ({"pidsLimit": 1}, "spec.pidsLimit"),
    ({"pidsLimit": "100"}, "spec.pidsLimit"),
    ({"capAdd": ["net_admin"]}, "spec.capAdd[0]"),
])
def test_unit_refuses_bad_security_fields(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(Invalid) as err:
        load_object("Unit", unit(**spec))
    assert field in [c.field for c in err.value.causes], err.value.causes


def test_cpctl_create_secret_builds_the_object(tmp_path: Any) -> None:
    import click

    from controlplane.cli.create import secret_object

    cert = tmp_path / "tls.crt"
    cert.write_text("-----BEGIN CERT-----\n")
    obj = secret_object("db", ("password=a=b", "user=app"), (str(cert), f"key={cert}"))
    assert obj == {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"},
                   "data": {"password": "a=b", "user": "app", "tls.crt": "-----BEGIN CERT-----\n",
                            "key": "-----BEGIN CERT-----\n"}}
    for literals in (("novalue",), ("bad/key=x",), ("k=1", "k=2")):
        with pytest.raises(click.BadParameter):
            secret_object("db", literals, ())


def test_secret_table_shows_keys_never_values() -> None:
    from controlplane.cli.common import resolve_kind
    from controlplane.cli.printers import table

    assert {resolve_kind(k) for k in ("secret", "secrets", "sec", "Secret")} == {"secrets"}
    secret = {"metadata": {"name": "db", "creationTimestamp": ""}, "data": {"user": "app", "password": "hunter2"}}
    text = table("secrets", [secret], wide=True)
    assert text.splitlines()[0].split() == ["NAME", "DATA", "AGE", "KEYS"]
    assert text.splitlines()[1].split() == ["db", "2", "<unknown>", "password,user"] and "hunter2" not in text
