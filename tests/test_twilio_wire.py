"""The official SDK is the oracle for the Twilio wire format: every message and call goes to
the sandbox carrier once through the SDK's `create_async` and once through the adapters'
direct form POST, and the two requests must be the same (path, auth, headers, form fields in
order) and land the same in the carrier's log. Failures must come back as the same SendError."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import pytest
from aiohttp import web
from twilio.base.version import Version
from twilio.http.response import Response

from channels.base import (
    OutboundMessage,
    ProviderCredentials,
    SendError,
    SendResult,
    VoiceScript,
)
from channels.sandbox import CarrierConfig, SandboxCarrier
from channels.twilio_client import TwilioTransport
from channels.twilio_errors import error_from_exception, error_from_response
from channels.twilio_sms import TwilioSmsAdapter, with_message_id
from channels.twilio_voice import (
    MACHINE_DETECTION,
    STATUS_CALLBACK_EVENTS,
    TwilioVoiceAdapter,
    build_twiml,
    has_voicemail,
)
from hub.status import Status

SID = "AC" + "5e" * 16
TOKEN = "wire-oracle-token"
FROM, TO, SERVICE = "+15550000002", "+15551230002", "MG" + "7a" * 16
CALLBACK = "https://hub.example.test/v1/providers/twilio/sms/status?tenant=t1"
VOICE_CALLBACK = "https://hub.example.test/v1/providers/twilio/voice/status"
HEADERS = ("Authorization", "Content-Type", "Accept", "Accept-Charset", "User-Agent",
           "X-Twilio-Client")
#: What the carrier's log shows of the request itself (not the sid, time or drawn outcome).
LOGGED = ("channel", "to", "from", "body", "account_sid", "status_callback", "message_id",
          "media_urls", "messaging_service_sid", "num_segments", "twiml", "url",
          "machine_detection", "status_callback_events")


@dataclass(frozen=True)
class Wire:
    path: str
    headers: dict[str, str | None]
    form: list[tuple[str, str]]


@pytest.fixture
async def wire() -> Any:
    """The carrier, with every POST it receives kept as it came off the wire."""
    carrier = SandboxCarrier(CarrierConfig(seed=5, callbacks_enabled=False,
                                           accounts={SID: TOKEN}))
    seen: list[Wire] = []

    @web.middleware
    async def keep(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.method == "POST":
            body = (await request.read()).decode()
            seen.append(Wire(request.path, {h: request.headers.get(h) for h in HEADERS},
                             parse_qsl(body, keep_blank_values=True)))
        return await handler(request)

    carrier.app.middlewares.append(keep)
    async with carrier:
        yield carrier, seen


def sms(mid: str, **kw: Any) -> OutboundMessage:
    fields: dict[str, Any] = {"message_id": mid, "channel": "sms", "to": TO, "from_": FROM,
                              "body": "Hello", "status_callback_url": CALLBACK}
    return OutboundMessage(**(fields | kw))


def sdk_message(m: OutboundMessage) -> dict[str, Any]:
    """`messages.create_async` arguments, written from Twilio's docs, not from our code."""
    kw: dict[str, Any] = {"to": m.to}
    if m.from_.startswith("MG"):
        kw["messaging_service_sid"] = m.from_
    else:
        kw["from_"] = m.from_
    if m.body:
        kw["body"] = m.body
    if m.media_urls:
        kw["media_url"] = list(m.media_urls)
    if m.status_callback_url:
        kw["status_callback"] = with_message_id(m.status_callback_url, m.message_id)
    return kw


def sdk_call(m: OutboundMessage) -> dict[str, Any]:
    """A voicemail variant: AMD, and the TwiML from the hub's route beside the status
    callback (Twilio asks it once it knows who answered); else the TwiML inline."""
    script = m.voice or VoiceScript(say=m.body)
    kw: dict[str, Any] = {"to": m.to, "from_": m.from_}
    if has_voicemail(script):
        assert m.status_callback_url is not None
        kw["machine_detection"] = MACHINE_DETECTION
        kw["method"] = "POST"
        kw["url"] = with_message_id(m.status_callback_url.replace("/voice/status",
                                                                  "/voice/twiml"), m.message_id)
    else:
        kw["twiml"] = build_twiml(script)
    if m.status_callback_url:
        kw["status_callback"] = with_message_id(m.status_callback_url, m.message_id)
        kw["status_callback_event"] = list(STATUS_CALLBACK_EVENTS)
        kw["status_callback_method"] = "POST"
    return kw


MESSAGES = [
    sms("plain"),
    sms("mms", channel="mms", body="Look", media_urls=("https://cdn.example/a.jpg",
                                                       "https://cdn.example/b.gif?x=1&y=2")),
    sms("mms-no-body", channel="mms", body="", media_urls=("https://cdn.example/c.png",)),
    sms("service", from_=SERVICE),
    sms("no-callback", status_callback_url=None),
    sms("awkward", body="50% off & free = yes+more?\n¡Olé! 🎉 a/b#c", to="+447700900123"),
    sms("long", body="Ünïcödé segment test " * 40),
]
CALLS = [
    sms("say", channel="voice", body="", voice=VoiceScript(
        say="Your table is ready & waiting", voice="Polly.Joanna", language="en-US")),
    sms("voicemail", channel="voice", voice=VoiceScript(say="Hi", voicemail_say="Call back"),
        status_callback_url=VOICE_CALLBACK),
    sms("play", channel="voice", voice=VoiceScript(play_url="https://cdn.example/m.mp3"),
        status_callback_url=None),
    sms("body-only", channel="voice", body="Reminder: 3pm <today>"),
]


