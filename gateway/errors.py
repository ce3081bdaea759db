"""Every error leaves the gateway as RFC 9457 `application/problem+json` with a stable `code`
and, for validation, `errors[]` naming each field. This is the one place that mapping lives."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from hub.errors import HubError

log = logging.getLogger(__name__)
PROBLEM = "application/problem+json"

_HTTP_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 406: "not_acceptable", 409: "conflict",
    413: "payload_too_large", 415: "unsupported_media_type", 422: "validation_failed",
    429: "rate_limited",
}


def problem(status: int, code: str, title: str, detail: str, instance: str | None = None,
            errors: list[dict[str, str]] | None = None,
            headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {
        "type": f"urn:switchboard:problem:{code}",
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
    }
    if instance:
        body["instance"] = instance
    if errors is not None:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def _field_name(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header"):
        source, parts = parts[0], parts[1:]
        if source == "header" and parts:
            return parts[0]
    return ".".join(parts) or "body"


_MESSAGES = {
    "extra_forbidden": "unknown field; remove it or check its spelling",
    "missing": "required",
}


def _malformed(e: dict[str, Any], doc: Any) -> dict[str, str]:
    """A body that does not parse: where, as the JSON decoder says it (FastAPI's error
    carries the character position in its `loc`, and the text it read as the body)."""
    pos = e["loc"][-1] if isinstance(e["loc"][-1], int) else 0
    where = f"character {pos}"
    if isinstance(doc, str):
        line, column = doc.count("\n", 0, pos) + 1, pos - doc.rfind("\n", 0, pos)
        where = f"line {line}, column {column} ({where})"
    reason = (e.get("ctx") or {}).get("error", "")
    return {"field": "body", "code": "json_invalid",
            "message": f"the body is malformed JSON: {reason or 'cannot parse'} at {where}"}


def validation_errors(exc: RequestValidationError) -> list[dict[str, str]]:
    out = []
    for e in exc.errors():
        kind = e.get("type", "invalid")
        if kind == "json_invalid":
            out.append(_malformed(e, exc.body))
            continue
        out.append({
            "field": _field_name(tuple(e.get("loc", ()))),
            "message": _MESSAGES.get(kind, e.get("msg", "invalid")),
            "code": kind,
        })
    return out


def problem_for(exc: Exception, path: str) -> JSONResponse:
    """The problem document for an exception raised while serving `path`: the mapping the
    app's exception handlers use, and the provider webhooks' fast path (which runs before
    FastAPI's routing)."""
    if isinstance(exc, HubError):
        errors = [{"field": e.field, "message": e.message, "code": e.code} for e in exc.errors]
        return problem(exc.status, exc.code, exc.title, exc.detail, path,
                       errors if errors or exc.status == 422 else None)
    if isinstance(exc, StarletteHTTPException):
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        title = code.replace("_", " ").capitalize()
        errors = None
        if exc.status_code == 413:
            errors = [{"field": "body", "message": str(exc.detail), "code": "too_large"}]
        return problem(exc.status_code, code, title, str(exc.detail), path,
                       errors, headers=getattr(exc, "headers", None))
    log.error("unhandled error", exc_info=exc, extra={"path": path})
    return problem(500, "internal", "Internal error",
                   "something went wrong on our side; retry, and if it persists report "
                   "the time and path", path)


def install(app: FastAPI) -> None:
    @app.exception_handler(HubError)
    async def hub_error(request: Request, exc: HubError) -> JSONResponse:
        return problem_for(exc, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = validation_errors(exc)
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return problem(422, "validation_failed", "Validation failed", detail,
                       request.url.path, errors)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem_for(exc, request.url.path)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        return problem_for(exc, request.url.path)
