"""Twilio failures mapped onto the hub's closed SendError catalogue: one table-driven
function for Twilio error codes (REST answers and status-callback ErrorCodes alike), one for
an error answer and one for what the transport (or the SDK) raises.

The line that matters most is IN_DOUBT vs CONNECTION_FAILED: a refused connection, a DNS
failure or a connect timeout provably never reached Twilio, so a retry is safe; anything
that fails after the request was written (read timeout, reset, a 500 or a garbled 201) may
have created the message and must be reconciled, never resent blindly.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime

import aiohttp
from twilio.base.exceptions import TwilioRestException, TwilioServiceException

from channels.base import ErrorKind, SendError
from channels.http_post import InvalidEndpoint, NotSent

#: Codes from payloads/twilio_error_codes_subset.json, grouped by what the hub must do.
_KIND_OF_CODE: dict[int, ErrorKind] = {
    # The account, the sender or the callback URL is set up wrong: fix config, don't retry.
    **dict.fromkeys((20003, 20005, 20008, 20404, 21210, 21212, 21213, 21408, 21603, 21606,
                     21608, 21609, 21659, 21701, 21703, 21704, 30002, 30018, 30032, 30034,
                     30124, 30127), ErrorKind.CONFIG_INVALID),
    # This message or this recipient is malformed or unreachable by SMS.
    **dict.fromkeys((12100, 21201, 21205, 21211, 21217, 21602, 21604, 21612, 21614, 21617,
                     21619, 21620, 21623, 30005, 30006, 30011, 30014, 30019),
                    ErrorKind.MESSAGE_INVALID),
    21610: ErrorKind.OPTED_OUT,
    # Rate and queue limits: re-queue with back-off, never a failure.
    **dict.fromkeys((14107, 20429, 21611, 30001, 30022, 30023, 30027, 63018),
                    ErrorKind.THROTTLED),
}

#: When the body carries no code we know, the HTTP status decides.
_KIND_OF_STATUS: dict[int, ErrorKind] = {
    401: ErrorKind.CONFIG_INVALID, 403: ErrorKind.CONFIG_INVALID,
    429: ErrorKind.THROTTLED, 503: ErrorKind.THROTTLED,  # not processed: retry later
    500: ErrorKind.IN_DOUBT, 502: ErrorKind.IN_DOUBT, 504: ErrorKind.IN_DOUBT,  # maybe was
}


def classify_twilio_error(http_status: int | None, code: int | str | None, message: str,
                          *, retry_after: float | None = None) -> SendError:
    """The SendError for a Twilio error code (`http_status` None for a callback ErrorCode)."""
    number = _as_int(code)
    kind = _KIND_OF_CODE.get(number) if number is not None else None
    if kind is None:
        kind = _KIND_OF_STATUS.get(http_status or 0, ErrorKind.REJECTED)
    provider_code = str(number) if number is not None else (
        str(http_status) if http_status else None)
    text = f"twilio {provider_code}: {message}" if provider_code else f"twilio: {message}"
    return SendError(kind=kind, message=text, provider_code=provider_code,
                     retry_after=retry_after if kind is ErrorKind.THROTTLED else None)


def error_from_response(status: int, body: bytes,
                        headers: Mapping[str, str] | None = None) -> SendError:
    """What a non-2xx answer to a direct request means, read as the SDK reads it
    (`Version.exception`): an RFC 9457 problem, Twilio's {code, message}, or only the status."""
    retry_after = parse_retry_after(headers)
    try:
        payload = json.loads(body)
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        return classify_twilio_error(status, status, f"HTTP {status}", retry_after=retry_after)
    if all(k in payload for k in ("type", "title", "status", "code")):
        return classify_twilio_error(payload["status"], payload["code"],
                                     str(payload.get("detail") or payload["title"]),
                                     retry_after=retry_after)
    return classify_twilio_error(status, payload.get("code", status),
                                 str(payload.get("message") or f"HTTP {status}"),
                                 retry_after=retry_after)


def error_from_exception(exc: BaseException,
                         headers: Mapping[str, str] | None = None) -> SendError:
    """What a failed SDK call means; `headers` are the response's, when there was one."""
    if isinstance(exc, TwilioRestException):
        return classify_twilio_error(exc.status, exc.code, _rest_message(exc),
                                     retry_after=parse_retry_after(headers))
    if isinstance(exc, TwilioServiceException):
        return classify_twilio_error(exc.status, exc.code, exc.detail or exc.title,
                                     retry_after=parse_retry_after(headers))
    if isinstance(exc, aiohttp.InvalidURL | InvalidEndpoint):
        return SendError(ErrorKind.CONFIG_INVALID, f"invalid provider URL: {exc}")
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError | NotSent):
        return SendError(ErrorKind.CONNECTION_FAILED, f"could not connect to Twilio: {exc}")
    if isinstance(exc, aiohttp.SocketTimeoutError | TimeoutError):
        return SendError(ErrorKind.IN_DOUBT, "no answer from Twilio before the read timeout")
    if isinstance(exc, aiohttp.ClientError | OSError):
        return SendError(ErrorKind.IN_DOUBT, f"connection lost after the request was sent: "
                                             f"{type(exc).__name__}")
    if isinstance(exc, json.JSONDecodeError | KeyError):
        return SendError(ErrorKind.IN_DOUBT, "Twilio accepted the request but the answer "
                                             "could not be read")
    return SendError(ErrorKind.IN_DOUBT, f"unexpected {type(exc).__name__} during the send")


def parse_retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date)."""
    value = (headers or {}).get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _as_int(code: int | str | None) -> int | None:
    if code is None or code == "":
        return None
    try:
        return int(code)
    except (TypeError, ValueError):
        return None


def _rest_message(exc: TwilioRestException) -> str:
    # The SDK prefixes "Unable to create record: "; keep Twilio's own words.
    return str(exc.msg).split(": ", 1)[-1] if exc.msg else f"HTTP {exc.status}"
