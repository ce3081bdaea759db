"""Twilio voice: outbound calls (a direct form POST to Calls.json, the fields the SDK sends)
with TwiML built by the SDK's VoiceResponse, answering-machine detection for voicemail
drops, and the call status-callback parser.

A call without a voicemail variant carries its TwiML inline (`Twiml`): no detection, so a
person hears `say` / `play_url` at once, and no request back to the hub. A call with one
(`voicemail_say` / `voicemail_play_url`) is created with `MachineDetection=DetectMessageEnd`
and `Url` pointing at the hub's TwiML route (`twiml_url`, a sibling of the status callback):
Twilio holds the call until it knows who answered and, for a machine, until the greeting has
ended, then requests `Url` with `AnsweredBy`; the route answers `build_twiml(script,
answered_by)`, so a person hears `say` / `play_url` and a voicemail box the voicemail
variant (gateway/routes/webhooks.py).

Call statuses map onto the hub's lifecycle in one table (CALL_STATUS_MAP): queued,
initiated and ringing are `sending` (the handset has not picked up, nothing was conveyed);
in-progress is `sent`; completed is `delivered` (to a person or, with a voicemail drop, a
machine); busy and no-answer are `undelivered`; failed `failed`; canceled `canceled`. A call
that ends so with no ErrorCode records its status as the error code (`call_error`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit, urlunsplit

from twilio.twiml.voice_response import VoiceResponse

from channels.base import (
    ErrorKind,
    OutboundMessage,
    ProviderCredentials,
    SendError,
    SendResult,
    StatusUpdate,
    VoiceScript,
)
from channels.twilio_client import TwilioTransport, log_outcomes
from channels.twilio_sms import InvalidCallback, LookupFailed, with_message_id
from hub.status import Status

__all__ = ["CALL_STATUS_MAP", "STATUS_CALLBACK_EVENTS", "TwilioVoiceAdapter", "build_twiml",
           "call_error", "call_form", "has_voicemail", "parse_call_status", "twiml_url"]

log = logging.getLogger(__name__)

CALL_STATUS_MAP: dict[str, Status] = {
    "queued": Status.SENDING, "initiated": Status.SENDING, "ringing": Status.SENDING,
    "in-progress": Status.SENT, "completed": Status.DELIVERED,
    "busy": Status.UNDELIVERED, "no-answer": Status.UNDELIVERED,
    "failed": Status.FAILED, "canceled": Status.CANCELED,
}
#: Calls that end without connecting; Twilio rarely gives an ErrorCode, the status is why.
NOT_CONNECTED = frozenset({"busy", "no-answer", "canceled", "failed"})
STATUS_CALLBACK_EVENTS = ("initiated", "ringing", "answered", "completed")
MACHINE_DETECTION = "DetectMessageEnd"


#: What Twilio's AMD reports for a machine whose greeting has ended (DetectMessageEnd).
MACHINE_END = frozenset({"machine_end_beep", "machine_end_silence", "machine_end_other"})


def has_voicemail(script: VoiceScript) -> bool:
    return bool(script.voicemail_say or script.voicemail_play_url)


def build_twiml(script: VoiceScript, answered_by: str = "human") -> VoiceResponse:
    """What the call plays to whoever answered (Twilio's `AnsweredBy`): the voicemail
    variant to a machine whose greeting has ended, `<Hangup/>` to a fax, and `say` /
    `play_url` to anyone else: a person, `unknown` (AMD could not tell), `machine_start`
    (which DetectMessageEnd does not send) and a call without detection."""
    response = VoiceResponse()
    if answered_by == "fax":
        response.hangup()
        return response
    voicemail = answered_by in MACHINE_END and has_voicemail(script)
    say = script.voicemail_say if voicemail else script.say
    play = script.voicemail_play_url if voicemail else script.play_url
    if say:
        kwargs = {k: v for k, v in (("voice", script.voice), ("language", script.language))
                  if v}
        response.say(say, **kwargs)
    if play:
        response.play(play)
    return response


def twiml_url(message: OutboundMessage) -> str:
    """Where Twilio asks for the TwiML of a call with a voicemail variant: the hub's
    `…/twilio/voice/twiml?message_id=` route, beside the status callback
    (`…/twilio/voice/status`), so it has the same public origin."""
    if not message.status_callback_url:
        raise ValueError("a call with a voicemail variant needs the hub's callback URL")
    parts = urlsplit(message.status_callback_url)
    sibling = parts._replace(path=parts.path.rsplit("/", 1)[0] + "/twiml", fragment="")
    return with_message_id(urlunsplit(sibling), message.message_id)


def call_form(message: OutboundMessage) -> list[tuple[str, str]]:
    """The Calls.json form for one message: the fields `calls.create_async` sends, in its
    order."""
    script = message.voice or VoiceScript(say=message.body or None)
    if not (script.say or script.play_url):
        raise ValueError("a call needs something to say or play")
    detect = has_voicemail(script)
    form = [("To", message.to), ("From", message.from_)]
    if detect:
        form.append(("Method", "POST"))
    if message.status_callback_url:
        form.append(("StatusCallback", with_message_id(message.status_callback_url,
                                                       message.message_id)))
        form.extend(("StatusCallbackEvent", event) for event in STATUS_CALLBACK_EVENTS)
        form.append(("StatusCallbackMethod", "POST"))
    if detect:
        form += [("MachineDetection", MACHINE_DETECTION), ("Url", twiml_url(message))]
    else:
        form.append(("Twiml", str(build_twiml(script))))
    return form


class TwilioVoiceAdapter:
    provider = "twilio"

    def __init__(self, transport: TwilioTransport | None = None, *, concurrency: int = 64,
                 connect_timeout: float = 5.0, read_timeout: float = 15.0) -> None:
        self._owns_transport = transport is None
        self._transport = transport or TwilioTransport(
            concurrency=concurrency, connect_timeout=connect_timeout, read_timeout=read_timeout)

    async def send_batch(self, creds: ProviderCredentials,
                         messages: Sequence[OutboundMessage]) -> list[SendResult]:
        results = list(await asyncio.gather(*(self._send(creds, m) for m in messages)))
        log_outcomes("voice", results)
        return results

    async def send(self, creds: ProviderCredentials, message: OutboundMessage) -> SendResult:
        result = await self._send(creds, message)
        log_outcomes("voice", [result])
        return result

    async def _send(self, creds: ProviderCredentials, message: OutboundMessage) -> SendResult:
        if creds.provider != "twilio":
            return SendResult(message.message_id, error=SendError(
                ErrorKind.CONFIG_INVALID, f"not a Twilio account: {creds.provider}"))
        try:
            if message.channel != "voice":
                raise ValueError(f"the Twilio voice adapter does not send {message.channel}")
            form = call_form(message)
        except ValueError as exc:
            return SendResult(message.message_id,
                              error=SendError(ErrorKind.MESSAGE_INVALID, str(exc)))
        outcome = await self._transport.create(creds, "Calls", form)
        if isinstance(outcome, SendError):
            log.debug("twilio call failed message_id=%s kind=%s code=%s", message.message_id,
                      outcome.kind.value, outcome.provider_code)
            return SendResult(message.message_id, error=outcome)
        sid, status = outcome
        log.debug("twilio call queued message_id=%s sid=%s", message.message_id, sid)
        return SendResult(message.message_id, provider_message_id=sid,
                          status=CALL_STATUS_MAP.get(status, Status.SENDING))

    async def lookup(self, creds: ProviderCredentials, provider_message_id: str, *,
                     message_id: str | None = None) -> StatusUpdate | None:
        """The call as Twilio has it now, or None if there is no such call."""
        client = self._transport.accounts.get(creds).client
        found = await self._transport.attempt(
            lambda: client.calls(provider_message_id).fetch_async())
        if isinstance(found, SendError):
            if found.provider_code in ("20404", "404"):
                return None
            raise LookupFailed(found)
        raw = str(found.status)
        return StatusUpdate(provider="twilio", provider_message_id=found.sid,
                            status=CALL_STATUS_MAP.get(raw, Status.SENDING),
                            provider_status=raw, message_id=message_id,
                            error_code=call_error(raw, None),
                            event_key=f"{found.sid}:fetch:{raw}",
                            occurred_at=found.date_updated)

    async def close(self) -> None:
        if self._owns_transport:
            await self._transport.close()


def call_error(status: str, code: str | None) -> str | None:
    """The error code to record: Twilio's own, else, for a call that ended without
    connecting, its status (`busy`, `no-answer`, …), so a failed call always says why."""
    return code or (status if status in NOT_CONNECTED else None)


def parse_call_status(form: Mapping[str, str], query: Mapping[str, str]) -> StatusUpdate:
    """A voice status callback (call-progress event). Voice callbacks carry a
    SequenceNumber, so the dedup key includes it; AnsweredBy is not carried over."""
    sid, raw = form.get("CallSid"), form.get("CallStatus")
    if not sid or not raw:
        raise InvalidCallback("a call status callback needs CallSid and CallStatus")
    status = CALL_STATUS_MAP.get(raw)
    if status is None:
        raise InvalidCallback(f"unknown call status {raw!r}")
    occurred = None
    if form.get("Timestamp"):
        try:
            occurred = parsedate_to_datetime(form["Timestamp"])
        except (TypeError, ValueError):
            occurred = None
    code = call_error(raw, (form.get("ErrorCode") or "").strip() or None)
    return StatusUpdate(provider="twilio", provider_message_id=sid, status=status,
                        provider_status=raw, message_id=query.get("message_id") or None,
                        error_code=code,
                        event_key=f"{sid}:{form.get('SequenceNumber', '')}:{raw}",
                        occurred_at=occurred)
