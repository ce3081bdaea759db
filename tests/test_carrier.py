"""The sandbox carrier against the real thing's contracts: response shapes from Twilio's
OpenAPI spec, callbacks checked by the vendors' own SDK validators, fault injection, the
request log's exactness and sender queueing. Real servers on loopback, nothing mocked."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import random
import statistics
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qsl

import aiohttp
import jsonschema
import pytest
from aiohttp import web
from multidict import MultiDict
from sendgrid.helpers.eventwebhook import EventWebhook
from twilio.request_validator import RequestValidator

from channels.sandbox import CarrierConfig, Latency, SandboxCarrier, run_carrier_in_thread
from tests.conftest import REFERENCE

SID = "AC" + "a1" * 16
TOKEN = "carrier-test-token"
FROM = "+15550000001"
TO = "+15551230001"
SPEC = json.loads((REFERENCE / "specs/twilio_api_v2010_messages_calls_subset.json").read_text())


# --- helpers -------------------------------------------------------------------------------


@dataclass
class Hit:
    url: str  # as requested: what Twilio signs
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    form: MultiDict[str] = field(default_factory=MultiDict)


class Receiver:
    """A webhook endpoint on loopback that keeps every POST; answers `statuses` first."""

    def __init__(self) -> None:
        self.hits: list[Hit] = []
        self.statuses: list[int] = []
        self.base = ""
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.base = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    def url(self, path: str) -> str:
        return self.base + path

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        form: MultiDict[str] = MultiDict()
        if request.content_type == "application/x-www-form-urlencoded":
            form = MultiDict(parse_qsl(body.decode(), keep_blank_values=True))
        self.hits.append(Hit(self.base + request.raw_path, request.path, dict(request.query),
                             dict(request.headers), body, form))
        return web.Response(status=self.statuses.pop(0) if self.statuses else 200)

    async def wait_for(self, n: int, path: str | None = None, timeout: float = 5.0) -> list[Hit]:
        async def enough() -> list[Hit]:
            while True:
                hits = [h for h in self.hits if path is None or h.path == path]
                if len(hits) >= n:
                    return hits
                await asyncio.sleep(0.01)

        try:
            return await asyncio.wait_for(enough(), timeout)
        except TimeoutError:
            raise AssertionError(f"expected {n} webhooks, got {len(self.hits)}") from None


async def settle(carrier: SandboxCarrier) -> None:
    """Until every callback the carrier planned has been delivered (at most 5 s)."""
    for _ in range(500):
        if not carrier.stats()["callbacks_pending"]:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the carrier's callbacks did not settle")


def basic(sid: str = SID, token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{sid}:{token}".encode()).decode()}


async def twilio_post(http: aiohttp.ClientSession, carrier: SandboxCarrier, resource: str,
                      form: list[tuple[str, str]] | dict[str, str], *, sid: str = SID,
                      token: str = TOKEN) -> tuple[int, Any, Any]:
    url = f"{carrier.url}/2010-04-01/Accounts/{sid}/{resource}.json"
    async with http.post(url, data=form, headers=basic(sid, token)) as r:
        return r.status, await r.json(), r.headers


async def twilio_get(http: aiohttp.ClientSession, carrier: SandboxCarrier, path: str) -> Any:
    async with http.get(f"{carrier.url}/2010-04-01/Accounts/{SID}/{path}",
                        headers=basic()) as r:
        assert r.status == 200, await r.text()
        return await r.json()


def sms(to: str = TO, body: str = "Hello", **extra: str) -> dict[str, str]:
    return {"To": to, "From": FROM, "Body": body, **extra}


def _openapi_to_jsonschema(node: Any) -> Any:
    """OpenAPI 3.0's `nullable` as JSON Schema's null type."""
    if isinstance(node, list):
        return [_openapi_to_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _openapi_to_jsonschema(v) for k, v in node.items()
           if k not in ("nullable", "description", "x-twilio")}
    if node.get("nullable") and "type" in node:
        out["type"] = [node["type"], "null"]
    return out


_FORMATS = jsonschema.FormatChecker()


@_FORMATS.checks("date-time-rfc-2822", raises=(TypeError, ValueError))
def _is_rfc2822(value: object) -> bool:
    return not isinstance(value, str) or parsedate_to_datetime(value) is not None


def assert_matches_spec(resource: dict[str, Any], schema_name: str) -> None:
    """Valid under the spec's schema, and carrying every property the spec defines."""
    components = _openapi_to_jsonschema(SPEC["components"])
    schema = {"$ref": f"#/components/schemas/{schema_name}", "components": components}
    jsonschema.Draft7Validator(schema, format_checker=_FORMATS).validate(resource)
    missing = set(SPEC["components"]["schemas"][schema_name]["properties"]) - set(resource)
    assert not missing, f"{schema_name} lacks {sorted(missing)}"


