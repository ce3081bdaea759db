"""Twilio SMS/MMS: sends as direct form POSTs to Messages.json (the fields the official SDK
sends), reconciliation lookups through the SDK, and the parsers and signature check for
Twilio's messaging webhooks.

Twilio's message statuses map onto the hub's lifecycle in one table (STATUS_MAP). Twilio's
`accepted`, `scheduled`, `queued` and `sending` all mean "Twilio has it, nothing has left
yet", which is the hub's `sending`; `partially_delivered` is `sent` (accepted, outcome not
known) so that a later delivered/undelivered still moves the message forward.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from channels.base import (
    ErrorKind,
    InboundMessage,
    OutboundMessage,
    ProviderCredentials,
    SendError,
    SendResult,
    StatusUpdate,
)
from channels.twilio_client import TwilioTransport, log_outcomes
from channels.twilio_errors import classify_twilio_error
from hub.status import Status

__all__ = ["STATUS_MAP", "InvalidCallback", "LookupFailed", "TwilioSmsAdapter",
           "callback_error", "classify_twilio_error", "message_form", "parse_inbound",
           "parse_status_callback", "with_message_id"]

log = logging.getLogger(__name__)

STATUS_MAP: dict[str, Status] = {
    "accepted": Status.SENDING, "scheduled": Status.SENDING, "queued": Status.SENDING,
    "sending": Status.SENDING, "sent": Status.SENT, "partially_delivered": Status.SENT,
    "delivered": Status.DELIVERED, "read": Status.READ, "undelivered": Status.UNDELIVERED,
    "failed": Status.FAILED, "canceled": Status.CANCELED,
    "receiving": Status.RECEIVED, "received": Status.RECEIVED,
}


class InvalidCallback(ValueError):
    """A webhook that cannot be understood (unknown status, missing SID): answer 400."""


class LookupFailed(Exception):
    """A reconciliation lookup that could not get an answer; `error` says why."""

    def __init__(self, error: SendError) -> None:
        super().__init__(error.message)
        self.error = error


class TwilioSmsAdapter:
    provider = "twilio"

    def __init__(self, transport: TwilioTransport | None = None, *, concurrency: int = 64,
                 connect_timeout: float = 5.0, read_timeout: float = 15.0) -> None:
        self._owns_transport = transport is None
        self._transport = transport or TwilioTransport(
            concurrency=concurrency, connect_timeout=connect_timeout, read_timeout=read_timeout)

    async def send_batch(self, creds: ProviderCredentials,
                         messages: Sequence[OutboundMessage]) -> list[SendResult]:
        # One message (a bulk SMS is a request of its own) is awaited as it is: no task.
        results = [await self._send(creds, messages[0])] if len(messages) == 1 else \
            list(await asyncio.gather(*(self._send(creds, m) for m in messages)))
        log_outcomes("sms", results)
        return results

    async def send(self, creds: ProviderCredentials, message: OutboundMessage) -> SendResult:
        result = await self._send(creds, message)
        log_outcomes("sms", [result])
        return result

    async def _send(self, creds: ProviderCredentials, message: OutboundMessage) -> SendResult:
        refused = _refuse(creds, message)
        if refused is not None:
            return SendResult(message.message_id, error=refused)
        outcome = await self._transport.create(creds, "Messages", message_form(message))
        if isinstance(outcome, SendError):
            log.debug("twilio sms failed message_id=%s kind=%s code=%s", message.message_id,
                      outcome.kind.value, outcome.provider_code)
            return SendResult(message.message_id, error=outcome)
        sid, status = outcome
        return SendResult(message.message_id, provider_message_id=sid,
                          status=STATUS_MAP.get(status, Status.SENDING))

    async def lookup(self, creds: ProviderCredentials, provider_message_id: str, *,
                     message_id: str | None = None) -> StatusUpdate | None:
        """The message as Twilio has it now, or None if Twilio has no such message.
        Raises LookupFailed when Twilio could not be asked."""
        client = self._transport.accounts.get(creds).client
        found = await self._transport.attempt(
            lambda: client.messages(provider_message_id).fetch_async())
        if isinstance(found, SendError):
            if found.provider_code in ("20404", "404"):
                return None
            raise LookupFailed(found)
        return _update_from_resource(found, message_id)

    async def find_sent(self, creds: ProviderCredentials, message: OutboundMessage,
                        since: datetime) -> StatusUpdate | None:
        """Reconcile an in-doubt send that has no SID: Twilio's newest messages to the
        same number (from the same sender) created since `since`, matched on the body.
        None when nothing matches (the send never landed). Twilio's Message resource does
        not show the StatusCallback, so two identical texts in the window are ambiguous:
        LookupFailed(IN_DOUBT) rather than a guess."""
        client = self._transport.accounts.get(creds).client
        sender: dict[str, Any] = {} if message.from_.startswith("MG") else {
            "from_": message.from_}
        found = await self._transport.attempt(
            lambda: client.messages.list_async(to=message.to, limit=50, page_size=50, **sender))
        if isinstance(found, SendError):
            raise LookupFailed(found)
        earliest = since - timedelta(seconds=60)  # clock skew between us and Twilio
        matches = [r for r in found
                   if (r.date_created is None or r.date_created >= earliest)
                   and r.body == message.body and r.direction != "inbound"
                   and (not message.from_.startswith("MG")
                        or r.messaging_service_sid == message.from_)]
        if len(matches) > 1:
            raise LookupFailed(SendError(ErrorKind.IN_DOUBT, f"{len(matches)} messages to "
                                         "the same number match; cannot tell which"))
        return _update_from_resource(matches[0], message.message_id) if matches else None

    async def close(self) -> None:
        if self._owns_transport:
            await self._transport.close()


def message_form(message: OutboundMessage) -> list[tuple[str, str]]:
    """The Messages.json form for one message: the fields `messages.create_async` sends,
    in its order; MediaUrl repeats, an empty Body is left out."""
    form = [("To", message.to)]
    if message.status_callback_url:
        form.append(("StatusCallback", with_message_id(message.status_callback_url,
                                                       message.message_id)))
    if message.from_.startswith("MG"):
        form.append(("MessagingServiceSid", message.from_))
    else:
        form.append(("From", message.from_))
    if message.body:
        form.append(("Body", message.body))
    form.extend(("MediaUrl", url) for url in message.media_urls)
    return form


def with_message_id(url: str, message_id: str) -> str:
    """The callback URL carrying our message id, so every callback names its message."""
    head, tail = _message_id_slot(url)
    return f"{head}{quote(message_id, safe='')}{tail}"


@functools.lru_cache(maxsize=256)
def _message_id_slot(url: str) -> tuple[str, str]:
    """A callback URL split where the message id goes: last in its query, before any
    fragment. A shard posts one URL with every message, so it is parsed once."""
    parts = urlsplit(url)
    query = f"{parts.query}&message_id=" if parts.query else "message_id="
    fragment = f"#{parts.fragment}" if parts.fragment else ""
    return urlunsplit(parts._replace(query=query, fragment="")), fragment


def _refuse(creds: ProviderCredentials, message: OutboundMessage) -> SendError | None:
    if creds.provider != "twilio":
        return SendError(ErrorKind.CONFIG_INVALID, f"not a Twilio account: {creds.provider}")
    if message.channel not in ("sms", "mms"):
        return SendError(ErrorKind.MESSAGE_INVALID,
                         f"the Twilio SMS adapter does not send {message.channel}")
    return None


def _update_from_resource(resource: Any, message_id: str | None) -> StatusUpdate:
    raw = str(resource.status)
    code = str(resource.error_code) if resource.error_code else None
    return StatusUpdate(provider="twilio", provider_message_id=resource.sid,
                        status=STATUS_MAP.get(raw, Status.SENDING), provider_status=raw,
                        message_id=message_id, error_code=code,
                        event_key=f"{resource.sid}:{raw}:{code or ''}",
                        occurred_at=resource.date_updated)


# --- webhooks ----------------------------------------------------------------------------


def parse_status_callback(form: Mapping[str, str], query: Mapping[str, str]) -> StatusUpdate:
    """A messaging status callback. Unknown parameters are ignored (Twilio adds some
    without notice); an unknown status raises InvalidCallback."""
    sid = form.get("MessageSid") or form.get("SmsSid")
    raw = form.get("MessageStatus") or form.get("SmsStatus")
    if not sid or not raw:
        raise InvalidCallback("a status callback needs MessageSid and MessageStatus")
    status = STATUS_MAP.get(raw)
    if status is None:
        raise InvalidCallback(f"unknown status {raw!r}")
    code = (form.get("ErrorCode") or "").strip() or None
    return StatusUpdate(provider="twilio", provider_message_id=sid, status=status,
                        provider_status=raw, message_id=query.get("message_id") or None,
                        error_code=code, event_key=f"{sid}:{raw}:{code or ''}")


def callback_error(update: StatusUpdate) -> SendError | None:
    """What a callback's ErrorCode means for the hub (21610 opted out, 63018 throttled…)."""
    if update.error_code is None:
        return None
    return classify_twilio_error(None, update.error_code, update.provider_status)


def parse_inbound(form: Mapping[str, str]) -> InboundMessage:
    """An incoming SMS/MMS (also WhatsApp: addresses keep their `whatsapp:` prefix)."""
    sid = form.get("MessageSid") or form.get("SmsMessageSid") or form.get("SmsSid")
    sender, to = form.get("From"), form.get("To")
    if not sid or not sender or not to:
        raise InvalidCallback("an inbound message needs MessageSid, From and To")
    try:
        declared = int(form.get("NumMedia") or 0)
    except ValueError:
        declared = 0
    media: list[str] = []
    while len(media) < declared or f"MediaUrl{len(media)}" in form:
        url = form.get(f"MediaUrl{len(media)}")
        if url is None:
            break
        media.append(url)
    return InboundMessage(provider="twilio", provider_message_id=sid,
                          channel="mms" if media else "sms", from_=sender, to=to,
                          body=form.get("Body") or "", media_urls=tuple(media),
                          account_id=form.get("AccountSid") or None,
                          messaging_service_id=form.get("MessagingServiceSid") or None)
