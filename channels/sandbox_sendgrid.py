"""The sandbox carrier's SendGrid v3 mail/send: Bearer auth, SendGrid's validation errors,
one logged send per recipient, and the Event Webhook events each recipient earns."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from channels.sandbox_callbacks import CallbackSender
from channels.sandbox_core import CarrierState, Sent

MAX_PERSONALIZATIONS = 1000
MAX_BODY_BYTES = 30 * 1024 * 1024
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_HELP = "http://sendgrid.com/docs/API_Reference/Web_API_v3/Mail/errors.html"
_RESERVED = ("email", "timestamp", "event", "sg_event_id", "sg_message_id", "smtp-id")


def sendgrid_error(status: int, message: str, field: str | None = None,
                   headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"errors": [{"message": message, "field": field, "help": None}]},
                             status=status, headers=headers)


class SendGridApi:
    def __init__(self, state: CarrierState, callbacks: CallbackSender) -> None:
        self.state = state
        self.callbacks = callbacks

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/v3/mail/send", self.mail_send)]

    def _authenticate(self, request: web.Request) -> str | web.Response:
        """A name for the key that is safe to log (a hash), or SendGrid's 401."""
        header = request.headers.get("Authorization", "")
        key = header[7:] if header[:7].lower() == "bearer " else ""
        if not key:
            self.state.rejected(401)
            return sendgrid_error(401, "authorization required")
        allowed = self.state.config.sendgrid_api_keys
        if allowed and not any(hmac.compare_digest(key.encode(), k.encode()) for k in allowed):
            self.state.rejected(401)
            return sendgrid_error(
                401, "The provided authorization grant is invalid, expired, or revoked")
        return "sg:" + hashlib.sha256(key.encode()).hexdigest()[:12]

    async def mail_send(self, request: web.Request) -> web.Response:
        account = self._authenticate(request)
        if isinstance(account, web.Response):
            return account
        fault = self.state.api_fault()
        if fault is not None:
            self.state.rejected(fault)
            if fault == 429:
                reset = str(int(time.time()) + self.state.retry_after())
                return sendgrid_error(429, "too many requests", headers={
                    "Retry-After": str(self.state.retry_after()), "X-RateLimit-Reset": reset})
            return sendgrid_error(fault, "service unavailable" if fault == 503
                                  else "internal server error")
        raw = await request.read()
        if len(raw) > MAX_BODY_BYTES:
            self.state.rejected(413)
            return sendgrid_error(413, "content too large")
        try:
            payload = json.loads(raw)
        except ValueError:
            payload = None
        errors = _validate(payload) if isinstance(payload, dict) else [
            {"message": "Bad Request", "field": None, "help": None}]
        if errors:
            self.state.rejected(400)
            return web.json_response({"errors": errors}, status=400)
        now = time.time()
        x_message_id = secrets.token_urlsafe(16)  # unique across restarts, as SendGrid's
        hung = self.state.chance(self.state.config.hang_rate)
        for sent in _recipients(payload, account, x_message_id, now, hung):
            self._plan(sent, now)
            self.state.record(sent)
        if hung:
            await self.state.hang()
        return web.Response(status=202, headers={"X-Message-Id": x_message_id})

    def _plan(self, sent: Sent, now: float) -> None:
        state, c = self.state, self.state.config
        outcome = state.outcome()
        at = now + state.latency()
        steps: list[tuple[float, str, dict[str, Any]]] = [(now, "processed", {})]
        if outcome == "failed":
            steps.append((at, "dropped", {"reason": "Bounced Address", "status": "5.0.0"}))
            sent.outcome = "dropped"
        elif outcome == "undelivered":
            steps.append((at, "bounce", {
                "reason": "550 5.1.1 The email account that you tried to reach does not exist",
                "status": "5.1.1", "type": "bounce"}))
            sent.outcome = "bounce"
        else:
            steps.append((at, "delivered", {"response": "250 OK"}))
            sent.outcome = "delivered"
            agent = {"useragent": "Mozilla/5.0 (sandbox)", "ip": "192.0.2.1"}
            if state.chance(c.open_rate):
                at += state.latency()
                steps.append((at, "open", agent))
                if state.chance(c.click_rate):
                    at += state.latency()
                    steps.append((at, "click", {**agent, "url": _first_link(sent)}))
            if state.chance(c.spamreport_rate):
                steps.append((at + state.latency(), "spamreport", {}))
        sent.timeline = [(t, name, None) for t, name, _ in steps]
        if c.callbacks_enabled and c.sendgrid_event_url:
            events = [(t, self._event(sent, name, t, extra)) for t, name, extra in steps]
            self.callbacks.email_series(self.state.quirks(events))

    def _event(self, sent: Sent, name: str, at: float, extra: dict[str, Any]) -> dict[str, Any]:
        event = {k: v for k, v in sent.extra["custom_args"].items() if k not in _RESERVED}
        event.update(extra)
        event.update({
            "email": sent.to, "timestamp": int(at),
            "smtp-id": f"<{sent.extra['x_message_id']}@ismtpd-sandbox>", "event": name,
            "sg_event_id": secrets.token_urlsafe(16),
            "sg_message_id": sent.provider_sid,
        })
        if sent.extra["categories"]:
            event["category"] = sent.extra["categories"]
        return event


