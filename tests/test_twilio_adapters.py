"""The Twilio SMS and voice adapters, table-driven in courier's style: a message in, the
carrier told how to behave, the request the carrier logged and the SendResult out. Then
every recorded Twilio webhook payload and signature vector through our parsers."""

from __future__ import annotations

import json
import logging
import socket
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import pytest

from channels.base import (
    ErrorKind,
    OutboundMessage,
    ProviderCredentials,
    VoiceScript,
)
from channels.sandbox import CarrierConfig, Latency, SandboxCarrier
from channels.twilio_client import TwilioTransport
from channels.twilio_sms import (
    InvalidCallback,
    LookupFailed,
    TwilioSmsAdapter,
    callback_error,
    classify_twilio_error,
    parse_inbound,
    parse_status_callback,
    with_message_id,
)
from channels.twilio_voice import TwilioVoiceAdapter, build_twiml, parse_call_status
from hub import twilio_signature
from hub.status import Status
from tests.conftest import REFERENCE
from tests.test_carrier import Receiver

SID = "AC" + "c3" * 16
TOKEN = "tw-4uth-t0ken-never-logged"
FROM, TO, SERVICE = "+15550000001", "+15551230001", "MG" + "d4" * 16
CALLBACK = "https://hub.example.test/v1/providers/twilio/sms/status?tenant=t1"
PAYLOADS = json.loads((REFERENCE / "payloads/twilio_webhook_payloads_courier.json").read_text())
VECTORS = json.loads((REFERENCE / "payloads/twilio_signature_vectors.json").read_text())
VOICE = json.loads(
    (REFERENCE / "payloads/twilio_voice_status_callback_samples.json").read_text())
ERRORS = json.loads((REFERENCE / "payloads/twilio_error_codes_subset.json").read_text())


def message(mid: str = "m-1", **kw: Any) -> OutboundMessage:
    fields: dict[str, Any] = {"message_id": mid, "channel": "sms", "to": TO, "from_": FROM,
                              "body": "Hello", "status_callback_url": CALLBACK}
    return OutboundMessage(**(fields | kw))


def creds_for(carrier: SandboxCarrier, secret: str = TOKEN) -> ProviderCredentials:
    return ProviderCredentials("twilio", SID, secret, base_url=carrier.url)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def carrier() -> Any:
    async with SandboxCarrier(CarrierConfig(seed=99, latency=Latency(seconds=0.01))) as c:
        yield c


@pytest.fixture
async def sms_adapter() -> Any:
    adapter = TwilioSmsAdapter(read_timeout=0.3)
    yield adapter
    await adapter.close()


@pytest.fixture
async def voice_adapter() -> Any:
    adapter = TwilioVoiceAdapter(read_timeout=0.3)
    yield adapter
    await adapter.close()


# --- SMS sends: the table --------------------------------------------------------------------


@dataclass(frozen=True)
class SendCase:
    name: str
    message: OutboundMessage
    carrier: dict[str, Any] = field(default_factory=dict)
    secret: str = TOKEN
    kind: ErrorKind | None = None  # None: accepted
    code: str | None = None
    retry_after: float | None = None
    logged: dict[str, Any] | None = None  # the carrier's log row; None: nothing logged