@pytest.fixture
async def carrier() -> Any:
    async with SandboxCarrier(CarrierConfig(seed=1234, latency=Latency(seconds=0.01))) as c:
        yield c


@pytest.fixture
async def http() -> Any:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def receiver() -> Any:
    async with Receiver() as r:
        yield r


# --- Twilio REST shapes ----------------------------------------------------------------------


async def test_message_create_fetch_and_list_match_the_spec(carrier, http) -> None:
    status, created, _ = await twilio_post(http, carrier, "Messages", sms(body="Hi there 👍"))
    assert status == 201
    assert_matches_spec(created, "api.v2010.account.message")
    assert created["status"] == "queued" and created["sid"].startswith("SM")
    assert created["num_segments"] == "1" and created["date_sent"] is None

    form = [("To", TO), ("MessagingServiceSid", "MG" + "b2" * 16), ("Body", "pic"),
            ("MediaUrl", "https://example.com/a.jpg"), ("MediaUrl", "https://example.com/b.png")]
    status, mms, _ = await twilio_post(http, carrier, "Messages", form)
    assert status == 201 and mms["sid"].startswith("MM") and mms["status"] == "accepted"
    assert mms["num_media"] == "2" and mms["from"] is None
    assert_matches_spec(mms, "api.v2010.account.message")

    await asyncio.sleep(0.05)  # past the carrier's latency: the fetch shows the outcome
    fetched = await twilio_get(http, carrier, f"Messages/{created['sid']}.json")
    assert_matches_spec(fetched, "api.v2010.account.message")
    assert fetched["status"] == "delivered" and fetched["date_sent"] is not None

    listing = await twilio_get(http, carrier, f"Messages.json?To={TO.replace('+', '%2B')}"
                                              "&PageSize=1")
    list_schema = SPEC["paths"]["/2010-04-01/Accounts/{AccountSid}/Messages.json"]["get"][
        "responses"]["200"]["content"]["application/json"]["schema"]
    jsonschema.Draft7Validator({**_openapi_to_jsonschema(list_schema),
                                "components": _openapi_to_jsonschema(SPEC["components"])}
                               ).validate(listing)
    assert [m["sid"] for m in listing["messages"]] == [mms["sid"]]  # newest first
    page2 = await twilio_get(http, carrier, listing["next_page_uri"].split(f"{SID}/", 1)[1])
    assert [m["sid"] for m in page2["messages"]] == [created["sid"]]
    assert page2["next_page_uri"] is None


async def test_call_create_and_fetch_match_the_spec(carrier, http) -> None:
    twiml = "<Response><Say>Hello</Say></Response>"
    status, call, _ = await twilio_post(http, carrier, "Calls",
                                        {"To": TO, "From": FROM, "Twiml": twiml})
    assert status == 201 and call["sid"].startswith("CA") and call["status"] == "queued"
    assert_matches_spec(call, "api.v2010.account.call")
    fetched = await twilio_get(http, carrier, f"Calls/{call['sid']}.json")
    assert_matches_spec(fetched, "api.v2010.account.call")

    carrier.configure(latency=0.0, call_duration_s=0.0)  # answered and over at once
    _, call, _ = await twilio_post(http, carrier, "Calls", {"To": TO, "From": FROM,
                                                           "Url": "https://hub/twiml"})
    done = await twilio_get(http, carrier, f"Calls/{call['sid']}.json")
    assert_matches_spec(done, "api.v2010.account.call")
    assert (done["status"], done["duration"]) == ("completed", "0")
    assert done["start_time"] and done["end_time"]


