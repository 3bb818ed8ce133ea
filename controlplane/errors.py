"""Our own error hierarchy and the one table that maps it to HTTP Status objects.

Every error the API returns is built from one of these classes, so handlers never
hand-craft status codes and third-party errors are chained with ``raise ... from``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Cause:
    """One bad field of an Invalid error (Kubernetes' StatusCause)."""

    field: str
    message: str
    reason: str = "FieldValueInvalid"

    def to_dict(self) -> dict[str, str]:
        return {"field": self.field, "reason": self.reason, "message": self.message}


class CPError(Exception):
    """Base of every error that becomes a Status object."""

    code = 500
    reason = "InternalError"

    def __init__(
        self,
        message: str,
        *,
        kind: str | None = None,
        name: str | None = None,
        causes: list[Cause] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.name = name
        self.causes = list(causes or [])

    def to_status(self) -> dict[str, Any]:
        status: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "code": self.code,
            "reason": self.reason,
            "message": self.message,
        }
        details: dict[str, Any] = {}
        if self.kind:
            details["kind"] = self.kind
        if self.name:
            details["name"] = self.name
        if self.causes:
            details["causes"] = [c.to_dict() for c in self.causes]
        if details:
            status["details"] = details
        return status


class BadRequest(CPError):
    code, reason = 400, "BadRequest"


class Unauthorized(CPError):
    code, reason = 401, "Unauthorized"


class Forbidden(CPError):
    code, reason = 403, "Forbidden"


class NotFound(CPError):
    code, reason = 404, "NotFound"


class MethodNotAllowed(CPError):
    code, reason = 405, "MethodNotAllowed"


class AlreadyExists(CPError):
    code, reason = 409, "AlreadyExists"


class KeysExist(AlreadyExists):
    """``Store.create_many`` refused because keys exist: ``keys`` are those it found existing
    (empty when, looking after the refusal, it found none any more)."""

    def __init__(self, message: str, *, keys: tuple[str, ...]) -> None:
        super().__init__(message)
        self.keys = keys


class Conflict(CPError):
    code, reason = 409, "Conflict"


class Gone(CPError):
    code, reason = 410, "Gone"


class RequestEntityTooLarge(CPError):
    code, reason = 413, "RequestEntityTooLarge"


class UnsupportedMediaType(CPError):
    code, reason = 415, "UnsupportedMediaType"


class Invalid(CPError):
    code, reason = 422, "Invalid"


class TooManyRequests(CPError):
    code, reason = 429, "TooManyRequests"


class InternalError(CPError):
    code, reason = 500, "InternalError"


class BadGateway(CPError):
    code, reason = 502, "BadGateway"


class PartialFailure(InternalError):
    """Some objects of a bulk write failed: ``failures`` maps each object's name to its error."""

    def __init__(self, message: str, failures: dict[str, CPError]) -> None:
        super().__init__(message)
        self.failures = failures


class ServiceUnavailable(CPError):
    code, reason = 503, "ServiceUnavailable"


class StoreUnavailable(ServiceUnavailable):
    """The store (etcd) cannot be reached; the API answers 503."""


class InsufficientStorage(CPError):
    """etcd's space quota is exhausted (its NOSPACE alarm): writes are refused until an operator
    compacts, defragments and disarms it; reads still work. 507, never retried elsewhere."""

    code, reason = 507, "InsufficientStorage"


BY_REASON: dict[str, type[CPError]] = {
    cls.reason: cls
    for cls in (
        BadRequest, Unauthorized, Forbidden, NotFound, MethodNotAllowed, AlreadyExists, Conflict, Gone,
        RequestEntityTooLarge, UnsupportedMediaType, Invalid, TooManyRequests, InternalError, BadGateway,
        ServiceUnavailable, InsufficientStorage,
    )
}


def from_status(status: dict[str, Any], *, http_code: int | None = None) -> CPError:
    """Rebuild an error from a Status object received over HTTP (used by the client)."""
    reason = str(status.get("reason") or "")
    cls = BY_REASON.get(reason)
    if cls is None:
        code = int(status.get("code") or http_code or 500)
        cls = next((c for c in BY_REASON.values() if c.code == code), InternalError)
    details = status.get("details") or {}
    causes = [
        Cause(field=c.get("field", ""), message=c.get("message", ""), reason=c.get("reason", ""))
        for c in details.get("causes") or []
    ]
    return cls(
        str(status.get("message") or reason or "error"),
        kind=details.get("kind"),
        name=details.get("name"),
        causes=causes,
    )

