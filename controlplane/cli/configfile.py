"""Reading ``~/.config/cpctl/config.yaml`` without importing yaml when the file is the flat
``key: value`` text that ``cpctl dev up`` writes (importing yaml costs 10-15 ms, a sixth of cpctl's
start-up).

``flat_values`` answers only when it is certain to agree with ``yaml.safe_load``: every line empty,
a comment, or ``key: value`` with a value YAML would read as that very string (no quotes, spaces
or indicators, not a number, time, boolean or null). Anything else is None, and the caller
parses the file with yaml as before. tests/unit/test_cli_config_file.py checks the agreement.
Below that, the pure part of contexts: which server/token/ca a file names for a context.
"""

from __future__ import annotations

import re
from typing import Any

_LINE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*): +([A-Za-z0-9_./:@%+=~,-]+) *")  # tabs: YAML refuses some
_COMMENT_OR_EMPTY = re.compile(r" *(?:#.*)?")
# YAML 1.1 words that are not strings (PyYAML's bool and null resolvers)
_WORDS = frozenset("yes Yes YES no No NO true True TRUE false False FALSE on On ON off Off OFF "
                   "null Null NULL".split())
# every character of YAML's int, float and timestamp forms: a value that starts like a number
# and has none but these may be one
_NUMERIC = frozenset("-+0123456789_.:eEinfINFaAbBcCdDxXTtZ")


def surely_text(value: str) -> bool:
    """Pure: YAML reads the plain scalar ``value`` (of ``_LINE``'s characters) as this string."""
    if value in _WORDS or value.endswith(":"):
        return False
    if value[0] in "-+0123456789.":
        return any(char not in _NUMERIC for char in value)
    return value[0] not in "~=:%@,"


def flat_values(text: str) -> dict[str, str] | None:
    """Pure: the ``key: value`` pairs of ``text``, or None when only YAML can tell."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        match = _LINE.fullmatch(line)
        if match is None:
            if _COMMENT_OR_EMPTY.fullmatch(line):
                continue
            return None
        key, value = match.groups()
        if key in _WORDS or not surely_text(value):
            return None
        values[key] = value
    return values


# ---- contexts -------------------------------------------------------------------------------------
# A context is a named server/token/ca (docs/cli.md "Contexts"):
#   current-context: prod
#   contexts:
#     prod: {server: https://10.0.0.1:7070, token-file: ~/.config/cpctl/prod.token, ca: /etc/cp/ca.pem}
# Without a chosen context (no --context, no current-context) the top-level server/token/ca are used:
# the single-server file of before (and of ``cpctl dev up``) reads as it always did.

CONTEXT_KEYS = ("server", "token", "token-file", "ca")


def contexts_of(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Pure: the file's contexts by name; ValueError when ``contexts`` is not a mapping of mappings."""
    contexts = data.get("contexts") or {}
    if not isinstance(contexts, dict) or not all(isinstance(v, dict) for v in contexts.values()):
        raise ValueError("contexts must be a mapping of NAME: {server, token or token-file, ca}")
    return {str(name): entry for name, entry in contexts.items()}


def selected_values(data: dict[str, Any], *, context: str | None) -> dict[str, str]:
    """Pure: server/token/token-file/ca of ``context``, else of ``current-context``, else the top level."""
    chosen = context or data.get("current-context") or None
    source = data
    if chosen:
        contexts = contexts_of(data)
        if str(chosen) not in contexts:
            known = ", ".join(sorted(contexts)) or "none"
            raise ValueError(f'no context "{chosen}" (known: {known}; cpctl config set-context NAME adds one)')
        source = contexts[str(chosen)]
    return {key: str(source[key]) for key in CONTEXT_KEYS if source.get(key) not in (None, "")}
