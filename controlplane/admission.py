"""Admission: what the API server adds to, and refuses in, a unit beyond its schema.

The schemas (controlplane/schemas.py) know the wire format; some rules depend on how the server
was started, so they are applied here, after the schema, on every create and update through the
API (the controllers' own writes carry specs that were admitted already):

- a proxy unit that names no image gets the server's ``--proxy-image``;
- a unit that names no ``pidsLimit`` gets ``--default-pids-limit``; one above ``--max-pids-limit``
  is refused;
- ``allowPrivilegeEscalation: true`` is refused unless the server runs with
  ``--allow-privilege-escalation``; ``capAdd`` may only name ``--allowed-capabilities``.

Pure: a policy (from the server's flags) and an object in, the admitted object out or Invalid
with one cause per refused field.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from controlplane.errors import Cause, Invalid
from controlplane.model import DEFAULT_PIDS_LIMIT, DEFAULT_PROXY_IMAGE, MAX_PIDS_LIMIT

POLICY_KEY = "admission"  # where make_app's config carries the policy


@dataclass(frozen=True)
class AdmissionPolicy:
    proxy_image: str = DEFAULT_PROXY_IMAGE
    default_pids_limit: int = DEFAULT_PIDS_LIMIT
    max_pids_limit: int = MAX_PIDS_LIMIT
    allow_privilege_escalation: bool = False
    allowed_capabilities: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if not 2 <= self.default_pids_limit <= self.max_pids_limit:
            raise ValueError(f"the default pids limit {self.default_pids_limit} must be between 2 and "
                             f"the maximum {self.max_pids_limit}")


def policy_of(config: dict[str, Any]) -> AdmissionPolicy:
    """The policy a server was configured with (``config[POLICY_KEY]``), else the defaults."""
    policy = config.get(POLICY_KEY)
    return policy if isinstance(policy, AdmissionPolicy) else AdmissionPolicy()


def parse_capabilities(text: str | Iterable[str]) -> frozenset[str]:
    """``"NET_ADMIN,CAP_SYS_TIME"`` -> {"NET_ADMIN", "SYS_TIME"} (Docker's names, without CAP_)."""
    items = text.split(",") if isinstance(text, str) else list(text)
    return frozenset(c.strip().upper().removeprefix("CAP_") for c in items if c.strip())


def _spec_causes(spec: dict[str, Any], policy: AdmissionPolicy, prefix: str) -> list[Cause]:
    """Fill the defaults into ``spec`` (in place) and return what the policy refuses."""
    if spec.get("proxy") and not spec.get("image"):
        spec["image"] = policy.proxy_image
    spec.setdefault("pidsLimit", policy.default_pids_limit)
    causes: list[Cause] = []
    if int(spec["pidsLimit"]) > policy.max_pids_limit:
        causes.append(Cause(f"{prefix}.pidsLimit", f"must be at most {policy.max_pids_limit} "
                                                   "(the server's --max-pids-limit)"))
    if spec.get("allowPrivilegeEscalation") and not policy.allow_privilege_escalation:
        causes.append(Cause(f"{prefix}.allowPrivilegeEscalation",
                            "not allowed on this cluster (the server runs without --allow-privilege-escalation)"))
    refused = sorted(set(parse_capabilities(spec.get("capAdd") or ())) - policy.allowed_capabilities)
    if refused:
        allowed = ", ".join(sorted(policy.allowed_capabilities)) or "none"
        causes.append(Cause(f"{prefix}.capAdd", f"{', '.join(refused)} not allowed (--allowed-capabilities: {allowed})"))
    return causes


def admit(kind: str, obj: dict[str, Any], policy: AdmissionPolicy) -> dict[str, Any]:
    """The object as it will be stored, or Invalid. ``obj`` is left alone: what admission fills in
    (top-level fields of the spec) goes into copies of the object and of that spec, which share
    the rest with ``obj``."""
    if kind == "Unit" and isinstance(obj.get("spec"), dict):
        obj = {**obj, "spec": dict(obj["spec"])}
        causes = _spec_causes(obj["spec"], policy, "spec")
    elif kind == "Instance" and isinstance((obj.get("spec") or {}).get("template"), dict):
        obj = {**obj, "spec": {**obj["spec"], "template": dict(obj["spec"]["template"])}}
        causes = _spec_causes(obj["spec"]["template"], policy, "spec.template")
    else:
        return obj
    if causes:
        name = str((obj.get("metadata") or {}).get("name", ""))
        summary = "; ".join(f"{c.field}: {c.message}" for c in causes)
        raise Invalid(f'{kind} "{name}" is invalid: {summary}', kind=kind, name=name, causes=causes)
    return obj


def with_admitted_fields(kind: str, local: dict[str, Any], stored: Mapping[str, Any]) -> dict[str, Any]:
    """``local`` with the fields admission filled into ``stored`` wherever ``local`` leaves them out,
    so re-applying an unchanged file compares equal to what the server keeps (``cpctl apply``)."""
    if kind != "Unit" or not isinstance(local.get("spec"), dict):
        return local
    spec, kept = dict(local["spec"]), stored.get("spec") or {}
    if "pidsLimit" not in spec and "pidsLimit" in kept:
        spec["pidsLimit"] = kept["pidsLimit"]
    if spec.get("proxy") and not spec.get("image") and kept.get("image"):
        spec["image"] = kept["image"]
    return {**local, "spec": spec}