def _validate(p: Mapping[str, Any]) -> list[dict[str, Any]]:
    errors: list[dict[str, Any]] = []

    def error(message: str, field: str | None, anchor: str = "") -> None:
        errors.append({"message": message, "field": field, "help": f"{_HELP}#{anchor}"})

    people = p.get("personalizations")
    if not isinstance(people, list) or not people:
        error("The personalizations field is required and must have at least one "
              "personalization.", "personalizations", "-Personalizations-Errors")
        people = []
    elif len(people) > MAX_PERSONALIZATIONS:
        error("The personalizations field is limited to 1000 objects per request.",
              "personalizations", "-Personalizations-Errors")
    for i, person in enumerate(people if isinstance(people, list) else []):
        to = person.get("to") if isinstance(person, dict) else None
        if not isinstance(to, list) or not to:
            error("The to array is required for all personalization objects, and must have "
                  "at least one email object with a valid email address.",
                  f"personalizations.{i}.to", "message.personalizations.to")
            continue
        for role in ("to", "cc", "bcc"):
            for j, addr in enumerate(person.get(role) or []):
                if not (isinstance(addr, dict) and _EMAIL.fullmatch(str(addr.get("email")))):
                    error("Does not contain a valid address.",
                          f"personalizations.{i}.{role}.{j}.email", "message.recipient.email")
        for key in ("custom_args", "substitutions", "headers"):
            values = person.get(key) or {}
            if not isinstance(values, dict) or not all(isinstance(v, str)
                                                       for v in values.values()):
                error(f"The {key} values must be strings.", f"personalizations.{i}.{key}",
                      f"message.personalizations.{key}")
    sender = p.get("from")
    if not isinstance(sender, dict) or not sender.get("email"):
        error("The from object must be provided for every email send. It is an object that "
              "requires the email parameter, but may also contain a name parameter.  e.g. "
              '{"email" : "example@example.com"}  or {"email" : "example@example.com", '
              '"name" : "Example Recipient"}.', "from.email", "message.from")
    elif not _EMAIL.fullmatch(str(sender["email"])):
        error("The from email does not contain a valid address.", "from.email", "message.from")
    templated = bool(p.get("template_id"))
    if not templated and not p.get("subject") and not all(
            isinstance(x, dict) and x.get("subject") for x in people or [{}]):
        error("The subject is required. You can get around this requirement if you use a "
              "template with a subject defined or if every personalization has a subject "
              "defined.", "subject", "message.subject")
    content = p.get("content")
    if not templated and (not isinstance(content, list) or not content):
        error("Unless a valid template_id is provided, the content parameter is required. "
              "There must be at least one defined content block. We typically suggest both "
              "text/plain and text/html blocks are included, but only one block is required.",
              "content", "message.content")
    for k, block in enumerate(content if isinstance(content, list) else []):
        if not (isinstance(block, dict) and isinstance(block.get("value"), str)
                and block["value"]):
            error("The content value must be a string at least one character in length.",
                  f"content.{k}.value", "message.content.value")
    custom = p.get("custom_args") or {}
    if not isinstance(custom, dict) or not all(isinstance(v, str) for v in custom.values()):
        error("The custom_args values must be strings.", "custom_args", "message.custom_args")
    return errors


def _substitute(text: str | None, subs: Mapping[str, str]) -> str | None:
    if text:
        for key, value in subs.items():
            text = text.replace(key, value)
    return text


def _recipients(p: Mapping[str, Any], account: str, x_message_id: str, now: float,
                hung: bool) -> list[Sent]:
    """One log row per recipient of every personalization (to, cc and bcc)."""
    content = {b.get("type"): b["value"] for b in p.get("content") or []}
    text = content.get("text/plain") or next(iter(content.values()), None)
    html = content.get("text/html")
    categories = list(p.get("categories") or [])
    rows: list[Sent] = []
    for i, person in enumerate(p["personalizations"]):
        subs = person.get("substitutions") or {}
        custom = {**(p.get("custom_args") or {}), **(person.get("custom_args") or {})}
        extra_base = {
            "x_message_id": x_message_id, "custom_args": custom, "categories": categories,
            "headers": {**(p.get("headers") or {}), **(person.get("headers") or {})},
            "html": _substitute(html, subs), "from_name": (p["from"] or {}).get("name"),
            "template_id": p.get("template_id"),
        }
        n = 0
        for role in ("to", "cc", "bcc"):
            for addr in person.get(role) or []:
                rows.append(Sent(
                    index=0, channel="email", to=addr["email"], from_=p["from"]["email"],
                    provider_sid=f"{x_message_id}.filterdrecv-sandbox-{i}-{n}.0",
                    account_sid=account, time=now, body=_substitute(text, subs),
                    subject=_substitute(person.get("subject") or p.get("subject"), subs),
                    message_id=custom.get("message_id"), sent_at=now, hung=hung,
                    extra={**extra_base, "role": role},
                ))
                n += 1
    return rows


def _first_link(sent: Sent) -> str:
    match = re.search(r"https?://[^\s\"'<>]+", sent.extra.get("html") or sent.body or "")
    return match.group(0) if match else "https://example.com/"