@pytest.mark.parametrize(("form", "code"), [
    ({"From": FROM, "Body": "x"}, 21604),
    (sms(to="12345"), 21211),
    ({"To": TO, "Body": "x"}, 21603),
    (sms() | {"From": "not a number!"}, 21212),
    (sms() | {"From": "+15005550007"}, 21606),  # Twilio's magic "not your number"
    (sms(to="+15005550004"), 21610),  # Twilio's magic "unsubscribed recipient"
    (sms(body=""), 21602),
    (sms(body="x" * 1601), 21617),
    ({"To": TO, "MessagingServiceSid": "MG123", "Body": "x"}, 21701),
    (sms(StatusCallback="ftp://hub/cb"), 21609),
])
async def test_invalid_messages_get_twilio_error_codes(carrier, http, form, code) -> None:
    status, body, _ = await twilio_post(http, carrier, "Messages", form)
    assert (status, body["code"], body["status"]) == (400, code, 400)
    assert body["more_info"] == f"https://www.twilio.com/docs/errors/{code}" and body["message"]
    assert carrier.requests() == []


async def test_restricted_carrier_answers_401_20003_to_unknown_credentials(carrier, http) -> None:
    carrier.configure(accounts={SID: "the-real-token"})
    status, body, _ = await twilio_post(http, carrier, "Messages", sms(), token="wrong")
    assert status == 401
    assert body == {"code": 20003, "message": "Authenticate", "status": 401,
                    "more_info": "https://www.twilio.com/docs/errors/20003"}
    status, _, _ = await twilio_post(http, carrier, "Messages", sms(), token="the-real-token")
    assert status == 201
    assert len(carrier.requests()) == 1
    assert "the-real-token" not in json.dumps(carrier.config.to_json())


# --- Twilio callbacks ------------------------------------------------------------------------


@pytest.mark.parametrize(("config", "statuses", "codes"), [
    ({}, ["sent", "delivered"], set()),
    ({"undelivered_rate": 1.0}, ["sent", "undelivered"], {30003, 30005, 30006, 30007}),
    ({"failed_rate": 1.0, "failed_codes": [21610]}, ["failed"], {21610}),
])
async def test_message_status_callbacks_are_twilios_signed_forms(
        carrier, http, receiver, config, statuses, codes) -> None:
    carrier.configure(**config)
    callback = receiver.url("/v1/providers/twilio/sms/status?tenant=acme&message_id=m-1")
    _, created, _ = await twilio_post(http, carrier, "Messages", sms(StatusCallback=callback))
    hits = await receiver.wait_for(len(statuses))
    assert [h.form["MessageStatus"] for h in hits] == statuses
    for hit in hits:
        assert RequestValidator(TOKEN).validate(hit.url, hit.form,
                                                hit.headers["X-Twilio-Signature"])
        assert hit.query["message_id"] == "m-1"
        assert hit.form["MessageSid"] == hit.form["SmsSid"] == created["sid"]
        assert hit.form["SmsStatus"] == hit.form["MessageStatus"]
        assert (hit.form["AccountSid"], hit.form["From"], hit.form["To"]) == (SID, FROM, TO)
        assert hit.form["ApiVersion"] == "2010-04-01"
    final = hits[-1].form
    assert ("ErrorCode" in final) == bool(codes)
    if codes:
        assert int(final["ErrorCode"]) in codes
    assert not RequestValidator("another-token").validate(
        hits[0].url, hits[0].form, hits[0].headers["X-Twilio-Signature"])


async def test_voice_status_callbacks_follow_the_call(carrier, http, receiver) -> None:
    carrier.configure(machine_rate=1.0, call_duration_s=0.02)
    form = [("To", TO), ("From", FROM), ("Twiml", "<Response><Say>Hi</Say></Response>"),
            ("StatusCallback", receiver.url("/voice?message_id=v-1")),
            ("MachineDetection", "DetectMessageEnd"),
            *[("StatusCallbackEvent", e) for e in ("initiated", "ringing", "answered",
                                                    "completed")]]
    _, call, _ = await twilio_post(http, carrier, "Calls", form)
    hits = await receiver.wait_for(4)
    assert [h.form["CallStatus"] for h in hits] == ["initiated", "ringing", "in-progress",
                                                    "completed"]
    assert [h.form["SequenceNumber"] for h in hits] == ["0", "1", "2", "3"]
    for hit in hits:
        assert RequestValidator(TOKEN).validate(hit.url, hit.form,
                                                hit.headers["X-Twilio-Signature"])
        assert hit.form["CallSid"] == call["sid"] and hit.form["Direction"] == "outbound-api"
        assert hit.form["CallbackSource"] == "call-progress-events"
        assert parsedate_to_datetime(hit.form["Timestamp"]) is not None
    assert hits[-1].form["AnsweredBy"] == "machine_end_beep"
    assert int(hits[-1].form["CallDuration"]) >= 1

    carrier.configure(busy_rate=1.0)  # no StatusCallbackEvent: Twilio sends completed only
    await twilio_post(http, carrier, "Calls", {"To": TO, "From": FROM, "Url": "https://x/t",
                                               "StatusCallback": receiver.url("/busy")})
    busy = await receiver.wait_for(1, "/busy")
    assert busy[0].form["CallStatus"] == "busy" and busy[0].form["CallDuration"] == "0"


