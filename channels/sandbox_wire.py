"""Twilio's wire formats as the sandbox carrier writes them: error bodies, RFC 2822 dates,
message and call resources, status-callback and inbound-webhook form parameters."""

from __future__ import annotations

import hashlib
import math
import mimetypes
import re
import time
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from channels.sandbox_core import Sent
from hub.segments import count_segments

API_VERSION = "2010-04-01"
ACCOUNT_SID = re.compile(r"AC[0-9a-fA-F]{32}")
SERVICE_SID = re.compile(r"MG[0-9a-fA-F]{32}")
E164 = re.compile(r"\+[1-9]\d{6,14}")
SHORT_CODE = re.compile(r"\d{3,8}")
ALPHANUMERIC = re.compile(r"(?=.*[A-Za-z])[A-Za-z0-9 ]{1,11}")

#: HTTP status Twilio answers with for an error code (400 for every other code).
_STATUS_OF_CODE = {20003: 401, 20404: 404, 20429: 429, 20500: 500, 20503: 503}

#: Error texts (the codes the carrier produces; twilio_error_codes_subset.json wording).
ERROR_TEXT: dict[int, str] = {
    1001: "Failed with reason",
    20003: "Authenticate",
    20404: "The requested resource was not found",
    20429: "Too Many Requests",
    20500: "Internal Server Error",
    20503: "Service Unavailable",
    21201: "No 'To' number is specified",
    21205: "Url parameter is required.",
    21211: "Invalid 'To' Phone Number",
    21212: "Invalid 'From' Phone Number",
    21213: "Caller phone number is required",
    21408: "Permission to send an SMS has not been enabled for the region indicated by the "
           "'To' number",
    21602: "Message body is required.",
    21603: "A 'From' phone number is required.",
    21604: "A 'To' phone number is required.",
    21606: "The 'From' phone number provided is not a valid message-capable Twilio phone "
           "number for this destination.",
    21609: "Invalid StatusCallback url",
    21610: "Attempt to send to unsubscribed recipient",
    21611: "This 'From' number has exceeded the maximum number of queued messages",
    21612: "The 'To' phone number is not currently reachable via SMS",
    21614: "'To' number is not a valid mobile number",
    21617: "The concatenated message body exceeds the 1600 character limit.",
    21620: "Invalid media URL(s)",
    21623: "Number of media files exceeds allowed limit",
    21701: "The Messaging Service Sid is invalid.",
    12100: "Document parse failure",
    30003: "Unreachable destination handset",
    30005: "Unknown destination handset",
    30006: "Landline or unreachable carrier",
    30007: "Message filtered",
    30008: "Unknown error",
    30022: "US A2P 10DLC - Rate Limits Exceeded",
}

#: Twilio's magic test numbers (test credentials) and the errors they provoke.
MAGIC_TO = {"+15005550001": 21211, "+15005550002": 21612, "+15005550003": 21408,
            "+15005550004": 21610, "+15005550009": 21614}
MAGIC_FROM = {"+15005550001": 21212, "+15005550007": 21606, "+15005550008": 21611}

_COUNTRY = (("+1", "US"), ("+44", "GB"), ("+61", "AU"), ("+33", "FR"), ("+49", "DE"),
            ("+91", "IN"), ("+55", "BR"), ("+52", "MX"), ("+34", "ES"), ("+64", "NZ"))
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def twilio_error(code: int, message: str | None = None, *, status: int | None = None,
                 headers: dict[str, str] | None = None) -> web.Response:
    status = status or _STATUS_OF_CODE.get(code, 400)
    body = {"code": code, "message": message or ERROR_TEXT.get(code, f"Error {code}"),
            "more_info": f"https://www.twilio.com/docs/errors/{code}", "status": status}
    return web.json_response(body, status=status, headers=headers)


def rfc2822(ts: float | None) -> str | None:
    """Twilio's date format, independent of the process locale."""
    if ts is None:
        return None
    t = time.gmtime(ts)
    return (f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year} "
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000")


def is_phone_address(value: str) -> bool:
    return bool(E164.fullmatch(value.removeprefix("whatsapp:")))


def is_sender(value: str) -> bool:
    return (is_phone_address(value) or bool(SHORT_CODE.fullmatch(value))
            or bool(ALPHANUMERIC.fullmatch(value)))