def logged(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row.get(k) for k in LOGGED}


async def both_ways(carrier: Any, message: OutboundMessage) -> tuple[Any, SendResult]:
    """The message sent once through the SDK's create_async (the oracle), then once by the
    adapter's direct POST."""
    creds = ProviderCredentials("twilio", SID, TOKEN, base_url=carrier.url)
    transport = TwilioTransport()
    voice = message.channel == "voice"
    adapter = TwilioVoiceAdapter(transport) if voice else TwilioSmsAdapter(transport)
    try:
        client = transport.accounts.get(creds).client
        create = client.calls.create_async if voice else client.messages.create_async
        kwargs = sdk_call(message) if voice else sdk_message(message)
        oracle = await transport.attempt(lambda: create(**kwargs))
        (ours,) = await adapter.send_batch(creds, [message])
    finally:
        await transport.close()
    return oracle, ours


@pytest.mark.parametrize("message", MESSAGES + CALLS,
                         ids=[m.message_id for m in MESSAGES + CALLS])
async def test_the_direct_post_is_the_sdks_request(wire, message: OutboundMessage) -> None:
    carrier, seen = wire
    oracle, ours = await both_ways(carrier, message)
    assert not isinstance(oracle, SendError), oracle
    assert ours.ok, ours.error
    by_sdk, direct = seen
    assert direct == by_sdk
    assert direct.path.endswith("/Calls.json" if message.channel == "voice"
                                else "/Messages.json")
    first, second = carrier.requests()
    assert logged(second) == logged(first)
    assert (first["provider_sid"], second["provider_sid"]) == (oracle.sid,
                                                                ours.provider_message_id)
    assert ours.status is Status.SENDING


FAULTS = [
    ("invalid_to", {}, sms("bad-to", to="555-0100")),
    ("opted_out", {}, sms("stop", to="+15005550004")),
    ("wrong_token", {"accounts": {SID: "another"}}, sms("auth")),
    ("unknown_code", {"reject_to": {TO: 1001}}, sms("odd")),
    ("throttled", {"rate_limit_rate": 1.0, "retry_after_s": 7}, sms("429")),
    ("unavailable", {"server_error_rate": 1.0, "server_error_statuses": [503]}, sms("503")),
    ("server_error", {"server_error_rate": 1.0, "server_error_statuses": [500]}, sms("500")),
    ("bad_gateway", {"server_error_rate": 1.0, "server_error_statuses": [502]}, sms("502")),
    ("call_invalid_to", {}, sms("c-to", channel="voice", to="12",
                                voice=VoiceScript(say="x"))),
]


@pytest.mark.parametrize(("carrier_config", "message"), [f[1:] for f in FAULTS],
                         ids=[f[0] for f in FAULTS])
async def test_failures_classify_as_through_the_sdk(wire, carrier_config: dict[str, Any],
                                                    message: OutboundMessage) -> None:
    carrier, seen = wire
    carrier.configure(**carrier_config)
    oracle, ours = await both_ways(carrier, message)
    assert isinstance(oracle, SendError)
    assert ours.error == oracle
    assert len(seen) == 2 and seen[0] == seen[1]
    assert carrier.requests() == []


@pytest.mark.parametrize(("status", "body", "headers"), [
    (400, '{"code": 21211, "message": "Invalid To", "status": 400}', {}),
    (429, '{"code": 20429, "message": "Too Many Requests"}', {"Retry-After": "3"}),
    (503, "<html>Service Unavailable</html>", {"Retry-After": "2"}),
    (500, "", {}),
    (502, "[1, 2]", {}),
    (401, '{"code": null, "message": "Authenticate"}', {}),
    (400, '{"type": "https://www.twilio.com/docs/errors/21610", "title": "Unsubscribed",'
          ' "status": 400, "code": 21610, "detail": "The recipient replied STOP"}', {}),
    (429, '{"type": "about:blank", "title": "Slow down", "status": 429, "code": 20429}',
     {"Retry-After": "5"}),
    (302, '{"message": "Moved"}', {}),
])
def test_error_answers_read_as_the_sdk_reads_them(status: int, body: str,
                                                  headers: dict[str, str]) -> None:
    raised = Version.exception("POST", "/Messages.json", Response(status, body, headers),
                               "Unable to create record")
    oracle = error_from_exception(raised, headers)
    ours = error_from_response(status, body.encode(), headers)
    assert (ours.kind, ours.provider_code, ours.retry_after) == (
        oracle.kind, oracle.provider_code, oracle.retry_after)
