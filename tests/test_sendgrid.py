"""The SendGrid adapter: the mail/send body against the real v3 schema, batching and the
round trip against a small server that answers as SendGrid does, every response code,
every real Event Webhook sample, and the official ECDSA vector with its negatives."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import secrets
import socket
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import jsonschema
import pytest
from aiohttp import web

from channels.base import (
    EngagementEvent,
    ErrorKind,
    InboundMessage,
    OutboundMessage,
    ProviderCredentials,
    StatusUpdate,
    SuppressionEvent,
)
from channels.sendgrid import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    SendGridAdapter,
    build_mail_body,
    classify_sendgrid_response,
    parse_events,
    verify_event_signature,
)
from hub.status import Status
from tests.conftest import REFERENCE

SPEC = json.loads((REFERENCE / "specs" / "sendgrid_tsg_mail_v3.json").read_text())
SAMPLES = json.loads(
    (REFERENCE / "payloads" / "sendgrid_event_webhook_samples.json").read_text())
API_KEY = "SG.test-key-" + "k" * 20
RELEASE = web.AppKey("release", asyncio.Event)


def _resolve(node: Any) -> Any:
    """The spec's schema with every local $ref inlined (the mail/send schema has no cycles)."""
    if isinstance(node, dict):
        if "$ref" in node:
            target: Any = SPEC
            for part in node["$ref"].lstrip("#/").split("/"):
                target = target[part]
            return _resolve(target)
        return {k: _resolve(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(v) for v in node]
    return node


MAIL_SEND_SCHEMA = _resolve(
    SPEC["components"]["requestBodies"]["PostMailSend"]["content"]["application/json"]["schema"])
VALIDATOR = jsonschema.Draft7Validator(MAIL_SEND_SCHEMA)


def msg(mid: str, to: str | None = None, **kw: Any) -> OutboundMessage:
    base: dict[str, Any] = dict(message_id=mid, channel="email", to=to or f"{mid}@example.org",
                                from_="news@acme.test", from_name="Acme", subject="Hi -name-",
                                body="Hello -name-", html="<p>Hello -name-</p>")
    return OutboundMessage(**{**base, **kw})


# ---------------------------------------------------------------- the request body


def test_body_matches_the_mail_send_schema() -> None:
    messages = [
        msg("m1", substitutions={"-name-": "Ada"}, custom_args={"campaign": "c9"},
            unsubscribe_url="https://hub.test/u/m1"),
        msg("m2", substitutions={"-name-": "Grace"}, unsubscribe_url="https://hub.test/u/m2"),
        msg("m3", custom_args={"message_id": "spoofed"}),
    ]
    body = build_mail_body(messages, unsubscribe_mailto="unsub@acme.test")
    VALIDATOR.validate(body)
    assert body["from"] == {"email": "news@acme.test", "name": "Acme"}
    assert body["subject"] == "Hi -name-"
    assert [c["type"] for c in body["content"]] == ["text/plain", "text/html"]
    p1, p2, p3 = body["personalizations"]
    assert [p["to"] for p in (p1, p2, p3)] == [[{"email": f"m{i}@example.org"}] for i in (1, 2, 3)]
    assert p1["custom_args"] == {"campaign": "c9", "message_id": "m1"}
    assert p3["custom_args"] == {"message_id": "m3"}  # our id always wins
    assert p1["substitutions"] == {"-name-": "Ada"} and p2["substitutions"] == {"-name-": "Grace"}
    assert p1["headers"] == {
        "List-Unsubscribe": "<https://hub.test/u/m1>, "
                            "<mailto:unsub@acme.test?subject=unsubscribe%20m1>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }
    assert p2["headers"]["List-Unsubscribe"].startswith("<https://hub.test/u/m2>")
    assert "headers" not in p3  # transactional: no unsubscribe headers


def test_body_holds_at_most_1000_personalizations() -> None:
    body = build_mail_body([msg(f"m{i}") for i in range(1000)])
    VALIDATOR.validate(body)
    assert len(body["personalizations"]) == 1000
    with pytest.raises(ValueError):
        build_mail_body([msg(f"m{i}") for i in range(1001)])
    too_many = {**body, "personalizations": body["personalizations"] * 2}
    assert not VALIDATOR.is_valid(too_many)  # the schema agrees on the limit


# ---------------------------------------------------------------- classification


def _spec_example(status: int) -> dict[str, Any]:
    response = SPEC["components"]["responses"][f"PostMailSend{status}"]
    example: dict[str, Any] = next(
        iter(response["content"]["application/json"]["examples"].values()))["value"]
    return example


NOW = 1_700_000_000.0


@pytest.mark.parametrize(("status", "body", "headers", "kind", "retry_after"), [
    (202, b"", {"X-Message-Id": "abc"}, None, None),
    (200, b"", {}, None, None),  # sandbox_mode
    (400, _spec_example(400), {}, ErrorKind.MESSAGE_INVALID, None),
    (401, _spec_example(401), {}, ErrorKind.CONFIG_INVALID, None),
    (403, _spec_example(403), {}, ErrorKind.CONFIG_INVALID, None),
    (404, _spec_example(404), {}, ErrorKind.CONFIG_INVALID, None),
    (405, _spec_example(405), {}, ErrorKind.CONFIG_INVALID, None),
    (413, _spec_example(413), {}, ErrorKind.MESSAGE_INVALID, None),
    (429, {"errors": [{"message": "too many requests"}]},
     {"X-RateLimit-Limit": "600", "X-RateLimit-Remaining": "0",
      "X-RateLimit-Reset": str(int(NOW) + 42)}, ErrorKind.THROTTLED, 42.0),
    (429, b"", {"retry-after": "12"}, ErrorKind.THROTTLED, 12.0),
    (429, b"", {"X-RateLimit-Reset": str(int(NOW) - 5)}, ErrorKind.THROTTLED, 1.0),
    (429, b"", {}, ErrorKind.THROTTLED, 5.0),
    (500, _spec_example(500), {}, ErrorKind.THROTTLED, 30.0),
    (503, b"", {"Retry-After": "7"}, ErrorKind.THROTTLED, 7.0),
    (502, b"<html>Bad Gateway</html>", {}, ErrorKind.IN_DOUBT, None),
    (504, b"", {}, ErrorKind.IN_DOUBT, None),
    (418, b"", {}, ErrorKind.REJECTED, None),
])
def test_classify_response(status: int, body: Any, headers: Mapping[str, str],
                           kind: ErrorKind | None, retry_after: float | None) -> None:
    raw = json.dumps(body).encode() if isinstance(body, dict) else body
    error = classify_sendgrid_response(status, raw, headers, now=NOW)
    if kind is None:
        assert error is None
        return
    assert error is not None
    assert (error.kind, error.provider_code, error.retry_after) == (kind, str(status),
                                                                    retry_after)
    if isinstance(body, dict):
        assert body["errors"][0]["message"] in error.message  # SendGrid's words reach us


def test_classify_400_keeps_the_field() -> None:
    body = {"errors": [{"message": "Does not contain a valid address.",
                        "field": "personalizations.0.to.0.email",
                        "help": "http://sendgrid.com/docs/API_Reference/Web_API_v3/Mail/"
                                "errors.html#message.personalizations.to"}]}
    error = classify_sendgrid_response(400, json.dumps(body), {})
    assert error is not None
    assert error.message == "personalizations.0.to.0.email: Does not contain a valid address."


# ---------------------------------------------------------------- a SendGrid stand-in


@dataclass
class Request:
    mode: str
    authorization: str
    body: dict[str, Any]
    on_behalf_of: str | None = None
    x_message_id: str | None = None

    @property
    def message_ids(self) -> list[str]:
        return [p["custom_args"]["message_id"] for p in self.body["personalizations"]]


@dataclass
class FakeSendGrid:
    """POST /{mode}/v3/mail/send answering per the v3 spec: 202 + X-Message-Id for a body
    that passes the published schema and SendGrid's address check, else 400 with
    {"errors": [{message, field, help}]}; the other modes answer 401/403/413/429/500/502
    or hang. Every request is logged."""

    base_url: str = ""
    requests: list[Request] = field(default_factory=list)

    def url(self, mode: str) -> str:
        return f"{self.base_url}/{mode}"

    def accepted(self, mode: str = "ok") -> list[Request]:
        return [r for r in self.requests if r.mode == mode and r.x_message_id]

    async def handle(self, request: web.Request) -> web.Response:
        mode = request.match_info["mode"]
        body = json.loads(await request.read())
        entry = Request(mode, request.headers.get("Authorization", ""), body,
                        request.headers.get("on-behalf-of"))
        self.requests.append(entry)
        if mode == "hang":
            await request.app[RELEASE].wait()
        fixed = {
            "401": (401, "The provided authorization grant is invalid, expired, or revoked"),
            "403": (403, "access forbidden"),
            "413": (413, "content too large"),
            "429": (429, "too many requests"),
            "500": (500, "internal server error"),
        }
        if mode in fixed:
            status, message = fixed[mode]
            headers = {"X-RateLimit-Reset": str(int(time.time()) + 60)} if status == 429 else {}
            return _errors(status, [(message, None)], headers)
        if mode == "502":
            return web.Response(status=502, text="<html>502 Bad Gateway</html>")
        if entry.authorization != f"Bearer {API_KEY}":
            return _errors(401, [("authorization required", None)])
        problems: list[tuple[str, str | None]] = [
            (e.message, ".".join(str(p) for p in e.absolute_path))
            for e in VALIDATOR.iter_errors(body)]
        problems += _address_problems(body)
        if problems:
            return _errors(400, problems)
        entry.x_message_id = secrets.token_urlsafe(16)[:22]
        return web.Response(status=202, headers={"X-Message-Id": entry.x_message_id})


def _address_problems(body: dict[str, Any]) -> list[tuple[str, str | None]]:
    valid = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s.]+")
    problems: list[tuple[str, str | None]] = []
    if not valid.fullmatch(body.get("from", {}).get("email", "")):
        problems.append(("The from email does not contain a valid address.", "from.email"))
    for i, p in enumerate(body.get("personalizations", [])):
        for j, to in enumerate(p.get("to", [])):
            if not valid.fullmatch(to.get("email", "")):
                problems.append(("Does not contain a valid address.",
                                 f"personalizations.{i}.to.{j}.email"))
    return problems


def _errors(status: int, problems: list[tuple[str, str | None]],
            headers: dict[str, str] | None = None) -> web.Response:
    errors = [{"message": m, "field": f, "help": None} for m, f in problems]
    return web.json_response({"errors": errors}, status=status, headers=headers)


@pytest.fixture(scope="module")
async def sendgrid() -> AsyncIterator[FakeSendGrid]:
    fake = FakeSendGrid()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[RELEASE] = asyncio.Event()
    app.router.add_post("/{mode}/v3/mail/send", fake.handle)
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    fake.base_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield fake
    app[RELEASE].set()
    await runner.cleanup()


@pytest.fixture
async def adapter() -> AsyncIterator[SendGridAdapter]:
    a = SendGridAdapter(read_timeout=0.5, connect_timeout=2.0)
    yield a
    await a.close()


def creds(base_url: str, key: str = API_KEY, **config: Any) -> ProviderCredentials:
    return ProviderCredentials("sendgrid", "main", key, base_url=base_url, config=config)


# ---------------------------------------------------------------- round trips


async def test_2500_messages_make_3_requests_each_recipient_once(
        sendgrid: FakeSendGrid, adapter: SendGridAdapter) -> None:
    messages = [msg(f"m{i:04d}", substitutions={"-name-": f"N{i}"},
                    unsubscribe_url=f"https://hub.test/u/{i}") for i in range(2500)]
    before = len(sendgrid.requests)
    results = await adapter.send_batch(creds(sendgrid.url("ok")), messages)
    requests = sendgrid.requests[before:]
    assert sorted(len(r.message_ids) for r in requests) == [500, 1000, 1000]
    assert all(r.x_message_id for r in requests)  # the schema and the address check passed
    sent = [mid for r in requests for mid in r.message_ids]
    assert sorted(sent) == [m.message_id for m in messages]  # each recipient exactly once
    x_id_of = {mid: r.x_message_id for r in requests for mid in r.message_ids}
    assert [r.message_id for r in results] == [m.message_id for m in messages]
    assert all(r.ok and r.status == Status.SENT for r in results)
    assert all(r.provider_message_id == x_id_of[r.message_id] for r in results)
    first = requests[0].body["personalizations"][0]
    assert first["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


async def test_a_recipient_appears_once_per_request(sendgrid: FakeSendGrid,
                                                   adapter: SendGridAdapter) -> None:
    # Two messages to one address (any case) never share an X-Message-Id: the pair
    # (provider id, recipient) names one message, as the unique index requires.
    messages = [msg("d1", to="pat@example.org"), msg("d2"), msg("d3", to="Pat@Example.org"),
                msg("d4", to="pat@example.org")]
    before = len(sendgrid.requests)
    results = await adapter.send_batch(creds(sendgrid.url("ok")), messages)
    requests = sendgrid.requests[before:]
    assert sorted(r.message_ids for r in requests) == [["d1", "d2"], ["d3"], ["d4"]]
    pairs = {(r.provider_message_id, m.to.lower()) for r, m in zip(results, messages,
                                                                    strict=True)}
    assert len(pairs) == 4 and all(r.ok for r in results)


async def test_messages_group_by_shared_content(sendgrid: FakeSendGrid,
                                                adapter: SendGridAdapter) -> None:
    messages = [msg("g1"), msg("g2", subject="Other"), msg("g3"), msg("g4", subject="Other")]
    before = len(sendgrid.requests)
    results = await adapter.send_batch(creds(sendgrid.url("ok")), messages)
    requests = sendgrid.requests[before:]
    assert sorted(r.message_ids for r in requests) == [["g1", "g3"], ["g2", "g4"]]
    assert [r.message_id for r in results] == ["g1", "g2", "g3", "g4"] and all(
        r.ok for r in results)


async def test_a_bad_personalization_fails_alone(sendgrid: FakeSendGrid,
                                                 adapter: SendGridAdapter) -> None:
    """SendGrid rejects the whole request; the adapter fails the named personalization and
    resends the rest, so each good recipient is accepted exactly once."""
    messages = [msg("p0"), msg("p1"), msg("p2", to="bad@nodot"), msg("p3"), msg("p4")]
    before = len(sendgrid.requests)
    results = await adapter.send_batch(creds(sendgrid.url("ok")), messages)
    first, second = sendgrid.requests[before:]
    assert first.x_message_id is None and len(first.message_ids) == 5
    assert second.message_ids == ["p0", "p1", "p3", "p4"] and second.x_message_id
    assert [r.ok for r in results] == [True, True, False, True, True]
    error = results[2].error
    assert error is not None and error.kind == ErrorKind.MESSAGE_INVALID
    assert error.message == "personalizations.2.to.0.email: Does not contain a valid address."


async def test_every_personalization_bad_each_gets_its_own_error(
        sendgrid: FakeSendGrid, adapter: SendGridAdapter) -> None:
    messages = [msg("x0", to="a@nodot"), msg("x1", to="b@nodot")]
    before = len(sendgrid.requests)
    results = await adapter.send_batch(creds(sendgrid.url("ok")), messages)
    assert len(sendgrid.requests) - before == 1
    assert [r.error.message if r.error else None for r in results] == [
        "personalizations.0.to.0.email: Does not contain a valid address.",
        "personalizations.1.to.0.email: Does not contain a valid address."]


async def test_a_bad_shared_field_fails_the_group(sendgrid: FakeSendGrid,
                                                  adapter: SendGridAdapter) -> None:
    messages = [msg(f"s{i}", from_="news@nodot") for i in range(3)]
    before = len(sendgrid.requests)
    results = await adapter.send_batch(creds(sendgrid.url("ok")), messages)
    assert len(sendgrid.requests) - before == 1
    assert {r.error.kind for r in results if r.error} == {ErrorKind.MESSAGE_INVALID}
    assert all("from.email" in str(r.error) for r in results)


async def test_local_checks_keep_a_bad_message_out_of_the_request(
        sendgrid: FakeSendGrid, adapter: SendGridAdapter) -> None:
    messages = [msg("l0"), msg("l1", subject=""), msg("l2", unsubscribe_url="https://x/\r\nBcc:"),
                msg("l3", body="", html=None), msg("l4")]
    before = len(sendgrid.requests)
    results = await adapter.send_batch(creds(sendgrid.url("ok")), messages)
    [request] = sendgrid.requests[before:]
    assert request.message_ids == ["l0", "l4"]
    assert [r.error.kind if r.error else None for r in results] == [
        None, ErrorKind.MESSAGE_INVALID, ErrorKind.MESSAGE_INVALID, ErrorKind.MESSAGE_INVALID,
        None]


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.parametrize(("mode", "key", "kind", "code", "reached"), [
    ("ok", "SG.wrong", ErrorKind.CONFIG_INVALID, "401", True),
    ("401", API_KEY, ErrorKind.CONFIG_INVALID, "401", True),
    ("403", API_KEY, ErrorKind.CONFIG_INVALID, "403", True),
    ("413", API_KEY, ErrorKind.MESSAGE_INVALID, "413", True),
    ("429", API_KEY, ErrorKind.THROTTLED, "429", True),
    ("500", API_KEY, ErrorKind.THROTTLED, "500", True),
    ("502", API_KEY, ErrorKind.IN_DOUBT, "502", True),
    ("hang", API_KEY, ErrorKind.IN_DOUBT, None, True),
    ("closed-port", API_KEY, ErrorKind.CONNECTION_FAILED, None, False),
])
async def test_round_trip_failures(sendgrid: FakeSendGrid, adapter: SendGridAdapter,
                                   caplog: pytest.LogCaptureFixture, mode: str, key: str,
                                   kind: ErrorKind, code: str | None, reached: bool) -> None:
    caplog.set_level(logging.DEBUG)
    url = _closed_port_url() if mode == "closed-port" else sendgrid.url(mode)
    before = len(sendgrid.requests)
    results = await adapter.send_batch(creds(url, key), [msg("f1"), msg("f2")])
    assert [r.message_id for r in results] == ["f1", "f2"]
    for r in results:
        assert r.error is not None and r.error.kind == kind, r.error
        assert r.error.provider_code == code and r.provider_message_id is None
        assert key not in r.error.message
    if kind == ErrorKind.THROTTLED:
        assert all(r.error and r.error.retry_after and r.error.retry_after > 0 for r in results)
    assert (len(sendgrid.requests) - before == 1) is reached  # one request, not resent
    assert key not in caplog.text


async def test_on_behalf_of_and_bearer_key(sendgrid: FakeSendGrid,
                                           adapter: SendGridAdapter) -> None:
    before = len(sendgrid.requests)
    c = creds(sendgrid.url("ok"), on_behalf_of="subuser-sa1")
    [result] = await adapter.send_batch(c, [msg("b1")])
    assert result.ok
    request = sendgrid.requests[before]
    assert request.authorization == f"Bearer {API_KEY}"
    assert request.on_behalf_of == "subuser-sa1"


# ---------------------------------------------------------------- events


def _summary(events: list[Any]) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for e in events:
        if isinstance(e, StatusUpdate):
            out.append(("status", e.status, e.provider_status))
        elif isinstance(e, SuppressionEvent):
            out.append(("suppress", e.reason))
        elif isinstance(e, EngagementEvent):
            out.append(("engage", e.kind, e.url))
        else:
            out.append(("other", type(e).__name__))
    return out


DOC_EXPECTED: dict[str, list[tuple[Any, ...]]] = {
    "processed": [("status", Status.SENT, "processed")],
    "dropped": [("status", Status.FAILED, "dropped"), ("suppress", "dropped")],
    "delivered": [("status", Status.DELIVERED, "delivered")],
    "deferred": [("status", Status.SENT, "deferred")],  # record only: never past sent
    "bounce/bounce": [("status", Status.UNDELIVERED, "bounce"), ("suppress", "bounce")],
    "bounce/blocked": [("status", Status.UNDELIVERED, "blocked")],  # temporary: no suppression
    "open": [("engage", "open", None)],  # engagement only, never `read`
    "click": [("engage", "click", "http://www.sendgrid.com/")],
    "spamreport": [("suppress", "spamreport")],
    "unsubscribe": [("suppress", "unsubscribe")],
    "group_unsubscribe": [("suppress", "group_unsubscribe")],
    "group_resubscribe": [],  # base.py has no re-opt-in event: stays suppressed
}


def _doc_label(ev: dict[str, Any]) -> str:
    return f"bounce/{ev['type']}" if ev["event"] == "bounce" else ev["event"]


@pytest.mark.parametrize("ev", SAMPLES["doc_events"], ids=_doc_label)
def test_doc_event(ev: dict[str, Any]) -> None:
    events = parse_events(json.dumps([ev]).encode())
    assert _summary(events) == DOC_EXPECTED[_doc_label(ev)]
    for e in events:
        assert e.provider == "sendgrid"
        if isinstance(e, StatusUpdate):
            assert e.provider_message_id == "14c5d75ce93.dfd.64b469"  # the X-Message-Id
            assert e.event_key == ev["sg_event_id"]
            assert e.occurred_at == datetime.fromtimestamp(1513299569, UTC)
        elif isinstance(e, SuppressionEvent | EngagementEvent):
            assert e.address == "example@test.com"
    if _doc_label(ev) in ("dropped", "bounce/bounce"):
        status, suppression = events
        assert isinstance(status, StatusUpdate) and status.error_code == "5.0.0"
        assert isinstance(suppression, SuppressionEvent)
        assert suppression.event_key == f"{ev['sg_event_id']}#suppression"


VARIANT_EXPECTED: list[list[tuple[Any, ...]]] = [
    [("engage", "open", None)],
    [("engage", "click", "https://sendgrid.com")],
    [("status", Status.SENT, "processed")],
    [("status", Status.SENT, "processed")],
    [("engage", "click", "http://yourdomain.com/blog/news.html")],
    [("status", Status.SENT, "processed"), ("engage", "click", "https://sendgrid.com"),
     ("status", Status.SENT, "processed")],
]


@pytest.mark.parametrize(("variant", "expected"),
                         list(zip(SAMPLES["doc_event_variants"], VARIANT_EXPECTED, strict=True)),
                         ids=[v["label"][:40] for v in SAMPLES["doc_event_variants"]])
def test_doc_event_variant(variant: dict[str, Any], expected: list[tuple[Any, ...]]) -> None:
    payload = variant["event"] if isinstance(variant["event"], list) else [variant["event"]]
    events = parse_events(json.dumps(payload).encode())
    assert _summary(events) == expected
    keys = [e.event_key for e in events if not isinstance(e, InboundMessage)]
    assert len(keys) == len(events) and all(keys) and len(set(keys)) == len(keys)
    for ev, key in zip(payload, keys, strict=True):
        if "sg_event_id" in ev:
            assert key == ev["sg_event_id"]
        else:  # natural key, hashed: no address in a dedup table
            assert key.startswith("nk:") and ev["email"] not in key


def test_capitalised_event_and_string_timestamp() -> None:
    [e] = parse_events(json.dumps([SAMPLES["doc_event_variants"][2]["event"]]).encode())
    assert isinstance(e, StatusUpdate)
    assert e.occurred_at == datetime.fromtimestamp(123456789, UTC)
    assert e.provider_message_id == "" and e.message_id is None


def test_our_message_id_custom_arg_matches_first() -> None:
    ev = {"email": "a@example.org", "timestamp": 1700000000, "event": "delivered",
          "sg_event_id": "e1", "message_id": "our-42", "campaign": "c9",
          "sg_message_id": "LRzXl_NHStOGhQ4kofSm_A.filterdrecv-p3mdw1-756b745b58-kmzbl-18-"
                            "5F5FC76C-9.0"}
    [e] = parse_events(json.dumps([ev]).encode())
    assert isinstance(e, StatusUpdate)
    assert (e.message_id, e.provider_message_id) == ("our-42", "LRzXl_NHStOGhQ4kofSm_A")


def test_marketing_event_provider_id() -> None:
    [e] = parse_events(json.dumps([SAMPLES["doc_event_variants"][3]["event"]]).encode())
    assert isinstance(e, StatusUpdate) and e.provider_message_id == "5lFl7Fr1Rjme_EyzNNB_5A"


def test_dropped_for_content_does_not_suppress() -> None:
    ev = {"email": "a@example.org", "timestamp": 1, "event": "dropped", "sg_event_id": "d1",
          "reason": "Spam Content (if spam checker app enabled)"}
    assert _summary(parse_events(json.dumps([ev]).encode())) == [
        ("status", Status.FAILED, "dropped_content")]


def test_not_json_is_an_error() -> None:
    with pytest.raises(ValueError):
        parse_events(b"not json")


# ---------------------------------------------------------------- signatures


@pytest.mark.parametrize("vector", SAMPLES["signed_vectors"],
                         ids=[v["case"][:50] for v in SAMPLES["signed_vectors"]])
def test_signed_vector(vector: dict[str, Any]) -> None:
    assert verify_event_signature(vector["public_key_b64_der"], vector["raw_body"].encode(),
                                  vector["signature"], vector["timestamp"]) is vector["valid"]


def test_generated_batches_parse_after_verification() -> None:
    everything, duplicate = SAMPLES["signed_vectors"][4:6]
    events = parse_events(everything["raw_body"].encode())
    expected = [row for ev in SAMPLES["doc_events"] for row in DOC_EXPECTED[_doc_label(ev)]]
    assert _summary(events) == expected
    first, second = parse_events(duplicate["raw_body"].encode())
    assert first == second  # same event_key: the store keeps one


def test_malformed_signature_inputs_are_rejected_not_raised() -> None:
    official = SAMPLES["signed_vectors"][0]
    key, body = official["public_key_b64_der"], official["raw_body"].encode()
    sig, ts = official["signature"], official["timestamp"]
    assert verify_event_signature(key, body, sig, ts)
    other_key = SAMPLES["signed_vectors"][4]["public_key_b64_der"]
    truncated = base64.b64encode(base64.b64decode(sig)[:-3]).decode()
    for args in [(other_key, body, sig, ts), (key, body, "not base64!", ts),
                 (key, body, truncated, ts), (key, body, "", ts), (key, body, sig, ""),
                 ("", body, sig, ts), ("bm90IGEga2V5", body, sig, ts),
                 (key, b"\xff\xfe" + body, sig, ts)]:
        assert verify_event_signature(*args) is False


# ---------------------------------------------------------------- the sandbox carrier


async def test_round_trip_through_the_sandbox_carrier() -> None:
    """Through the real sandbox carrier: its request log holds each good recipient exactly
    once, the bad one never; its signed event batches verify, parse, and join our sends by
    our message id and by X-Message-Id."""
    from hub.status import merge

    sandbox = pytest.importorskip("channels.sandbox")
    batches: list[bytes] = []
    forged: list[bytes] = []

    async def receive(request: web.Request) -> web.Response:
        raw = await request.read()
        ok = verify_event_signature(carrier.sendgrid_public_key, raw,
                                    request.headers.get(SIGNATURE_HEADER, ""),
                                    request.headers.get(TIMESTAMP_HEADER, ""))
        (batches if ok else forged).append(raw)
        return web.Response(status=204 if ok else 401)

    app = web.Application()
    app.router.add_post("/events", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    config = sandbox.CarrierConfig(
        seed=11, latency=sandbox.Latency(seconds=0.01), undelivered_rate=0.1, failed_rate=0.1,
        sendgrid_api_keys=(API_KEY,),
        sendgrid_event_url=f"http://127.0.0.1:{runner.addresses[0][1]}/events")
    adapter = SendGridAdapter()
    messages = [msg(f"sb{i:04d}") for i in range(1205)]
    messages[700] = msg("sb0700", to="broken@nodot")
    try:
        async with sandbox.SandboxCarrier(config) as carrier:
            results = await adapter.send_batch(creds(carrier.url), messages)
            async with aiohttp.ClientSession() as http, http.get(
                    f"{carrier.url}/sandbox/requests", params={"channel": "email"}) as resp:
                log = (await resp.json())["requests"]
            final = {m.message_id: Status.SENT for m in messages}
            for _ in range(500):  # until every message has its last event, or 10 s
                events = [e for raw in batches for e in parse_events(raw)]
                seen = {e.message_id for e in events
                        if isinstance(e, StatusUpdate) and e.provider_status != "processed"}
                if len(seen) >= 1204:
                    break
                await asyncio.sleep(0.02)
    finally:
        await adapter.close()
        await runner.cleanup()

    by_id = {r.message_id: r for r in results}
    assert [r.message_id for r in results] == [m.message_id for m in messages]
    bad = by_id["sb0700"].error
    assert bad is not None and bad.kind == ErrorKind.MESSAGE_INVALID
    good = [m for m in messages if m.message_id != "sb0700"]
    assert all(by_id[m.message_id].ok for m in good)
    logged = sorted(row["message_id"] for row in log)
    assert logged == sorted(m.message_id for m in good)  # each recipient exactly once
    for row in log:
        assert row["to"] == f"{row['message_id']}@example.org"
        assert row["provider_sid"].split(".")[0] == by_id[row["message_id"]].provider_message_id
    assert not forged and batches
    outcome_status = {"delivered": Status.DELIVERED, "bounce": Status.UNDELIVERED,
                      "dropped": Status.FAILED}
    suppressed = set()
    for e in events:
        if isinstance(e, StatusUpdate):
            assert e.message_id is not None
            assert e.provider_message_id == by_id[e.message_id].provider_message_id
            final[e.message_id] = merge(final[e.message_id], e.status)
        elif isinstance(e, SuppressionEvent):
            suppressed.add(e.message_id)
    for row in log:
        assert final[row["message_id"]] == outcome_status[row["outcome"]], row
    assert suppressed == {row["message_id"] for row in log if row["outcome"] != "delivered"}
    assert suppressed  # the seed gives bounces and drops
