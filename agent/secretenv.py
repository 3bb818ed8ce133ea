"""Secret values for containers' environments, fetched when a container is created, and kept out of logs.

A unit's ``spec.secretEnv: {VAR: "secretname/key"}`` names values; the agent reads each Secret with
its node token right before it creates the container (the API lets a node read only the Secrets
that instances bound to its machine use), and never writes a value anywhere but into the
container's create call:

- ``ApiSecrets`` reads them through the API; a missing Secret or key, or a refusal, is a
  ``SecretConfigError`` whose message names the reference (``secret "db" not found``), never a value;
- every value read is added to the agent's ``Scrubber``; ``ScrubFilter`` (installed on the agent's
  log handlers by agent/main.py) and the executor (for statuses and Events) replace any value that
  still shows up in a message, e.g. an engine error that echoes the create body, by ``<redacted>``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

from controlplane.client import Client
from controlplane.errors import CPError, Forbidden, NotFound
from controlplane.model import SECRET_REDACTED
from controlplane.secretref import SecretRef

# shorter values are not scrubbed: replacing every "ab" would garble every line, and a value that
# short is no secret anyway (README "Secrets")
MIN_SCRUBBED = 4
MAX_REMEMBERED = 4096


class SecretConfigError(Exception):
    """A container's secretEnv cannot be satisfied; the message names references only."""


class Scrubber:
    """The secret values this process has seen, and ``scrub`` to take them out of a text."""

    def __init__(self) -> None:
        self._values: dict[str, None] = {}  # insertion-ordered set, longest replaced first

    def add(self, values: Iterable[str]) -> None:
        for value in values:
            for form in _forms(value):
                self._values.pop(form, None)
                self._values[form] = None
        while len(self._values) > MAX_REMEMBERED:
            del self._values[next(iter(self._values))]

    def scrub(self, text: str) -> str:
        if not self._values or not text:
            return text
        for value in sorted(self._values, key=len, reverse=True):
            if value in text:
                text = text.replace(value, SECRET_REDACTED)
        return text


def _forms(value: str) -> list[str]:
    """The value, its JSON-escaped form (an engine error may echo the JSON body) and its longer lines."""
    forms = {value, json.dumps(value)[1:-1]}
    forms.update(line for line in value.splitlines() if len(line) >= 2 * MIN_SCRUBBED)
    return [f for f in forms if len(f) >= MIN_SCRUBBED]


class ScrubFilter(logging.Filter):
    """A handler filter: every record's final text, traceback included, goes through the scrubber."""

    def __init__(self, scrubber: Scrubber) -> None:
        super().__init__()
        self.scrubber = scrubber
        self._formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # arguments that do not fit the format: keep every piece
            message = " ".join([str(record.msg), *(str(a) for a in record.args or ())])
        record.msg = self.scrubber.scrub(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.scrubber.scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = self.scrubber.scrub(record.stack_info)
        return True


def install_log_filter(scrubber: Scrubber, logger: logging.Logger | None = None) -> None:
    """Add a ScrubFilter to every handler of ``logger`` (the root logger by default)."""
    for handler in (logger or logging.getLogger()).handlers:
        handler.addFilter(ScrubFilter(scrubber))


class SecretSource(Protocol):
    async def environment(self, refs: Sequence[SecretRef]) -> dict[str, str]:
        """``{VAR: value}`` for the references; SecretConfigError when one cannot be satisfied."""
        ...


def pick(refs: Sequence[SecretRef], secrets: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
    """The environment from the fetched Secrets' data (pure); SecretConfigError for a missing key."""
    env: dict[str, str] = {}
    for ref in refs:
        data = secrets[ref.secret]
        if ref.key not in data:
            raise SecretConfigError(f'secret "{ref.secret}" has no key "{ref.key}" (wanted by {ref.var})')
        env[ref.var] = data[ref.key]
    return env


class ApiSecrets:
    """Reads Secrets through the API with the agent's node token."""

    def __init__(self, client: Client, scrubber: Scrubber) -> None:
        self.client = client
        self.scrubber = scrubber

    async def environment(self, refs: Sequence[SecretRef]) -> dict[str, str]:
        fetched: dict[str, Mapping[str, str]] = {}
        for name in sorted({ref.secret for ref in refs}):
            wanted = ", ".join(r.var for r in refs if r.secret == name)
            try:
                obj = await self.client.get("secrets", name)
            except NotFound as err:
                raise SecretConfigError(f'secret "{name}" not found (wanted by {wanted})') from err
            except Forbidden as err:
                raise SecretConfigError(f'secret "{name}": this node may not read it ({err.message})') from err
            except CPError as err:
                raise SecretConfigError(f'secret "{name}" could not be read: {err.message}') from err
            data = {str(k): str(v) for k, v in (obj.get("data") or {}).items()}
            self.scrubber.add(data.values())
            fetched[name] = data
        return pick(refs, fetched)
