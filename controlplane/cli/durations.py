"""Durations on cpctl's command line: ``30s``, ``2m``, ``1h30m``, ``500ms``, ``1.5s`` or a plain number
of seconds, as kubectl and Go's ``time.ParseDuration`` take them.

``DURATION`` is the one click ParamType every timeout and interval flag of cpctl uses; it hands
the command a float of seconds, so ``--timeout 90`` and ``--timeout 1m30s`` are the same thing.
Pure and stdlib-only (it is imported at start-up by every verb with a timeout).
"""

from __future__ import annotations

import re
from typing import Any

import click

# a number, then its unit; "ms" before "m" so "500ms" is not 500 minutes then "s"
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|us|µs|ns|s|m|h|d)")
_PLAIN = re.compile(r"\d+(?:\.\d*)?|\.\d+")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0,
                 "d": 86400.0}
EXAMPLES = "30s, 2m, 1h30m, 500ms or a number of seconds"


def parse_duration(text: str) -> float:
    """Pure: the seconds of ``text``; ValueError (naming the accepted forms) otherwise."""
    cleaned = text.strip().lower()
    if _PLAIN.fullmatch(cleaned):
        return float(cleaned)
    pos, total = 0, 0.0
    while pos < len(cleaned):
        match = _PART.match(cleaned, pos)
        if match is None:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if not cleaned or pos != len(cleaned):
        raise ValueError(f"invalid duration {text!r}: expected e.g. {EXAMPLES}")
    return total


class Duration(click.ParamType):
    """A click parameter of seconds written as a duration; ``minimum`` and ``maximum`` bound it (inclusive)."""

    name = "duration"

    def __init__(self, *, minimum: float = 0.0, maximum: float | None = None) -> None:
        self.minimum = minimum
        self.maximum = maximum

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "DURATION"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            seconds = float(value)
        else:
            try:
                seconds = parse_duration(str(value))
            except ValueError as err:
                self.fail(str(err), param, ctx)
        if seconds < self.minimum:
            self.fail(f"{value!r} is shorter than the minimum, {self.minimum:g}s", param, ctx)
        if self.maximum is not None and seconds > self.maximum:
            self.fail(f"{value!r} is longer than the maximum, {self.maximum:g}s", param, ctx)
        return seconds


DURATION = Duration()