async def test_duplicate_and_out_of_order_rates_do_what_they_say(carrier, http,
                                                                 receiver) -> None:
    carrier.configure(duplicate_rate=1.0)
    for i in range(3):
        await twilio_post(http, carrier, "Messages", sms(StatusCallback=receiver.url(f"/d{i}")))
    hits = await receiver.wait_for(12)
    per_event = Counter((h.form["MessageSid"], h.form["MessageStatus"]) for h in hits)
    assert len(per_event) == 6 and set(per_event.values()) == {2}
    for i in range(3):  # a duplicate is the same request again, signature included
        mine = [h for h in hits if h.path == f"/d{i}"]
        assert mine[0].body == mine[1].body and mine[2].body == mine[3].body
        assert (mine[0].headers["X-Twilio-Signature"]
                == mine[1].headers["X-Twilio-Signature"])

    receiver.hits.clear()
    carrier.configure(duplicate_rate=0.0, out_of_order_rate=1.0)
    for i in range(3):
        await twilio_post(http, carrier, "Messages", sms(StatusCallback=receiver.url(f"/o{i}")))
    hits = await receiver.wait_for(6)
    for i in range(3):
        assert [h.form["MessageStatus"] for h in hits if h.path == f"/o{i}"] == [
            "delivered", "sent"]

    receiver.hits.clear()
    carrier.configure(out_of_order_rate=0.0, duplicate_rate=0.5, seed=7)
    for _ in range(40):
        await twilio_post(http, carrier, "Messages", sms(StatusCallback=receiver.url("/h")))
    await settle(carrier)
    extra = len(receiver.hits) - 80
    assert 20 <= extra <= 60, extra  # half of 80 callbacks duplicated, give or take


async def test_callbacks_are_retried_after_a_5xx(carrier, http, receiver) -> None:
    carrier.configure(callback_retry_delay_s=0.01)
    receiver.statuses = [503]
    await twilio_post(http, carrier, "Messages", sms(StatusCallback=receiver.url("/r")))
    hits = await receiver.wait_for(3)
    assert [h.form["MessageStatus"] for h in hits] == ["sent", "sent", "delivered"]
    assert carrier.stats()["callbacks.retried"] == 1


# --- faults and the request log ----------------------------------------------------------------


async def test_429_5xx_and_hang_and_the_log_counts_exactly_the_accepted(carrier, http) -> None:
    carrier.configure(rate_limit_rate=1.0, retry_after_s=2)
    status, body, headers = await twilio_post(http, carrier, "Messages", sms())
    assert (status, body["code"], headers["Retry-After"]) == (429, 20429, "2")

    carrier.configure(rate_limit_rate=0.0, server_error_rate=1.0)
    status, body, _ = await twilio_post(http, carrier, "Messages", sms())
    assert (status, body["code"]) in ((500, 20500), (503, 20503))
    assert carrier.requests() == []

    carrier.configure(server_error_rate=0.0, hang_rate=1.0)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.5)) as impatient:
        with pytest.raises(asyncio.TimeoutError):
            await twilio_post(impatient, carrier, "Messages",
                              sms(StatusCallback="http://h/cb?message_id=h1"))
        (hung,) = carrier.requests()
        assert hung["hung"] and hung["message_id"] == "h1"

        carrier.clear()
        carrier.configure(seed=5, rate_limit_rate=0.2, server_error_rate=0.2, hang_rate=0.25)
        outcomes = await asyncio.gather(
            *(twilio_post(impatient, carrier, "Messages", sms(body=f"m{i}")) for i in range(60)),
            return_exceptions=True)
    timeouts = sum(isinstance(o, asyncio.TimeoutError) for o in outcomes)
    statuses = Counter(o[0] for o in outcomes if isinstance(o, tuple))
    log = carrier.requests()
    assert timeouts and statuses[201] and statuses[429] and (statuses[500] + statuses[503])
    assert len(log) == statuses[201] + timeouts
    assert sum(r["hung"] for r in log) == timeouts
    stats = carrier.stats()
    assert stats["accepted"]["total"] == len(log)
    assert stats["rejected"]["total"] == statuses[429] + statuses[500] + statuses[503]


