"""Every error leaves the gateway as RFC 9457 `application/problem+json` with a stable `code`
and, for validation, `errors[]` naming each field; the web pages under /app get the same
error in words, as an HTML page (or, for an htmx request, a fragment). This is the one place
that mapping lives."""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
import redis.exceptions
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.pages.common import error_page
from hub.errors import HubError

log = logging.getLogger(__name__)

#: What PostgreSQL or Redis raise when they cannot be reached or are going away (stopped,
#: restarting, out of connections, a pool's wait timed out): the request may be retried.
UNAVAILABLE = (OSError, asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError,
               asyncpg.AdminShutdownError, asyncpg.CrashShutdownError,
               asyncpg.TooManyConnectionsError, asyncpg.ConnectionDoesNotExistError,
               redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
RETRY_AFTER_S = 5
PROBLEM = "application/problem+json"

_HTTP_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 406: "not_acceptable", 409: "conflict",
    413: "payload_too_large", 415: "unsupported_media_type", 422: "validation_failed",
    429: "rate_limited",
}

#: The problem document as the OpenAPI schema publishes it (components "Problem" and
#: "FieldError"): what `problem` writes. Extension members may be added later, so clients
#: must ignore members they do not know.
PROBLEM_SCHEMAS: dict[str, dict[str, Any]] = {
    "Problem": {
        "title": "Problem",
        "description": "An RFC 9457 problem document (`application/problem+json`). `code` is "
                       "stable and is what clients branch on; `errors[]` names each field "
                       "that was refused (always present on 422).",
        "type": "object",
        "required": ["type", "title", "status", "detail", "code"],
        "properties": {
            "type": {"type": "string", "description": "`urn:switchboard:problem:<code>`",
                     "examples": ["urn:switchboard:problem:validation_failed"]},
            "title": {"type": "string", "examples": ["Validation failed"]},
            "status": {"type": "integer", "minimum": 400, "maximum": 599,
                       "examples": [422]},
            "detail": {"type": "string", "description": "what went wrong, in words",
                       "examples": ["to: must be an E.164 number"]},
            "code": {"type": "string", "examples": ["validation_failed"]},
            "instance": {"type": "string", "description": "the request's path",
                         "examples": ["/v1/sub-accounts/4f0c…/messages"]},
            "errors": {"type": "array", "items": {"$ref": "#/components/schemas/FieldError"}},
        },
    },
    "FieldError": {
        "title": "FieldError",
        "type": "object",
        "required": ["field", "message", "code"],
        "properties": {
            "field": {"type": "string", "description": "the body field (dotted path), query "
                      "or path parameter, or header, as the client named it",
                      "examples": ["to"]},
            "message": {"type": "string", "examples": ["must be an E.164 number"]},
            "code": {"type": "string", "examples": ["invalid_phone"]},
        },
    },
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
    if isinstance(exc, UNAVAILABLE):
        log.warning("a backing service is unavailable: %s", type(exc).__name__,
                    extra={"path": path})
        return problem(503, "unavailable", "Service unavailable",
                       "the hub cannot reach its database or Redis right now; nothing was "
                       f"done. Retry in {RETRY_AFTER_S} s (the same Idempotency-Key is "
                       "safe to reuse)", path, headers={"Retry-After": str(RETRY_AFTER_S)})
    log.error("unhandled error", exc_info=exc, extra={"path": path})
    return problem(500, "internal", "Internal error",
                   "something went wrong on our side; retry, and if it persists report "
                   "the time and path", path)


def _wants_page(request: Request) -> bool:
    """A page under /app answers in HTML unless the caller asks for JSON only; the API
    always answers with the problem document."""
    path = request.url.path
    if path != "/app" and not path.startswith("/app/"):
        return False
    accept = request.headers.get("accept", "")
    return "html" in accept or "json" not in accept


#: The pages' path and query parameters, as the people who follow the links call them.
_PAGE_PARAMS = {"sa": "sub-account id", "c": "conversation id", "conversation_id":
                "conversation id", "campaign_id": "campaign id", "tab": "inbox tab"}
#: What a page says for the errors whose own words are for API clients.
_PAGE_WORDS: dict[int | str, tuple[str, str]] = {
    404: ("Page not found", "There is no page at this address. Check the link you followed."),
    405: ("Not allowed here", "This page cannot be used that way. Go back and try again."),
    "csrf_failed": ("The form expired", "Reload the page and try again."),
}


def _page_field(e: dict[str, Any]) -> str:
    name = str(e.get("loc", ("",))[-1])
    what = _PAGE_PARAMS.get(name, name.replace("_", " "))
    if e.get("type") == "missing":
        return f"The {what} is missing."
    given = str(e.get("input", ""))
    return f"“{given[:80]}{'…' if len(given) > 80 else ''}” is not a valid {what}."


def _page(request: Request, exc: Exception, problem_doc: JSONResponse) -> Response:
    """The error as the pages show it: the problem's title and detail, in words."""
    status = problem_doc.status_code
    headers = {k: v for k, v in problem_doc.headers.items()
               if k.lower() not in ("content-type", "content-length")}
    if isinstance(exc, RequestValidationError):
        return error_page(request, status, "This address is not valid",
                          " ".join(_page_field(e) for e in exc.errors()) +
                          " Check the link you followed.", headers)
    if isinstance(exc, HubError):
        title, detail = _PAGE_WORDS.get(exc.code, (exc.title, exc.detail))
        return error_page(request, status, title, detail, headers)
    if isinstance(exc, StarletteHTTPException) and exc.status_code in _PAGE_WORDS:
        return error_page(request, status, *_PAGE_WORDS[exc.status_code], headers)
    if isinstance(exc, StarletteHTTPException):
        return error_page(request, status, "Something went wrong", str(exc.detail), headers)
    if status == 503:
        return error_page(request, status, "Back in a moment",
                          "The hub cannot reach its database right now. Try again in a few "
                          "seconds; nothing you sent was lost or half done.", headers)
    return error_page(request, status, "Something went wrong",
                      "Something went wrong on our side. Try again in a moment; if it keeps "
                      "happening, tell your admin the time and this page's address.", headers)


def answer(request: Request, exc: Exception, problem_doc: JSONResponse) -> Response:
    """The problem document, or for a page the same error in words."""
    return _page(request, exc, problem_doc) if _wants_page(request) else problem_doc


def install(app: FastAPI) -> None:
    @app.exception_handler(HubError)
    async def hub_error(request: Request, exc: HubError) -> Response:
        return answer(request, exc, problem_for(exc, request.url.path))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        errors = validation_errors(exc)
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return answer(request, exc, problem(422, "validation_failed", "Validation failed",
                                            detail, request.url.path, errors))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return answer(request, exc, problem_for(exc, request.url.path))

    async def unavailable(request: Request, exc: Exception) -> Response:
        return answer(request, exc, problem_for(exc, request.url.path))

    # Handled where HubError is (not by the server-error handler below, which answers and
    # then lets the server log the exception and drop the connection): an outage of
    # PostgreSQL or Redis is expected, and the client's keep-alive connection survives it.
    for kind in UNAVAILABLE:
        app.add_exception_handler(kind, unavailable)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        return answer(request, exc, problem_for(exc, request.url.path))
