"""Reading ``~/.config/cpctl/config.yaml`` without importing yaml when the file is the flat
``key: value`` text that ``cpctl dev up`` writes (importing yaml costs 10-15 ms, a sixth of cpctl's
start-up).

``flat_values`` answers only when it is certain to agree with ``yaml.safe_load``: every line empty,
a comment, or ``key: value`` with a value YAML would read as that very string (no quotes, spaces
or indicators, not a number, time, boolean or null). Anything else is None, and the caller
parses the file with yaml as before. tests/unit/test_cli_config_file.py checks the agreement.
"""

from __future__ import annotations

import re

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
