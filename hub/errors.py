"""Domain errors with stable codes; the gateway maps them to RFC 9457 problems in one place.

    HubError                 500  internal
     ├── ValidationFailed    422  validation_failed (errors[] names each field)
     ├── Unauthorized        401  unauthorized
     ├── Forbidden           403  forbidden
     ├── NotFound            404  not_found (also for another sub-account's ids)
     ├── Conflict            409  conflict
     └── PayloadTooLarge     413  payload_too_large
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FieldError:
    field: str
    message: str
    code: str


class HubError(Exception):
    code: str = "internal"
    status: int = 500
    title: str = "Internal error"

    def __init__(
        self,
        detail: str = "",
        *,
        code: str | None = None,
        errors: list[FieldError] | None = None,
    ) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        if code is not None:
            self.code = code
        self.errors: list[FieldError] = list(errors or [])


class ValidationFailed(HubError):
    code = "validation_failed"
    status = 422
    title = "Validation failed"

    @classmethod
    def field(cls, field: str, message: str, code: str) -> ValidationFailed:
        return cls(f"{field}: {message}", errors=[FieldError(field, message, code)])


class Unauthorized(HubError):
    code = "unauthorized"
    status = 401
    title = "Unauthorized"


class Forbidden(HubError):
    code = "forbidden"
    status = 403
    title = "Forbidden"


class NotFound(HubError):
    code = "not_found"
    status = 404
    title = "Not found"


class Conflict(HubError):
    code = "conflict"
    status = 409
    title = "Conflict"


class PayloadTooLarge(HubError):
    code = "payload_too_large"
    status = 413
    title = "Payload too large"