async def test_request_log_endpoint_pages_and_clears(carrier, http) -> None:
    for i in range(5):
        await twilio_post(http, carrier, "Messages", sms(body=f"b{i}"))
    async with http.get(f"{carrier.url}/sandbox/requests?since=1&limit=2") as r:
        page = await r.json()
    assert [row["body"] for row in page["requests"]] == ["b1", "b2"]
    assert (page["next_since"], page["total"]) == (3, 5)
    async with http.delete(f"{carrier.url}/sandbox/requests") as r:
        assert r.status == 204
    async with http.get(f"{carrier.url}/sandbox/stats") as r:
        assert (await r.json())["accepted"]["total"] == 0


async def test_config_endpoint_validates_and_applies(carrier, http) -> None:
    async with http.post(f"{carrier.url}/sandbox/config", json={
            "latency": {"kind": "lognormal", "median": 0.2, "p99": 2.0}, "mps": 10}) as r:
        assert r.status == 200 and (await r.json())["latency"]["kind"] == "lognormal"
    for bad in ({"nope": 1}, {"hang_rate": 2}, {"latency": {"kind": "uniform", "min": 3,
                                                            "max": 1}}):
        async with http.post(f"{carrier.url}/sandbox/config", json=bad) as r:
            assert r.status == 400
    assert carrier.config.mps == 10.0


def test_latency_distributions_have_the_configured_shape() -> None:
    rng = random.Random(3)
    assert Latency(seconds=0.25).sample(rng) == 0.25
    uniform = [Latency(kind="uniform", min=1.0, max=2.0).sample(rng) for _ in range(500)]
    assert 1.0 <= min(uniform) and max(uniform) <= 2.0
    lognormal = sorted(Latency(kind="lognormal", median=0.5, p99=3.0).sample(rng)
                       for _ in range(4000))
    assert statistics.median(lognormal) == pytest.approx(0.5, rel=0.1)
    assert lognormal[int(0.99 * len(lognormal))] == pytest.approx(3.0, rel=0.25)


# --- sender queues -----------------------------------------------------------------------------


async def test_sends_beyond_a_numbers_mps_are_queued_at_that_rate(carrier, http) -> None:
    carrier.configure(mps_by_sender={FROM: 20.0})
    other = {"To": TO, "From": "+15550000002", "Body": "unthrottled"}
    results = await asyncio.gather(
        *(twilio_post(http, carrier, "Messages", sms(body=f"q{i}")) for i in range(10)),
        twilio_post(http, carrier, "Messages", other))
    assert all(status == 201 for status, _, _ in results)
    log = carrier.requests()
    queued = sorted(r["sent_at"] for r in log if r["from"] == FROM)
    gaps = [b - a for a, b in itertools.pairwise(queued)]
    assert gaps == pytest.approx([0.05] * 9, abs=1e-6)
    assert queued[0] >= min(r["time"] for r in log if r["from"] == FROM)
    (free,) = [r for r in log if r["from"] == "+15550000002"]
    assert free["sent_at"] == free["time"]


@pytest.mark.parametrize("overflow", ["429", "30022"])
async def test_a_full_sender_queue_refuses_or_fails(carrier, http, overflow) -> None:
    carrier.configure(mps=1.0, queue_limit=3, queue_overflow=overflow)
    answers = [await twilio_post(http, carrier, "Messages", sms(body=f"q{i}")) for i in range(6)]
    if overflow == "429":
        assert [a[0] for a in answers] == [201] * 3 + [429] * 3
        assert {a[1]["code"] for a in answers[3:]} == {20429}
        assert all(int(a[2]["Retry-After"]) >= 1 for a in answers[3:])
        assert len(carrier.requests()) == 3
    else:
        assert [a[0] for a in answers] == [201] * 6
        failed = [r for r in carrier.requests() if r["error_code"] == 30022]
        assert len(failed) == 3 and {r["outcome"] for r in failed} == {"failed"}


