"""The OpenAPI paths and schemas of ``/api/v1/tokens`` (api/tokens.py), apart from openapi.py because
they differ from the generic resource's: no PUT or PATCH, a create whose name is optional, a value
that only the create and exchange responses carry, and the exchange itself.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from apispec import APISpec

from controlplane.tokens import EXCHANGE_PATH

Responses = Callable[..., dict[str, Any]]
Content = Callable[[str], dict[str, Any]]
Path = Callable[..., None]

TOKENS_NOTE = (
    "Admins only (every other role: 403). The value `<name>.<secret>` is in the response of the create "
    "(and of the exchange) only; no read, list or watch shows it or its hash. A create or a revoke "
    "(DELETE) takes effect on every API server within 1 s. A token with `spec.join` is good only for "
    f"`POST {EXCHANGE_PATH}`, once."
)
EXCHANGE_NOTE = (
    "With a join token as the bearer token: consumes it and answers a new node token for the same "
    "machine, without expiry. Any other token: 403 whose message says `not a join token`; a join token "
    "already exchanged: 401."
)


def _name_param(name_param: dict[str, Any]) -> dict[str, Any]:
    """A token's name: any DNS label but ``exchange`` (a path of its own)."""
    param = copy.deepcopy(name_param)
    param["schema"]["not"] = {"const": "exchange"}
    return param


def token_paths(spec: APISpec, *, path: Path, errors: Responses, content: Content, name_param: dict[str, Any],
                list_params: list[dict[str, Any]], watch_note: str) -> None:
    base = "/api/v1/tokens"
    created = {"201": {"description": "created; `value` is shown this once", "content": content("TokenWithValue")}}
    path(spec, path=base, operations={
        "get": {"operationId": "listToken", "summary": "List (or watch) tokens, without values",
                "description": f"{watch_note} {TOKENS_NOTE}", "parameters": list_params,
                "responses": {"200": {"description": "the list", "content": content("TokenList")},
                              **errors("400", "401", "403", "503")}},
        "post": {"operationId": "createToken", "summary": "Create a token (the value is in this response only)",
                 "description": TOKENS_NOTE, "requestBody": {"required": True, "content": content("TokenCreate")},
                 "responses": {**created, **errors("400", "401", "403", "409", "413", "415", "422", "503")}},
    })
    path(spec, path=EXCHANGE_PATH, operations={
        "post": {"operationId": "exchangeToken", "summary": "Trade a join token for a node token, once",
                 "description": EXCHANGE_NOTE, "responses": {**created, **errors("401", "403", "503")}},
    })
    path(spec, path=f"{base}/{{name}}", operations={
        "parameters": [_name_param(name_param)],
        "get": {"operationId": "readToken", "summary": "Read a token, without its value",
                "responses": {"200": {"description": "the token", "content": content("Token")},
                              **errors("401", "403", "404", "405", "503")}},
        "delete": {"operationId": "deleteToken", "summary": "Revoke a token (on every API server within 1 s)",
                   "responses": {"200": {"description": "the revoked token", "content": content("Token")},
                                 **errors("401", "403", "404", "405", "503")}},
    })


def token_schemas(schemas: dict[str, Any]) -> None:
    """The create body (name optional, not ``exchange``), the answer with its value, and the rules
    between role, machine and join that TokenSpecSchema checks."""

    def obj(**keywords: Any) -> dict[str, Any]:
        return {"type": "object", **keywords}

    schemas["TokenSpec"]["allOf"] = [
        obj(anyOf=[obj(properties={"role": {"const": "node"}, "machine": {"minLength": 1}}, required=["machine"]),
                   obj(properties={"role": {"enum": ["viewer", "admin"]}, "machine": {"maxLength": 0}})]),
        obj(anyOf=[obj(properties={"join": {"const": False}}), obj(properties={"role": {"const": "node"}})]),
    ]
    meta = copy.deepcopy(schemas["ObjectMeta"])
    meta.pop("required", None)
    meta["properties"]["name"]["not"] = {"const": "exchange"}
    meta["description"] = "the name is the token's id; without one the server makes tok-<8 hex>"
    schemas["TokenCreateMeta"] = meta
    create = copy.deepcopy(schemas["Token"])
    create["properties"]["metadata"] = {"$ref": "#/components/schemas/TokenCreateMeta"}
    create["required"] = ["spec"]
    schemas["TokenCreate"] = create
    answer = copy.deepcopy(schemas["Token"])
    answer["properties"]["value"] = {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?\\.[A-Za-z0-9_-]{43}$",
                                     "description": "<name>.<secret>: the bearer token, shown only here"}
    answer["required"] = [*answer.get("required", []), "value"]
    schemas["TokenWithValue"] = answer