SEND_CASES = [
    SendCase("sms", message("m-sms"), logged={
        "channel": "sms", "to": TO, "from": FROM, "body": "Hello", "message_id": "m-sms",
        "account_sid": SID, "status_callback": f"{CALLBACK}&message_id=m-sms",
        "messaging_service_sid": None, "media_urls": []}),
    SendCase("mms", message("m-mms", channel="mms", body="", media_urls=(
        "https://cdn.example/a.jpg", "https://cdn.example/b.gif")), logged={
        "channel": "mms", "body": "", "message_id": "m-mms",
        "media_urls": ["https://cdn.example/a.jpg", "https://cdn.example/b.gif"]}),
    SendCase("messaging_service", message("m-mg", from_=SERVICE), logged={
        "channel": "sms", "from": None, "messaging_service_sid": SERVICE}),
    SendCase("invalid_to", message(to="555-0100"), kind=ErrorKind.MESSAGE_INVALID,
             code="21211"),
    SendCase("body_too_long", message(body="x" * 1601), kind=ErrorKind.MESSAGE_INVALID,
             code="21617"),
    SendCase("opted_out", message(to="+15005550004"), kind=ErrorKind.OPTED_OUT, code="21610"),
    SendCase("sender_not_owned", message(from_="+15005550007"),
             kind=ErrorKind.CONFIG_INVALID, code="21606"),
    SendCase("wrong_token", message(), carrier={"accounts": {SID: "the-right-one"}},
             kind=ErrorKind.CONFIG_INVALID, code="20003"),
    SendCase("unknown_code", message(), carrier={"reject_to": {TO: 1001}},
             kind=ErrorKind.REJECTED, code="1001"),
    SendCase("throttled", message(), carrier={"rate_limit_rate": 1.0, "retry_after_s": 7},
             kind=ErrorKind.THROTTLED, code="20429", retry_after=7.0),
    SendCase("unavailable_503", message(), carrier={
        "server_error_rate": 1.0, "server_error_statuses": [503]},
        kind=ErrorKind.THROTTLED, code="20503", retry_after=1.0),
    SendCase("server_error_500", message(), carrier={
        "server_error_rate": 1.0, "server_error_statuses": [500]},
        kind=ErrorKind.IN_DOUBT, code="20500"),
    SendCase("timeout_in_doubt", message("m-hang"), carrier={"hang_rate": 1.0},
             kind=ErrorKind.IN_DOUBT, logged={"message_id": "m-hang", "hung": True}),
    SendCase("voice_to_sms_adapter", message(channel="voice"), kind=ErrorKind.MESSAGE_INVALID),
]


@pytest.mark.parametrize("case", SEND_CASES, ids=[c.name for c in SEND_CASES])
async def test_sms_send(carrier, sms_adapter, case: SendCase) -> None:
    carrier.configure(**case.carrier)
    (result,) = await sms_adapter.send_batch(creds_for(carrier, case.secret), [case.message])
    assert result.message_id == case.message.message_id
    if case.kind is None:
        assert result.ok and result.status is Status.SENDING
        assert result.provider_message_id[:2] == ("MM" if case.message.media_urls else "SM")
    else:
        assert result.error is not None and result.provider_message_id is None
        assert (result.error.kind, result.error.provider_code) == (case.kind, case.code)
        assert result.error.retry_after == case.retry_after
        assert result.error.retryable is (case.kind is ErrorKind.THROTTLED)
    log = carrier.requests()
    if case.logged is None:
        assert log == []
    else:
        (row,) = log
        assert {k: row[k] for k in case.logged} == case.logged
        if result.ok:
            assert row["provider_sid"] == result.provider_message_id


async def test_connection_refused_is_connection_failed(sms_adapter) -> None:
    creds = ProviderCredentials("twilio", SID, TOKEN, base_url=f"http://127.0.0.1:{closed_port()}")
    (result,) = await sms_adapter.send_batch(creds, [message()])
    assert result.error is not None and result.error.kind is ErrorKind.CONNECTION_FAILED
    assert result.error.retryable


async def test_a_batch_is_sent_concurrently_once_each_in_order(carrier) -> None:
    adapter = TwilioSmsAdapter(concurrency=16)
    try:
        batch = [message(f"b-{i}", to=f"+1555{i:07d}") for i in range(300)]
        results = await adapter.send_batch(creds_for(carrier), batch)
    finally:
        await adapter.close()
    assert [r.message_id for r in results] == [m.message_id for m in batch]
    assert all(r.ok for r in results)
    logged = [row["message_id"] for row in carrier.requests()]
    assert sorted(logged) == sorted(m.message_id for m in batch)  # each exactly once


async def test_base_url_and_client_reuse(carrier, monkeypatch) -> None:
    monkeypatch.setenv("TWILIO_REGION", "au1")  # must not reroute a base_url account
    transport = TwilioTransport()
    adapter = TwilioSmsAdapter(transport)
    try:
        creds = creds_for(carrier)
        account = transport.accounts.get(creds)
        assert account.client.api.base_url == carrier.url and account.client.region is None
        assert str(account.urls["Messages"]) == (
            f"{carrier.url}/2010-04-01/Accounts/{SID}/Messages.json")
        assert transport.accounts.get(creds) is account
        assert transport.accounts.get(creds_for(carrier, "rotated")) is not account
        assert (await adapter.send(creds, message())).ok
    finally:
        await adapter.close()