def country_of(number: str) -> str:
    number = number.removeprefix("whatsapp:")
    return next((c for prefix, c in _COUNTRY if number.startswith(prefix)), "")


def pool_number(service_sid: str) -> str:
    """The number a Messaging Service picks from its (imaginary) sender pool."""
    return f"+1555{int(service_sid[2:10], 16) % 10_000_000:07d}"


def _sid_from(prefix: str, text: str) -> str:
    return prefix + hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def segments(body: str) -> int:
    return count_segments(body).segments if body else 1


def message_resource(sent: Sent, now: float | None) -> dict[str, Any]:
    """The Message resource at `now`; None renders it as created (Twilio's 201 answer)."""
    initial = "accepted" if sent.messaging_service_sid else "queued"
    now = sent.time - 1.0 if now is None else now
    status, code = sent.status_at(now, initial)
    uri = f"/{API_VERSION}/Accounts/{sent.account_sid}/Messages/{sent.provider_sid}"
    left = sent.sent_at is not None and sent.sent_at <= now and status not in (
        "accepted", "queued", "failed")
    n_segments = int(sent.extra.get("num_segments", 1))
    updated = max([sent.time, *(at for at, _, _ in sent.timeline if at <= now)])
    sender = sent.from_
    if sender is None and left and sent.messaging_service_sid:
        sender = pool_number(sent.messaging_service_sid)
    return {
        "account_sid": sent.account_sid, "api_version": API_VERSION, "body": sent.body,
        "date_created": rfc2822(sent.time), "date_sent": rfc2822(sent.sent_at) if left else None,
        "date_updated": rfc2822(updated), "direction": "outbound-api", "error_code": code,
        "error_message": ERROR_TEXT.get(code) if code else None, "from": sender,
        "messaging_service_sid": sent.messaging_service_sid,
        "num_media": str(len(sent.media_urls)),
        "num_segments": "0" if status == "accepted" else str(n_segments),
        "price": f"-{0.0079 * n_segments:.5f}" if left else None, "price_unit": "USD",
        "sid": sent.provider_sid, "status": status,
        "subresource_uris": {"media": f"{uri}/Media.json", "feedback": f"{uri}/Feedback.json"},
        "to": sent.to, "uri": f"{uri}.json",
    }


def inbound_resource(params: dict[str, str], ts: float) -> dict[str, Any]:
    sid, account = params["MessageSid"], params["AccountSid"]
    uri = f"/{API_VERSION}/Accounts/{account}/Messages/{sid}"
    return {
        "account_sid": account, "api_version": API_VERSION, "body": params["Body"],
        "date_created": rfc2822(ts), "date_sent": rfc2822(ts), "date_updated": rfc2822(ts),
        "direction": "inbound", "error_code": None, "error_message": None,
        "from": params["From"], "messaging_service_sid": None, "num_media": params["NumMedia"],
        "num_segments": params["NumSegments"], "price": None, "price_unit": "USD", "sid": sid,
        "status": "received", "subresource_uris": {"media": f"{uri}/Media.json"},
        "to": params["To"], "uri": f"{uri}.json",
    }


_CALL_RESOURCE_STATUS = {"initiated": "queued"}


def _formatted(number: str) -> str:
    if len(number) == 12 and number.startswith("+1"):
        return f"({number[2:5]}) {number[5:8]}-{number[8:]}"
    return number


def call_resource(sent: Sent, now: float | None) -> dict[str, Any]:
    """The Call resource at `now`; None renders it as created (Twilio's 201 answer)."""
    now = sent.time - 1.0 if now is None else now
    step, _ = sent.status_at(now, "queued")
    status = _CALL_RESOURCE_STATUS.get(step, step)
    times = {s: at for at, s, _ in sent.timeline if at <= now}
    start = times.get("in-progress")
    end = times.get(status) if status in ("completed", "busy", "no-answer", "failed") else None
    duration = str(math.ceil(end - start)) if start and end else ("0" if end else None)
    uri = f"/{API_VERSION}/Accounts/{sent.account_sid}/Calls/{sent.provider_sid}"
    sender = sent.from_ or ""
    return {
        "account_sid": sent.account_sid,
        "answered_by": sent.extra.get("answered_by") if start else None,
        "api_version": API_VERSION, "caller_name": None, "date_created": rfc2822(sent.time),
        "date_updated": rfc2822(max([sent.time, *times.values()])),
        "direction": "outbound-api", "duration": duration, "end_time": rfc2822(end),
        "forwarded_from": None, "from": sender, "from_formatted": _formatted(sender),
        "group_sid": None, "parent_call_sid": None,
        "phone_number_sid": _sid_from("PN", sender), "price": None, "price_unit": "USD",
        "queue_time": "0", "sid": sent.provider_sid, "start_time": rfc2822(start),
        "status": status,
        "subresource_uris": {"notifications": f"{uri}/Notifications.json",
                             "recordings": f"{uri}/Recordings.json",
                             "events": f"{uri}/Events.json"},
        "to": sent.to, "to_formatted": _formatted(sent.to), "trunk_sid": None,
        "uri": f"{uri}.json",
    }


