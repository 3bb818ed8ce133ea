"""Label and field selectors (Kubernetes syntax), parsed once and matched as pure functions.

Label selectors: ``k=v``, ``k==v``, ``k!=v``, ``k in (a,b)``, ``k notin (a,b)``, ``k``, ``!k``,
comma-separated and ANDed. Field selectors: ``path=v``, ``path==v``, ``path!=v`` on dotted paths
into the object (``spec.machine=m1``, ``metadata.name=web``, ``status.phase=Running``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from controlplane.errors import BadRequest

Matcher = Callable[[dict[str, Any]], bool]

_SET_RE = re.compile(r"^\s*([A-Za-z0-9_./-]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")
_EQ_RE = re.compile(r"^\s*([A-Za-z0-9_./-]+)\s*(==|!=|=)\s*([A-Za-z0-9_.-]*)\s*$")
_EXISTS_RE = re.compile(r"^\s*(!?)\s*([A-Za-z0-9_./-]+)\s*$")


def _split_terms(text: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    terms, depth, current = [], 0, ""
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += char
    if current.strip():
        terms.append(current)
    return [t for t in terms if t.strip()]


def _label_term(term: str) -> Callable[[dict[str, str]], bool]:
    if match := _SET_RE.match(term):
        key, op, raw = match.groups()
        values = {v.strip() for v in raw.split(",") if v.strip()}
        if op == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    if match := _EQ_RE.match(term):
        key, op, value = match.groups()
        if op == "!=":
            return lambda labels: labels.get(key) != value
        return lambda labels: labels.get(key) == value
    if match := _EXISTS_RE.match(term):
        negate, key = match.groups()
        if negate:
            return lambda labels: key not in labels
        return lambda labels: key in labels
    raise BadRequest(f"invalid label selector term {term.strip()!r}")


def parse_label_selector(text: str | None) -> Matcher:
    """A matcher on an object's metadata.labels; empty text matches everything."""
    if not text or not text.strip():
        return lambda obj: True
    terms = [_label_term(t) for t in _split_terms(text)]

    def matches(obj: dict[str, Any]) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(term(labels) for term in terms)

    return matches


def field_value(obj: dict[str, Any], path: str) -> str:
    """The value at a dotted path as the string a selector compares against ('' when missing)."""
    value: Any = obj
    for part in path.split("."):
        if not isinstance(value, dict):
            return ""
        value = value.get(part)
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def required_field_value(text: str | None, path: str) -> str | None:
    """The value a field selector requires at ``path`` (a ``path=value`` term), None when it
    requires none: an object matches only if its ``field_value`` there is that value. The watch
    cache indexes watchers by it (watchcache.py)."""
    for term in _split_terms(text or ""):
        match = _EQ_RE.match(term)
        if match and match.group(1) == path and match.group(2) != "!=":
            return match.group(3)
    return None


def parse_field_selector(text: str | None) -> Matcher:
    """A matcher on dotted field paths; empty text matches everything."""
    if not text or not text.strip():
        return lambda obj: True
    terms: list[tuple[str, bool, str]] = []
    for term in _split_terms(text):
        match = _EQ_RE.match(term)
        if not match:
            raise BadRequest(f"invalid field selector term {term.strip()!r}")
        path, op, value = match.groups()
        terms.append((path, op == "!=", value))

    def matches(obj: dict[str, Any]) -> bool:
        return all((field_value(obj, path) != value) if negate else (field_value(obj, path) == value)
                   for path, negate, value in terms)

    return matches
