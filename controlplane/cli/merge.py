"""``cpctl apply``'s three-way merge (kubectl's client-side apply), as pure functions.

Apply never replaces an object whole. It records what the file said in an annotation
(``LAST_APPLIED``) and sends the server an RFC 7386 merge patch computed from three objects:

- *last*: the file as applied the previous time (the annotation; empty when never applied);
- *new*: the file now;
- *live*: the object the server has.

A field in *new* whose value differs from *live* is set; a field in *last* that is no longer in
*new* is removed (the server re-defaults it); every other field of *live* is left alone, so what
someone else set (a machine's ``spec.unschedulable`` from ``cpctl cordon``, replicas from ``cpctl
scale`` when the file names none) survives a re-apply. Maps merge key by key; lists are replaced
whole (merge patch semantics), so a value of the file is compared with *live* as the server's
schemas default it (``ports: [{containerPort: 80}]`` is the live ``[{containerPort: 80, hostPort:
0, protocol: tcp}]``: unchanged) while the file's own value is what is sent. A Secret's annotation records its keys, never its values (a viewer
sees annotations but not values).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

LAST_APPLIED = "controlplane.io/last-applied-configuration"
SERVER_FIELDS = ("uid", "resourceVersion", "generation", "creationTimestamp")


def applied_form(obj: Mapping[str, Any]) -> dict[str, Any]:
    """What a file's object asks for: no status, no server-set metadata, no LAST_APPLIED."""
    body = {k: copy.deepcopy(v) for k, v in obj.items() if k != "status"}
    meta = {k: v for k, v in (body.get("metadata") or {}).items() if k not in SERVER_FIELDS}
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k != LAST_APPLIED}
    if annotations:
        meta["annotations"] = annotations
    else:
        meta.pop("annotations", None)
    body["metadata"] = meta
    return body


def recorded(obj: Mapping[str, Any]) -> str:
    """The LAST_APPLIED value for ``obj`` (its applied form; a Secret's values blanked)."""
    form = applied_form(obj)
    if form.get("kind") == "Secret" and isinstance(form.get("data"), dict):
        form["data"] = {key: "" for key in form["data"]}
    return json.dumps(form, separators=(",", ":"), sort_keys=True)


def last_applied(live: Mapping[str, Any]) -> dict[str, Any]:
    """The object recorded on ``live`` by the previous apply ({} when none or unreadable)."""
    text = ((live.get("metadata") or {}).get("annotations") or {}).get(LAST_APPLIED)
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def with_record(obj: Mapping[str, Any]) -> dict[str, Any]:
    """``obj``'s applied form carrying its own LAST_APPLIED annotation: what apply creates or merges."""
    form = applied_form(obj)
    form["metadata"]["annotations"] = {**(form["metadata"].get("annotations") or {}), LAST_APPLIED: recorded(obj)}
    return form


def three_way_patch(last: Mapping[str, Any], new: Mapping[str, Any], live: Mapping[str, Any], *,
                    defaulted: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The merge patch that makes ``live`` what ``new`` asks, removing what only ``last`` asked.
    ``defaulted`` is ``new`` as the server would default it: a value equal to live once defaulted
    is no change."""
    patch: dict[str, Any] = {}
    for key in last:
        if key not in new and key in live:
            patch[key] = None
    for key, value in new.items():
        current = live.get(key)
        with_defaults = (defaulted or {}).get(key, value)
        if isinstance(value, dict) and isinstance(current, dict):
            before = last.get(key)
            sub = three_way_patch(before if isinstance(before, dict) else {}, value, current,
                                  defaulted=with_defaults if isinstance(with_defaults, dict) else None)
            if sub:
                patch[key] = sub
        elif value is None:
            if key in live:
                patch[key] = None
        elif value != current and with_defaults != current:
            patch[key] = _without_nulls(value)
    return patch


def _without_nulls(value: Any) -> Any:
    """A value set whole: its null members mean 'absent' (a merge patch would read them as deletes)."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    return value


def apply_patch(obj: Mapping[str, Any], live: Mapping[str, Any]) -> dict[str, Any]:
    """The patch ``cpctl apply`` sends for the file's ``obj`` against ``live`` ({}: nothing to do)."""
    new = with_record(obj)
    return three_way_patch(applied_form(last_applied(live)), new, live, defaulted=_defaulted(new))


def _defaulted(obj: dict[str, Any]) -> dict[str, Any] | None:
    """``obj`` as the server's schemas load it (None when they refuse it: the server will say why)."""
    from controlplane.errors import CPError
    from controlplane.schemas import load_object

    try:
        return load_object(str(obj.get("kind")), obj)
    except CPError:
        return None