# --- reconciliation ---------------------------------------------------------------------------


async def test_lookup_and_in_doubt_reconciliation(carrier, sms_adapter) -> None:
    creds = creds_for(carrier)
    carrier.configure(latency=0.0)
    sent = await sms_adapter.send(creds, message("m-look"))
    update = await sms_adapter.lookup(creds, sent.provider_message_id, message_id="m-look")
    assert update is not None and update.status is Status.DELIVERED
    assert update.event_key == f"{sent.provider_message_id}:delivered:"
    assert await sms_adapter.lookup(creds, "SM" + "0" * 32) is None

    since = datetime.now(UTC)
    carrier.configure(hang_rate=1.0)
    hung = await sms_adapter.send(creds, message("m-doubt", body="Are you in?"))
    assert hung.error is not None and hung.error.kind is ErrorKind.IN_DOUBT
    carrier.configure(hang_rate=0.0)
    found = await sms_adapter.find_sent(creds, message("m-doubt", body="Are you in?"), since)
    (row,) = [r for r in carrier.requests() if r["message_id"] == "m-doubt"]
    assert found is not None and found.provider_message_id == row["provider_sid"]
    assert found.message_id == "m-doubt"
    assert await sms_adapter.find_sent(creds, message(body="never sent"), since) is None
    await sms_adapter.send(creds, message("m-twin", body="Are you in?"))
    with pytest.raises(LookupFailed) as ambiguous:  # two identical texts: never guess
        await sms_adapter.find_sent(creds, message("m-doubt", body="Are you in?"), since)
    assert ambiguous.value.error.kind is ErrorKind.IN_DOUBT

    carrier.configure(accounts={SID: "other"})
    with pytest.raises(LookupFailed) as failed:
        await sms_adapter.lookup(creds, sent.provider_message_id)
    assert failed.value.error.kind is ErrorKind.CONFIG_INVALID


# --- callbacks end to end: the carrier's webhooks through our parsers ---------------------------


async def test_carrier_callbacks_parse_and_verify(carrier, sms_adapter, voice_adapter) -> None:
    async with Receiver() as receiver:
        creds = creds_for(carrier)
        url = receiver.url("/v1/providers/twilio/sms/status?tenant=t1")
        await sms_adapter.send(creds, message("m-cb", status_callback_url=url))
        hits = await receiver.wait_for(2)
        updates = []
        for hit in hits:
            signature = hit.headers["X-Twilio-Signature"]
            assert twilio_signature.valid(TOKEN, hit.url, hit.form, signature)
            assert not twilio_signature.valid("wrong", hit.url, hit.form, signature)
            updates.append(parse_status_callback(hit.form, hit.query))
        assert [u.status for u in updates] == [Status.SENT, Status.DELIVERED]
        assert {u.message_id for u in updates} == {"m-cb"}

        receiver.hits.clear()
        carrier.configure(call_duration_s=0.01)
        call = message("v-cb", channel="voice", voice=VoiceScript(say="Hi"),
                       status_callback_url=receiver.url("/voice"))
        await voice_adapter.send(creds, call)
        hits = await receiver.wait_for(4)
        calls = [parse_call_status(h.form, h.query) for h in hits]
        assert [c.status for c in calls] == [Status.SENDING, Status.SENDING, Status.SENT,
                                             Status.DELIVERED]
        assert len({c.event_key for c in calls}) == 4 and {c.message_id for c in calls} == {
            "v-cb"}
        assert all(twilio_signature.valid(TOKEN, h.url, h.form, h.headers["X-Twilio-Signature"])
                   for h in hits)


# --- voice: the table -------------------------------------------------------------------------


@dataclass(frozen=True)
class CallCase:
    name: str
    message: OutboundMessage
    verbs: list[tuple[str, str, dict[str, str]]] | None  # (tag, text, attributes) or refused
    amd: str | None = None
    kind: ErrorKind | None = None
    code: str | None = None


