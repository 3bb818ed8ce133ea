"""schemathesis hooks for a run against api-spec/openapi.yaml (tests/integration/test_schemathesis.py
and bench/README.md's "Schemathesis" section load this file through SCHEMATHESIS_HOOKS).

The document states every rule it can in JSON Schema; a few it can only state in words (its
``info.description``), because they relate a body to the URL or to the stored object, or items
of a list to each other. A schema-valid request that breaks one of those is rightly refused, so
``positive_data_acceptance`` (ST202) would report the server for keeping its own rules. This hook
drops exactly those ST202 failures, recognised by the rule the server's Status names; schemathesis
counts them as "dropped by filter_failure" in its summary. It also drops an ST201 ("schema-violating
request accepted") whose answer was 413: the request was refused, for its size. Every other failure
fails the run.
"""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

import schemathesis

# (method or None for any, status code, what the server's Status says) of each such rule
RULES_BEYOND_JSON_SCHEMA: list[tuple[str | None, int, str]] = [
    (None, 400, "does not match the URL's name"),  # PUT/PATCH: metadata.name is the URL's {name}
    (None, 422, "is used twice"),  # two ports of a unit on one non-zero hostPort and protocol
    (None, 422, "is matched by this unit's own conflicts"),  # placement.machineOf against conflicts globs
    (None, 422, "is set by both env and secretEnv"),  # a variable's name in two maps of the spec
    ("GET", 400, "invalid continue token"),  # a token the server issued, not any string
    # node-reported addresses: IP literals the spec states by format, minus the ones no node may claim
    (None, 422, "must not be the unspecified address"),
    (None, 422, "must not be a multicast address"),
    (None, 422, "must not be a link-local address"),
    (None, 422, "must not be the broadcast address"),
    # admission bounds set by the server's flags (README "Container defaults"), not by the document
    (None, 422, "--allowed-capabilities"),
    (None, 422, "--max-pids-limit"),
    (None, 422, "--allow-privilege-escalation"),
]
# a merge patch is valid only if the object it produces is: that depends on the stored object
STATE_DEPENDENT = {("PATCH", 400), ("PATCH", 422)}


def _status_text(response: Any) -> str:
    try:
        return json.dumps(json.loads(response.content or b"{}"))
    except ValueError:
        return ""


def is_beyond_json_schema(method: str, status_code: int, status_text: str) -> bool:
    """Whether a refusal of schema-valid data is one of the rules the document states in words."""
    method = method.upper()
    if (method, status_code) in STATE_DEPENDENT:
        return True
    return any((rule_method in (None, method)) and code == status_code and phrase in status_text
               for rule_method, code, phrase in RULES_BEYOND_JSON_SCHEMA)


def _has_negative_part(case: schemathesis.Case) -> bool:
    """Whether schemathesis generated a part of the case as negative data. Its coverage phase can
    label a case positive as a whole (a near-boundary path parameter) while sending a negative
    body (``0`` for an object): not positive data, whatever the label says."""
    components = getattr(getattr(case, "meta", None), "components", None) or {}
    return any(getattr(getattr(info, "mode", None), "is_negative", False) for info in components.values())


def _keep_dry_run_negative(query: dict[str, Any]) -> None:
    """``dryRun=All`` goes; a value of another type becomes a string the server refuses, because the
    client would not send it as one: ``["All"]`` goes out as ``dryRun=All`` (a dry run answering 201),
    ``None``, ``[]`` or an object as other parameters or none (a real write), and schemathesis would
    count either as invalid data accepted."""
    value = query["dryRun"]
    if value == "All":
        query.pop("dryRun")
    elif not isinstance(value, str):
        query["dryRun"] = f"<{type(value).__name__}>"


def _dry_run_sent_valid(response: Any) -> bool:
    """Whether the request as sent had a valid ``dryRun`` (absent, or ``All`` once) although the case
    generated an invalid one: the client's serialisation of a value of another type (an object's
    keys become parameters of their own) lost what was invalid, so the server judged valid data."""
    url = getattr(getattr(response, "request", None), "url", "") or ""
    sent = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query, keep_blank_values=True).get("dryRun", [])
    return sent in ([], ["All"])


@schemathesis.hook
def before_call(context: schemathesis.HookContext, case: schemathesis.Case, kwargs: dict[str, Any]) -> None:
    """A positive PUT names, in its body, the object of its URL, so it tests more than that rule
    (here, not in map_case: the coverage phase varies the path after mapping). ``dryRun=All`` is
    taken out of every write: a dry run answers as if done and stores nothing, which the stateful
    checks (a created object can be read, a deleted one cannot) would take for a broken server."""
    if isinstance(case.query, dict) and "dryRun" in case.query:
        _keep_dry_run_negative(case.query)
    body, name = case.body, (case.path_parameters or {}).get("name")
    mode = getattr(getattr(getattr(case, "meta", None), "generation", None), "mode", None)
    if (case.method.upper() == "PUT" and isinstance(body, dict) and isinstance(body.get("metadata"), dict)
            and isinstance(name, str) and getattr(mode, "is_positive", False) and not _has_negative_part(case)):
        body["metadata"]["name"] = name


@schemathesis.hook
def filter_failure(context: schemathesis.HookContext, failure: Any, case: schemathesis.Case,
                   response: schemathesis.Response) -> bool:
    code = getattr(failure, "code", "")
    if code == "ST201":
        # schema-violating data refused with 413 is refused: a negative body (an exec command of
        # long arguments) can outgrow the 256 KiB every request is held to before it is parsed
        if response.status_code == 413:
            return False
        message = str(getattr(failure, "message", ""))
        return not ("parameter `dryRun` in query" in message and _dry_run_sent_valid(response))
    if code != "ST202":
        return True
    if _has_negative_part(case):
        return False
    return not is_beyond_json_schema(case.method, response.status_code, _status_text(response))