# --- two-way SMS ---------------------------------------------------------------------------------


async def test_inbound_webhook_is_signed_for_the_numbers_account(carrier, http,
                                                                receiver) -> None:
    carrier.configure(inbound_url=receiver.url("/inbound?tenant=acme"))
    await twilio_post(http, carrier, "Messages", sms())  # FROM now belongs to SID
    async with http.post(f"{carrier.url}/sandbox/inbound", json={
            "from": TO, "to": FROM, "body": "STOP",
            "media_urls": ["https://example.com/cat.jpg"]}) as r:
        answer = await r.json()
    assert answer["status"] == 200 and answer["account_sid"] == SID
    (hit,) = await receiver.wait_for(1)
    assert RequestValidator(TOKEN).validate(hit.url, hit.form, hit.headers["X-Twilio-Signature"])
    form = hit.form
    assert (form["From"], form["To"], form["Body"], form["AccountSid"]) == (TO, FROM, "STOP", SID)
    assert form["MessageSid"] == form["SmsMessageSid"] == answer["sid"]
    assert (form["NumMedia"], form["MediaUrl0"], form["SmsStatus"]) == (
        "1", "https://example.com/cat.jpg", "received")

    status, body, _ = await twilio_post(http, carrier, "Messages", sms())
    assert (status, body["code"]) == (400, 21610)  # Twilio honours the STOP
    async with http.post(f"{carrier.url}/sandbox/inbound",
                         json={"from": TO, "to": FROM, "body": "start"}) as r:
        assert r.status == 200
    status, _, _ = await twilio_post(http, carrier, "Messages", sms())
    assert status == 201

    async with http.post(f"{carrier.url}/sandbox/inbound",
                         json={"from": TO, "to": "+15559999999", "body": "hi"}) as r:
        assert (await r.json())["account_sid"] == carrier.config.default_account_sid
    last = (await receiver.wait_for(3))[-1]
    assert RequestValidator(carrier.config.default_auth_token).validate(
        last.url, last.form, last.headers["X-Twilio-Signature"])


async def test_recipients_reply_at_the_configured_rate(carrier, http, receiver) -> None:
    carrier.configure(inbound_url=receiver.url("/inbound"), reply_rate=1.0,
                      reply_bodies=["Yes please"])
    await twilio_post(http, carrier, "Messages", sms())
    (reply,) = await receiver.wait_for(1, "/inbound")
    assert (reply.form["From"], reply.form["To"], reply.form["Body"]) == (TO, FROM, "Yes please")
    assert RequestValidator(TOKEN).validate(reply.url, reply.form,
                                            reply.headers["X-Twilio-Signature"])


# --- SendGrid ----------------------------------------------------------------------------------

MAIL = {
    "personalizations": [
        {"to": [{"email": "ann@example.com"}, {"email": "bob@example.com"}],
         "custom_args": {"message_id": "e-1"}, "substitutions": {"-name-": "Ann"}},
        {"to": [{"email": "cy@example.com"}], "cc": [{"email": "dee@example.com"}],
         "subject": "Own subject", "custom_args": {"message_id": "e-2"}},
    ],
    "from": {"email": "news@acme.example", "name": "Acme"},
    "subject": "Hello -name-",
    "content": [{"type": "text/plain", "value": "Hi -name-, https://acme.example/x"}],
    "headers": {"List-Unsubscribe": "<https://hub.example/u/1>"},
    "custom_args": {"campaign": "c-9"},
}