def call(mid: str, voice: VoiceScript | None = None, **kw: Any) -> OutboundMessage:
    return message(mid, channel="voice", body=kw.pop("body", ""), voice=voice, **kw)


CALL_CASES = [
    CallCase("say", call("c-say", VoiceScript(say="Your table is ready", voice="Polly.Joanna",
                                              language="en-US")),
             [("Say", "Your table is ready", {"voice": "Polly.Joanna", "language": "en-US"})]),
    CallCase("play", call("c-play", VoiceScript(play_url="https://cdn.example/msg.mp3")),
             [("Play", "https://cdn.example/msg.mp3", {})]),
    # No inline TwiML: Twilio asks the hub's route (beside the status callback) once AMD has
    # decided, and the route answers per AnsweredBy (test_voicemail_twiml_per_answerer).
    CallCase("voicemail_drop", call("c-amd", VoiceScript(say="Hi, it's Acme",
                                                         voicemail_say="Sorry we missed you")),
             [], amd="DetectMessageEnd"),
    CallCase("body_only", call("c-body", body="Reminder: 3pm"), [("Say", "Reminder: 3pm", {})]),
    CallCase("nothing_to_say", call("c-empty"), None, kind=ErrorKind.MESSAGE_INVALID),
    CallCase("invalid_to", call("c-to", VoiceScript(say="x"), to="12"), None,
             kind=ErrorKind.MESSAGE_INVALID, code="21211"),
]


@pytest.mark.parametrize("case", CALL_CASES, ids=[c.name for c in CALL_CASES])
async def test_voice_call(carrier, voice_adapter, case: CallCase) -> None:
    (result,) = await voice_adapter.send_batch(creds_for(carrier), [case.message])
    log = carrier.requests()
    if case.verbs is None:
        assert result.error is not None
        assert (result.error.kind, result.error.provider_code) == (case.kind, case.code)
        assert log == []
        return
    assert result.ok and result.provider_message_id.startswith("CA")
    assert result.status is Status.SENDING
    (row,) = log
    assert row["channel"] == "voice" and row["machine_detection"] == case.amd
    assert row["status_callback_events"] == ["initiated", "ringing", "answered", "completed"]
    assert row["status_callback"] == f"{CALLBACK}&message_id={case.message.message_id}"
    if case.amd:
        assert row["twiml"] is None
        assert row["url"] == ("https://hub.example.test/v1/providers/twilio/sms/twiml"
                              f"?tenant=t1&message_id={case.message.message_id}")
    else:
        assert row["url"] is None
        root = ET.fromstring(row["twiml"])
        assert root.tag == "Response"
        assert [(v.tag, v.text, v.attrib) for v in root] == case.verbs
    update = await voice_adapter.lookup(creds_for(carrier), result.provider_message_id)
    assert update is not None and update.provider_message_id == result.provider_message_id


VOICEMAIL_SCRIPT = VoiceScript(say="Hi <Pat> & co", voice="alice", play_url="https://cdn.example/live.mp3",
                               voicemail_say="Sorry we missed you",
                               voicemail_play_url="https://cdn.example/vm.mp3")
LIVE = [("Say", "Hi <Pat> & co", {"voice": "alice"}), ("Play", "https://cdn.example/live.mp3", {})]
VOICEMAIL = [("Say", "Sorry we missed you", {"voice": "alice"}),
             ("Play", "https://cdn.example/vm.mp3", {})]


@pytest.mark.parametrize(("answered_by", "verbs"), [
    ("human", LIVE), ("unknown", LIVE), ("machine_start", LIVE),
    ("machine_end_beep", VOICEMAIL), ("machine_end_silence", VOICEMAIL),
    ("machine_end_other", VOICEMAIL), ("fax", [("Hangup", None, {})]),
])
def test_voicemail_twiml_per_answerer(answered_by: str, verbs: list[Any]) -> None:
    root = ET.fromstring(str(build_twiml(VOICEMAIL_SCRIPT, answered_by)))
    assert root.tag == "Response"
    assert [(v.tag, v.text, v.attrib) for v in root] == verbs


