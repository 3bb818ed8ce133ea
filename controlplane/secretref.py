"""Secret references and views: which Secrets a unit's containers use, and what a reader may see of one.

The API server (may this node read that Secret? what does a viewer see?) and the agent (what to
fetch before it creates a container) read ``spec.secretEnv`` through these same functions, so the
two can never disagree about which Secrets an instance uses. Pure: no I/O, nothing logged; a
function here never puts a Secret's value into a message.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from controlplane.model import SECRET_REDACTED

# a Secret's keys are env-var or file names (Kubernetes' rule): letters, digits, '-', '_', '.'
SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]{1,253}$")
SECRET_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
REF_FORM = "secretname/key"


@dataclass(frozen=True)
class SecretRef:
    """``env[var]`` comes from key ``key`` of Secret ``secret``."""

    var: str
    secret: str
    key: str

    @property
    def text(self) -> str:
        return f"{self.secret}/{self.key}"


def valid_key(key: str) -> bool:
    return bool(SECRET_KEY.fullmatch(key)) and key not in (".", "..")


def parse_ref(var: str, text: str) -> SecretRef:
    """``"db/password"`` -> SecretRef; ValueError (naming the reference, never a value) when malformed."""
    secret, sep, key = text.partition("/")
    if not sep or len(secret) > 63 or not SECRET_NAME.fullmatch(secret) or not valid_key(key):
        raise ValueError(f"{text!r} is not a secret reference of the form {REF_FORM!r}")
    return SecretRef(var, secret, key)


def secret_refs(spec: Mapping[str, Any] | None) -> list[SecretRef]:
    """The references of a unit spec (or an instance template), sorted by variable; malformed ones
    are left out (the schemas refuse them at admission, so only a hand-written object has them)."""
    refs: list[SecretRef] = []
    for var, text in sorted(((spec or {}).get("secretEnv") or {}).items()):
        try:
            refs.append(parse_ref(str(var), str(text)))
        except ValueError:
            continue
    return refs


def secrets_used_on(machine: str, instances: Iterable[Mapping[str, Any]]) -> frozenset[str]:
    """The Secrets named by the secretEnv of the instances bound to ``machine``: what its node may read."""
    if not machine:
        return frozenset()
    names: set[str] = set()
    for instance in instances:
        spec = instance.get("spec") or {}
        if spec.get("machine") != machine:
            continue
        names.update(ref.secret for ref in secret_refs(spec.get("template")))
    return frozenset(names)


def redacted(secret: Mapping[str, Any]) -> dict[str, Any]:
    """The Secret with every value replaced by ``SECRET_REDACTED`` (keys stay visible)."""
    data = secret.get("data") or {}
    return {**secret, "data": {key: SECRET_REDACTED for key in data}}