def message_callback(sent: Sent, at: float, status: str, code: int | None) -> dict[str, str]:
    """A messaging status callback as Twilio posts it."""
    service = sent.messaging_service_sid
    params = {"SmsSid": sent.provider_sid, "SmsStatus": status, "MessageStatus": status,
              "To": sent.to}
    if service:
        params["MessagingServiceSid"] = service
    params.update({"MessageSid": sent.provider_sid, "AccountSid": sent.account_sid,
                   "From": sent.from_ or pool_number(service or "MG00000000"),
                   "ApiVersion": API_VERSION})
    if code is not None:
        params["ErrorCode"] = str(code)
    if status in ("delivered", "undelivered"):
        params["RawDlrDoneDate"] = time.strftime("%y%m%d%H%M", time.gmtime(at))
    return params


def call_callback(sent: Sent, at: float, status: str, sequence: int) -> dict[str, str]:
    """A voice status callback (call-progress event) as Twilio posts it."""
    to, sender = sent.to, sent.from_ or ""
    to_country, from_country = country_of(to), country_of(sender)
    params = {
        "Called": to, "ToState": "", "CallerCountry": from_country, "Direction": "outbound-api",
        "Timestamp": rfc2822(at) or "", "CallbackSource": "call-progress-events",
        "CallerState": "", "ToZip": "", "SequenceNumber": str(sequence), "To": to,
        "CallSid": sent.provider_sid, "ToCountry": to_country, "CallerZip": "",
        "CalledZip": "", "ApiVersion": API_VERSION, "CallStatus": status, "CalledCity": "",
        "From": sender, "AccountSid": sent.account_sid, "CalledCountry": to_country,
        "CallerCity": "", "ToCity": "", "FromCountry": from_country, "Caller": sender,
        "FromCity": "", "CalledState": "", "FromZip": "", "FromState": "",
    }
    if status in ("completed", "busy", "no-answer", "failed", "canceled"):
        answered = next((t for t, s, _ in sent.timeline if s == "in-progress"), None)
        seconds = math.ceil(at - answered) if answered is not None else 0
        params["CallDuration"] = str(seconds)
        params["Duration"] = str(math.ceil(seconds / 60))
    answered_by = sent.extra.get("answered_by")
    if answered_by and status in ("in-progress", "completed"):
        params["AnsweredBy"] = answered_by
    return params


def call_request(sent: Sent, at: float) -> dict[str, str]:
    """The request an answered call makes to its `Url` for TwiML: the call's parameters
    (with `AnsweredBy` when AMD ran), without the status callback's own fields."""
    params = call_callback(sent, at, "in-progress", 0)
    for key in ("Timestamp", "CallbackSource", "SequenceNumber"):
        del params[key]
    return params


def inbound_params(sid: str, account_sid: str, from_: str, to: str, body: str,
                   media_urls: Sequence[str]) -> dict[str, str]:
    """An incoming-message webhook, in the field order Twilio uses."""
    params = {
        "ToCountry": country_of(to), "ToState": "", "SmsMessageSid": sid,
        "NumMedia": str(len(media_urls)), "ToCity": "", "FromZip": "", "SmsSid": sid,
        "FromState": "", "SmsStatus": "received", "FromCity": "", "Body": body,
        "FromCountry": country_of(from_), "To": to, "ToZip": "",
        "NumSegments": str(segments(body)), "MessageSid": sid, "AccountSid": account_sid,
        "From": from_, "ApiVersion": API_VERSION,
    }
    for i, url in enumerate(media_urls):
        params[f"MediaContentType{i}"] = mimetypes.guess_type(url)[0] or "image/jpeg"
        params[f"MediaUrl{i}"] = url
    return params