def test_a_machine_hears_say_when_there_is_no_voicemail_variant() -> None:
    root = ET.fromstring(str(build_twiml(VoiceScript(say="Hi"), "machine_end_beep")))
    assert [(v.tag, v.text) for v in root] == [("Say", "Hi")]


# --- recorded payloads ---------------------------------------------------------------------------

STATUS_EXPECTED: dict[str, tuple[Status, str | None, ErrorKind | None]] = {
    "statusStop": (Status.FAILED, "21610", ErrorKind.OPTED_OUT),
    "statusValid": (Status.DELIVERED, None, None),
    "statusRead": (Status.READ, None, None),
    "statusRateLimit": (Status.FAILED, "63018", ErrorKind.THROTTLED),
    "tmsStatusExtra": (Status.SENT, None, None),
}


@pytest.mark.parametrize("payload", PAYLOADS["twilio_form_payloads"],
                         ids=[p["name"] for p in PAYLOADS["twilio_form_payloads"]])
def test_courier_payload(payload: dict[str, Any]) -> None:
    params = payload["params"]
    signed = payload["signed_example"]
    token, url, signature = signed["auth_token"], signed["url"], signed["X-Twilio-Signature"]
    assert twilio_signature.valid(token, url, params, signature)
    assert not twilio_signature.valid(token, url, {**params, "Body": "x!"}, signature)
    if payload["kind"] == "inbound_message":
        inbound = parse_inbound(params)
        media = [v for k, v in sorted(params.items()) if k.startswith("MediaUrl")]
        assert (inbound.provider_message_id, inbound.from_, inbound.to) == (
            params["MessageSid"], params["From"], params["To"])
        assert inbound.body == params.get("Body", "")  # opaque text, never decoded
        assert list(inbound.media_urls) == media and len(media) == int(params["NumMedia"])
        assert inbound.channel == ("mms" if media else "sms")
        assert inbound.account_id == params["AccountSid"]
        return
    if payload["name"] == "statusInvalid":
        with pytest.raises(InvalidCallback):
            parse_status_callback(params, {})
        return
    status, code, kind = STATUS_EXPECTED[payload["name"]]
    update = parse_status_callback(params, {"message_id": "m-9"})
    assert (update.status, update.error_code, update.message_id) == (status, code, "m-9")
    assert update.event_key == f"{params['MessageSid']}:{params['MessageStatus']}:{code or ''}"
    error = callback_error(update)
    assert (error.kind if error else None) == kind


@pytest.mark.parametrize("sample", VOICE["samples"], ids=[s["label"] for s in VOICE["samples"]])
def test_voice_status_sample(sample: dict[str, Any]) -> None:
    params = sample["params"]
    update = parse_call_status(params, {"message_id": "v-9"})
    assert update.status is Status.DELIVERED and update.provider_status == "completed"
    assert update.occurred_at == parsedate_to_datetime(params["Timestamp"])
    assert update.event_key == f"{params['CallSid']}:{params['SequenceNumber']}:completed"
    assert update.message_id == "v-9"
    with pytest.raises(InvalidCallback):
        parse_call_status({**params, "CallStatus": "exploded"}, {})


#: Form-posted vectors: the JSON-body variant (raw_body) is used by no webhook of ours.
FORM_VECTORS = [v for v in VECTORS["vectors"] if "raw_body" not in v]


@pytest.mark.parametrize("vector", FORM_VECTORS, ids=[v["case"] for v in FORM_VECTORS])
def test_signature_vector(vector: dict[str, Any]) -> None:
    params: Any = vector.get("params") or vector.get("params_multi")
    signature = vector.get("expected_signature", vector.get("signature"))
    if isinstance(params, list):  # repeated keys, as pairs
        params = [tuple(p) for p in params]
    assert twilio_signature.valid(vector["auth_token"], vector["url"], params, signature) is \
        vector["valid"]


