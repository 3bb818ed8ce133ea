"""The field rules of the wire format: DNS labels, label keys and values, env names, unit globs.

``schemas.py`` attaches these to its fields; the OpenAPI document (``api/openapi.py``) states
the same patterns in JSON-schema form, so a client built from the spec sends what the server
accepts. Every check uses ``fullmatch``: Python's ``$`` alone would let a trailing newline in.
"""

from __future__ import annotations

import re
from typing import Any

from marshmallow import ValidationError, validate

from controlplane.model import SECRET_MAX_BYTES
from controlplane.secretref import parse_ref, valid_key

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_LABEL_MESSAGE = "must be a DNS-1123 label: lower case letters, digits and '-', at most 63 characters"
LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
GLOB = re.compile(r"^[a-z0-9*?\[\]!-]{1,63}$")
HTTP_PATH = re.compile(r"^/[\x21-\x7e]*$")
PORT = validate.Range(min=1, max=65535)


# JSON-schema (ECMA) forms of the patterns above, for the OpenAPI document; the validators use
# fullmatch, so a trailing newline never slips through Python's ``$``.
DNS_LABEL_SPEC = {"pattern": DNS_LABEL.pattern, "maxLength": 63}
DNS_LABEL_OR_EMPTY_SPEC = {"pattern": "^([a-z0-9]([-a-z0-9]*[a-z0-9])?)?$", "maxLength": 63}


def dns_label(value: str) -> None:
    if len(value) > 63 or not DNS_LABEL.fullmatch(value):
        raise ValidationError(DNS_LABEL_MESSAGE)


def dns_label_or_empty(value: str) -> None:
    if value:
        dns_label(value)


def label_map(value: dict[str, str]) -> None:
    for key, val in value.items():
        if len(key) > 253 or not LABEL_KEY.fullmatch(key):
            raise ValidationError(f"label key {key!r} is not a qualified name")
        if len(val) > 63 or not LABEL_VALUE.fullmatch(val):
            raise ValidationError(f"label value {val!r} for {key!r} is not a valid label value")


def env_names(value: dict[str, str]) -> None:
    for key in value:
        if not ENV_NAME.fullmatch(key):
            raise ValidationError(f"environment variable name {key!r} is not a valid C identifier")


def unit_glob(value: str) -> None:
    if not GLOB.fullmatch(value):
        raise ValidationError(f"{value!r} is not a unit name glob (a-z, 0-9, '-', '*', '?', '[...]')")


class FullMatch(validate.Regexp):
    """``validate.Regexp`` that matches the whole string (Python's ``$`` also matches before a final
    newline, so ``Regexp("^a$")`` would accept ``"a\\n"``)."""

    def __call__(self, value: Any) -> Any:
        if self.regex.fullmatch(value) is None:
            raise ValidationError(self._format_error(value))
        return value


# Docker's User: "uid[:gid]" or "name[:group]" (a name must exist in the image's /etc/passwd)
USER = re.compile(r"^([0-9]{1,10}|[a-z_][-a-z0-9_.]{0,31})(:([0-9]{1,10}|[a-z_][-a-z0-9_.]{0,31}))?$")
CAPABILITY = re.compile(r"^[A-Z][A-Z_]{1,31}$")
PIDS_LIMIT_CEILING = 1 << 22  # the schema's bound; the server's --max-pids-limit is checked at admission


def secret_env(value: dict[str, str]) -> None:
    for var, ref in value.items():
        if not ENV_NAME.fullmatch(var):
            raise ValidationError(f"environment variable name {var!r} is not a valid C identifier")
        try:
            parse_ref(var, ref)
        except ValueError as err:
            raise ValidationError(f"{var}: {err}") from err


def secret_key(value: str) -> None:
    if not valid_key(value):
        raise ValidationError(f"key {value!r} must be 1-253 letters, digits, '-', '_' or '.' (not '.' or '..')")


def secret_size(value: dict[str, str]) -> None:
    # the message names the limit only, never a value
    size = sum(len(str(k).encode()) + len(str(v).encode()) for k, v in value.items())
    if size > SECRET_MAX_BYTES:
        raise ValidationError(f"keys and values together must not exceed {SECRET_MAX_BYTES} bytes")