async def test_sendgrid_mail_send_logs_each_recipient_and_posts_signed_events(
        carrier, http, receiver) -> None:
    carrier.configure(sendgrid_event_url=receiver.url("/v1/providers/sendgrid/events"),
                      sendgrid_batch_interval_s=0.02)
    async with http.post(f"{carrier.url}/v3/mail/send", json=MAIL,
                         headers={"Authorization": "Bearer SG.test-key"}) as r:
        assert r.status == 202 and await r.read() == b""
        x_message_id = r.headers["X-Message-Id"]
    log = carrier.requests(channel="email")
    assert [(r["to"], r["message_id"], r["subject"]) for r in log] == [
        ("ann@example.com", "e-1", "Hello Ann"), ("bob@example.com", "e-1", "Hello Ann"),
        ("cy@example.com", "e-2", "Own subject"), ("dee@example.com", "e-2", "Own subject")]
    assert log[0]["body"] == "Hi Ann, https://acme.example/x"
    assert log[0]["headers"]["List-Unsubscribe"] == "<https://hub.example/u/1>"
    assert all(r["x_message_id"] == x_message_id for r in log)
    assert "SG.test-key" not in json.dumps(log)

    async with http.get(f"{carrier.url}/sandbox/sendgrid/public-key") as r:
        verifier = EventWebhook((await r.json())["public_key"])
    events: list[dict[str, Any]] = []
    while len(events) < 8:
        hits = await receiver.wait_for(1)
        events = []
        for hit in hits:
            assert verifier.verify_signature(
                hit.body.decode(), hit.headers["X-Twilio-Email-Event-Webhook-Signature"],
                hit.headers["X-Twilio-Email-Event-Webhook-Timestamp"])
            events += json.loads(hit.body)
        await asyncio.sleep(0.02)
    assert Counter(e["event"] for e in events) == {"processed": 4, "delivered": 4}
    by_sid = {r["provider_sid"]: r for r in log}
    for event in events:
        row = by_sid[event["sg_message_id"]]
        assert (event["email"], event["message_id"], event["campaign"]) == (
            row["to"], row["message_id"], "c-9")
        assert event["sg_event_id"] and isinstance(event["timestamp"], int)
    tampered = hits[0].body.replace(b"processed", b"delivered")
    assert not verifier.verify_signature(
        tampered.decode(), hits[0].headers["X-Twilio-Email-Event-Webhook-Signature"],
        hits[0].headers["X-Twilio-Email-Event-Webhook-Timestamp"])


@pytest.mark.parametrize(("change", "field"), [
    ({"personalizations": []}, "personalizations"),
    ({"personalizations": [{"to": [{"email": "x@y.z"}]}] * 1001}, "personalizations"),
    ({"personalizations": [{"to": [{"email": "not-an-address"}]}]},
     "personalizations.0.to.0.email"),
    ({"from": None}, "from.email"),
    ({"subject": None}, "subject"),
    ({"content": None}, "content"),
    ({"custom_args": {"n": 1}}, "custom_args"),
])
async def test_sendgrid_refuses_invalid_bodies_in_its_error_shape(carrier, http, change,
                                                                  field) -> None:
    mail = {**MAIL, **change}
    async with http.post(f"{carrier.url}/v3/mail/send", json=mail,
                         headers={"Authorization": "Bearer SG.k"}) as r:
        assert r.status == 400
        errors = (await r.json())["errors"]
    assert field in [e["field"] for e in errors]
    assert all(set(e) == {"message", "field", "help"} and e["message"] for e in errors)
    assert carrier.requests() == []


async def test_sendgrid_wants_a_bearer_key(carrier, http) -> None:
    async with http.post(f"{carrier.url}/v3/mail/send", json=MAIL) as r:
        assert r.status == 401
        assert (await r.json())["errors"][0]["message"] == "authorization required"
    carrier.configure(sendgrid_api_keys=["SG.good"])
    async with http.post(f"{carrier.url}/v3/mail/send", json=MAIL,
                         headers={"Authorization": "Bearer SG.bad"}) as r:
        assert r.status == 401


# --- other ways to run it ------------------------------------------------------------------------


def test_carrier_in_a_thread_serves_sync_callers() -> None:
    handle = run_carrier_in_thread(CarrierConfig(callbacks_enabled=False))
    try:
        request = urllib.request.Request(
            f"{handle.url}/2010-04-01/Accounts/{SID}/Messages.json",
            data=b"To=%2B15551230001&From=%2B15550000001&Body=sync", headers=basic())
        with urllib.request.urlopen(request, timeout=5) as r:
            assert r.status == 201
        handle.configure(hang_rate=0.0)
        with urllib.request.urlopen(f"{handle.url}/sandbox/requests", timeout=5) as r:
            assert [row["body"] for row in json.load(r)["requests"]] == ["sync"]
    finally:
        handle.stop()