# --- error classification ------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "code", "kind"), [
    (401, 20003, ErrorKind.CONFIG_INVALID), (404, 20404, ErrorKind.CONFIG_INVALID),
    (400, 21606, ErrorKind.CONFIG_INVALID), (400, 21211, ErrorKind.MESSAGE_INVALID),
    (400, 21614, ErrorKind.MESSAGE_INVALID), (400, 21617, ErrorKind.MESSAGE_INVALID),
    (400, 21610, ErrorKind.OPTED_OUT), (429, 20429, ErrorKind.THROTTLED),
    (400, 21611, ErrorKind.THROTTLED), (None, 63018, ErrorKind.THROTTLED),
    (None, 30022, ErrorKind.THROTTLED), (None, 30003, ErrorKind.REJECTED),
    (None, 30005, ErrorKind.MESSAGE_INVALID), (None, 30007, ErrorKind.REJECTED),
    (500, 20500, ErrorKind.IN_DOUBT), (503, None, ErrorKind.THROTTLED),
    (401, None, ErrorKind.CONFIG_INVALID), (400, 1001, ErrorKind.REJECTED),
])
def test_classify_twilio_error(status, code, kind) -> None:
    error = classify_twilio_error(status, code, "words")
    assert error.kind is kind
    assert error.provider_code == str(code if code is not None else status)


def test_every_documented_code_has_a_safe_class() -> None:
    for code, text in ERRORS["messaging_relevant"].items():
        error = classify_twilio_error(400, code, text)
        assert error.retryable is (error.kind is ErrorKind.THROTTLED), code
    for case, kind in zip(PAYLOADS["twilio_rest_error_bodies_from_courier_mocks"][:4], (
            ErrorKind.THROTTLED, ErrorKind.OPTED_OUT, ErrorKind.REJECTED,
            ErrorKind.CONFIG_INVALID), strict=True):
        body = case["body"]
        error = classify_twilio_error(case["http_status"], body.get("code"),
                                      body.get("message") or body.get("error", ""))
        assert error.kind is kind, case


def test_callback_url_keeps_its_query() -> None:
    assert with_message_id("https://h/cb?tenant=a#x", "m/1") == "https://h/cb?tenant=a&message_id=m%2F1#x"
    assert with_message_id("https://h/cb", "m1") == "https://h/cb?message_id=m1"


# --- credentials never leak ----------------------------------------------------------------------


async def test_the_auth_token_never_reaches_logs_errors_or_reprs(carrier, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="twilio")
    sms, voice = TwilioSmsAdapter(read_timeout=0.2), TwilioVoiceAdapter(read_timeout=0.2)
    creds = creds_for(carrier)
    results = []
    try:
        results += await sms.send_batch(creds, [message("ok"), message("bad", to="12")])
        for config in ({"rate_limit_rate": 1.0}, {"server_error_rate": 1.0},
                       {"hang_rate": 1.0}, {"accounts": {SID: "x"}}):
            carrier.configure(**config)
            results.append(await sms.send(creds, message("f")))
            carrier.configure(rate_limit_rate=0, server_error_rate=0, hang_rate=0, accounts={})
        refused = ProviderCredentials("twilio", SID, TOKEN,
                                      base_url=f"http://127.0.0.1:{closed_port()}")
        results.append(await sms.send(refused, message("refused")))
        results.append(await voice.send(creds, message("v", channel="voice",
                                                       voice=VoiceScript(say="hi"))))
        sid = results[0].provider_message_id
        assert sid is not None
        await sms.lookup(creds, sid)
        carrier.configure(accounts={SID: "x"})
        with pytest.raises(LookupFailed) as failed:
            await sms.lookup(creds, sid)
    finally:
        await sms.close()
        await voice.close()
    assert {r.error.kind for r in results if r.error} >= {
        ErrorKind.MESSAGE_INVALID, ErrorKind.THROTTLED, ErrorKind.IN_DOUBT,
        ErrorKind.CONFIG_INVALID, ErrorKind.CONNECTION_FAILED}
    assert caplog.records, "the adapters and the SDK should have logged something"
    for record in caplog.records:
        text = record.getMessage() + (record.exc_text or "") + repr(record.args)
        assert TOKEN not in text, record
    assert TOKEN not in repr(results) and TOKEN not in str(failed.value)
    assert TOKEN not in repr(creds) and TOKEN not in str(creds)
    assert TOKEN not in json.dumps(carrier.requests())
