"""Input a user review found mishandled, through the real routes: NUL characters (refused
in every JSON body with a problem naming the field, stored as U+FFFD from the providers'
webhooks, never a 500), an agent's reply in an email thread, the field a duplicate
contact names, the recipients' status filter, contact search and malformed JSON."""

from __future__ import annotations

import base64
import json
import time
from typing import Any
from urllib.parse import urlencode

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from config.settings import Settings
from hub.context import Hub
from tests.conftest import Tenant, assert_problem, auth
from tests.test_sending import carrier, carrier_log
from tests.test_webhooks import (
    INBOUND,
    STATUS,
    add_provider,
    add_sender,
    insert_message,
    message,
    post_events,
    post_twilio,
    settled,
)

__all__ = ["carrier", "carrier_log"]  # fixtures shared with test_sending

NUL = "\x00"


# --- NUL characters ------------------------------------------------------------------------


async def test_a_nul_in_any_json_body_is_a_problem_naming_the_field(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant
) -> None:
    sa, h = f"/v1/sub-accounts/{tenant.sa1}", auth(tenant.sa1_key)
    contact = await api.post(f"{sa}/contacts", headers=h, json={"phone": "+12125550101"})
    assert contact.status_code == 201, contact.text
    provider = await add_provider(api, tenant, tenant.sa1, tenant.sa1_key)
    send = {**h, "Idempotency-Key": "nul-1"}
    cases: list[tuple[str, str, dict[str, str], dict[str, Any], str, str | None]] = [
        ("POST", f"{sa}/contacts", h, {"phone": "+12125550102", "first_name": f"A{NUL}"},
         "first_name", None),
        ("POST", f"{sa}/contacts", h, {"phone": "+12125550102", "tags": ["ok", f"v{NUL}"]},
         "tags", "tags[1]"),
        ("POST", f"{sa}/contacts", h,
         {"phone": "+12125550102", "custom_fields": {"notes": {"list": ["x", f"y{NUL}"]}}},
         "custom_fields", "custom_fields.notes.list[1]"),
        ("POST", f"{sa}/contacts", h, {"phone": "+12125550102", "custom_fields": {NUL: 1}},
         "custom_fields", None),
        ("POST", f"{sa}/contacts/upsert", h, {"email": f"a{NUL}@example.com"}, "email", None),
        ("PATCH", f"{sa}/contacts/{contact.json()['id']}", h, {"last_name": NUL},
         "last_name", None),
        ("POST", f"{sa}/campaigns", h, {"name": f"c{NUL}", "channel": "sms",
                                        "audience": {"all_contacts": True}, "body": "hi"},
         "name", None),
        ("POST", f"{sa}/campaigns", h, {"name": "c", "channel": "sms", "body": "hi",
                                        "audience": {"tags_any": [f"t{NUL}"]}},
         "audience", "audience.tags_any[0]"),
        ("POST", f"{sa}/messages", send, {"to": "+12125550103", "body": f"hi{NUL}"},
         "body", None),
        ("POST", f"{sa}/messages", send, {"channel": "voice", "to": "+12125550103",
                                          "voice": {"say": f"hi{NUL}"}}, "voice.say", None),
        ("POST", f"{sa}/suppressions", h, {"channel": "sms", "address": "+12125550104",
                                           "reason": f"r{NUL}"}, "reason", None),
        ("POST", f"{sa}/senders", h, {"provider_account_id": provider, "channel": "sms",
                                      "kind": "long_code", "address": f"+1212555{NUL}0105"},
         "address", None),
        ("POST", f"{sa}/providers", h, {"provider": "smtp", "name": "m", "account_id": "u",
                                        "secret": "s", "config": {"host": f"h{NUL}"}},
         "config", "config.host"),
        ("PATCH", f"{sa}/providers/{provider}", h, {"secret": f"s{NUL}"}, "secret", None),
        ("POST", f"{sa}/api-keys", auth(tenant.agency_key), {"name": f"k{NUL}"}, "name", None),
        ("PATCH", sa, auth(tenant.agency_key), {"help_text": f"h{NUL}"}, "help_text", None),
        ("POST", "/v1/sub-accounts", auth(tenant.agency_key), {"name": f"n{NUL}"}, "name",
         None),
    ]
    before = await hub.pool.fetchval("SELECT count(*) FROM events")
    for method, url, headers, body, field, where in cases:
        r = await api.request(method, url, headers=headers, json=body)
        problem = assert_problem(r, 422, "validation_failed", field=field)
        error = next(e for e in problem["errors"] if e["field"] == field)
        assert error["code"] == "nul_character" and "NUL" in error["message"], problem
        if where:
            assert where in error["message"], problem
    assert await hub.pool.fetchval("SELECT count(*) FROM events") == before
    for url, params in ((f"{sa}/contacts", {"q": f"a{NUL}"}), (f"{sa}/contacts", {"tag": NUL}),
                        (f"{sa}/suppressions", {"address": f"+1{NUL}"})):
        r = await api.get(url, headers=h, params=params)
        [field] = params
        assert assert_problem(r, 422, field=field)["errors"][0]["code"] == "nul_character"
    # A null for a provider account's name, credentials or config is refused by name (was
    # a 500 from PostgreSQL's NOT NULL; found by review R5); base_url may go back to null.
    for field in ("name", "account_id", "secret", "config"):
        r = await api.patch(f"{sa}/providers/{provider}", headers=h, json={field: None})
        assert_problem(r, 422, "validation_failed", field=field)
    r = await api.patch(f"{sa}/providers/{provider}", headers=h, json={"base_url": None})
    assert r.status_code == 200 and r.json()["base_url"] is None, r.text


async def test_a_nul_in_a_twilio_callback_is_stored_as_a_replacement_character(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant, settings: Settings
) -> None:
    """Refusing it would make Twilio retry, then drop the message: it is stored, the NUL
    replaced; the signature is checked on the form as Twilio sent it."""
    pa = await add_provider(api, tenant, tenant.sa1, tenant.sa1_key)
    await add_sender(api, tenant.sa1, tenant.sa1_key, pa, address="+12125550142")
    inbound = urlencode({"MessageSid": "SM" + "4" * 32, "AccountSid": "acctid",
                         "From": "+14133881111", "To": "+12125550142",
                         "Body": f"a{NUL}b", "NumMedia": "0"})
    assert "a%00b" in inbound
    r = await post_twilio(api, settings, INBOUND, inbound)
    assert r.status_code == 200, r.text
    mid = await insert_message(hub, tenant.sa1, pa, status="sent")
    status = urlencode({"MessageSid": "SM" + "5" * 32, "MessageStatus": "undelivered",
                        "AccountSid": "acctid", "ErrorCode": "30003",
                        "ErrorMessage": f"Unreachable{NUL}handset"})
    r = await post_twilio(api, settings, STATUS, status, query=f"message_id={mid}")
    assert r.status_code == 204, r.text
    await settled(hub)
    received = await hub.pool.fetchrow(
        "SELECT body, status FROM messages WHERE direction = 'inbound'")
    assert dict(received) == {"body": "a\ufffdb", "status": "received"}
    assert (await message(hub, mid))["status"] == "undelivered"
    forms = [json.loads(p) if isinstance(p, str) else p for p in await hub.pool.fetchval(
        "SELECT array_agg(payload ORDER BY id) FROM webhook_events")]
    assert forms[1]["form"]["ErrorMessage"] == "Unreachable\ufffdhandset"


async def test_a_nul_in_a_sendgrid_event_is_stored_as_a_replacement_character(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    public = base64.b64encode(key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode()
    pa = await add_provider(api, tenant, tenant.sa1, tenant.sa1_key, provider="sendgrid",
                            account_id="sg", secret="SG.key",
                            config={"event_webhook_public_key": public})
    mid = await insert_message(hub, tenant.sa1, pa, channel="email", provider="sendgrid",
                               provider_message_id="14c5d75ce93.dfd.64b469",
                               to="example@test.com")
    event = {"email": "example@test.com", "event": "delivered", "timestamp": int(time.time()),
             "sg_event_id": f"ev{NUL}1", "sg_message_id": "14c5d75ce93.dfd.64b469.filter0",
             "response": f"250 OK{NUL}", "category": [f"news{NUL}"]}
    body = json.dumps([event]).encode()
    assert b"\\u0000" in body
    r = await post_events(api, pa, body, key)
    assert r.status_code == 204, r.text
    await settled(hub)
    assert (await message(hub, mid))["status"] == "delivered"
    stored = await hub.pool.fetchval("SELECT payload FROM webhook_events")
    stored = json.loads(stored) if isinstance(stored, str) else stored
    assert (stored["response"], stored["category"]) == ("250 OK\ufffd", ["news\ufffd"])


# --- replies in an email thread ------------------------------------------------------------


async def test_an_agent_replies_in_an_email_thread_with_re_the_last_subject(
    api: httpx.AsyncClient, tenant: Tenant, carrier: Any
) -> None:
    sa, h = f"/v1/sub-accounts/{tenant.sa1}", auth(tenant.sa1_key)
    pa = await add_provider(api, tenant, tenant.sa1, tenant.sa1_key, provider="sendgrid",
                            account_id="sg", secret="SG.key", base_url=carrier.url)
    await add_sender(api, tenant.sa1, tenant.sa1_key, pa, address="desk@example.com",
                     channel="email", kind="email")
    first = await api.post(f"{sa}/messages", headers={**h, "Idempotency-Key": "e-1"}, json={
        "channel": "email", "to": "ada@example.com", "subject": "Your booking",
        "body": "See you at 3pm."})
    assert first.status_code == 202, first.text
    thread = f"{sa}/conversations/{first.json()['conversation_id']}/messages"

    async def reply(n: int, **body: Any) -> httpx.Response:
        return await api.post(thread, headers={**h, "Idempotency-Key": f"r-{n}"},
                              json={"body": "Thanks!", **body})

    r = await reply(1)
    assert r.status_code == 202, r.text
    assert (r.json()["channel"], r.json()["subject"]) == ("email", "Re: Your booking")
    r = await reply(2)  # no "Re: Re: "
    assert r.json()["subject"] == "Re: Your booking"
    r = await reply(3, subject="A new slot")
    assert r.status_code == 202 and r.json()["subject"] == "A new slot"
    r = await reply(4)
    assert r.json()["subject"] == "Re: A new slot"

    twilio = await add_provider(api, tenant, tenant.sa1, tenant.sa1_key, base_url=carrier.url)
    await add_sender(api, tenant.sa1, tenant.sa1_key, twilio)
    sms = await api.post(f"{sa}/messages", headers={**h, "Idempotency-Key": "s-1"},
                         json={"to": "+12125550199", "body": "hi"})
    assert sms.status_code == 202, sms.text
    r = await api.post(f"{sa}/conversations/{sms.json()['conversation_id']}/messages",
                       headers={**h, "Idempotency-Key": "r-5"}, json={"body": "x", "subject": "y"})
    assert_problem(r, 422, field="subject")


# --- duplicates, filters, search, malformed JSON ---------------------------------------------


async def test_a_duplicate_contact_names_the_field_that_is_taken(
    api: httpx.AsyncClient, tenant: Tenant
) -> None:
    url, h = f"/v1/sub-accounts/{tenant.sa1}/contacts", auth(tenant.sa1_key)
    for body in ({"email": "ada@example.com"}, {"phone": "+12125550120"}):
        assert (await api.post(url, headers=h, json=body)).status_code == 201
    cases = [
        ({"email": "Ada@Example.com"}, ["email"]),
        ({"phone": "(212) 555-0120"}, ["phone"]),
        ({"phone": "+12125550121", "email": "ada@example.com"}, ["email"]),
        ({"phone": "+12125550120", "email": "bo@example.com"}, ["phone"]),
        ({"phone": "+12125550120", "email": "ada@example.com"}, ["phone", "email"]),
    ]
    for body, fields in cases:
        problem = assert_problem(await api.post(url, headers=h, json=body), 409,
                                 "duplicate_contact")
        assert [e["field"] for e in problem["errors"]] == fields, (body, problem)
        assert " and ".join(fields) in problem["detail"]


async def test_status_filters_refuse_unknown_values(
    api: httpx.AsyncClient, tenant: Tenant
) -> None:
    sa, h = f"/v1/sub-accounts/{tenant.sa1}", auth(tenant.sa1_key)
    pa = await add_provider(api, tenant, tenant.sa1, tenant.sa1_key)
    await add_sender(api, tenant.sa1, tenant.sa1_key, pa)
    c = await api.post(f"{sa}/campaigns", headers=h, json={
        "name": "c", "channel": "sms", "audience": {"all_contacts": True}, "body": "hi"})
    assert c.status_code == 201, c.text
    recipients = f"{sa}/campaigns/{c.json()['id']}/recipients"
    problem = assert_problem(await api.get(recipients, headers=h, params={"status": "bogus"}),
                             422, field="status")
    assert "'skipped'" in problem["detail"] and "'delivered'" in problem["detail"]
    for ok in ("pending", "skipped", "delivered"):
        assert (await api.get(recipients, headers=h, params={"status": ok})).status_code == 200
    assert_problem(await api.get(f"{sa}/campaigns", headers=h, params={"status": "bogus"}),
                   422, field="status")
    r = await api.get(f"{sa}/campaigns", headers=h, params={"status": "draft"})
    assert [x["id"] for x in r.json()["data"]] == [c.json()["id"]]


async def test_contact_search_is_literal_and_reads_phones_written_any_way(
    api: httpx.AsyncClient, tenant: Tenant
) -> None:
    url, h = f"/v1/sub-accounts/{tenant.sa1}/contacts", auth(tenant.sa1_key)
    for body in ({"phone": "+12125550199", "first_name": "Ada", "last_name": "Lovelace"},
                 {"email": "bo_x@example.com", "first_name": "Bo"},
                 {"email": "cy@example.com", "first_name": "100%", "last_name": "Cy"}):
        assert (await api.post(url, headers=h, json=body)).status_code == 201

    async def found(q: str) -> list[str]:
        r = await api.get(url, headers=h, params={"q": q})
        assert r.status_code == 200, r.text
        return sorted(c["first_name"] for c in r.json()["data"])

    assert await found("%") == ["100%"]
    assert await found("_") == []  # LIKE's "any one character", taken literally
    assert await found("bo_") == ["Bo"]
    assert await found("(212) 555-0199") == ["Ada"]
    assert await found("212-555") == ["Ada"]
    assert await found("+1 212 555 0199") == ["Ada"]
    assert await found("(212) 555-0198") == []
    assert await found("love") == ["Ada"]
    assert await found("CY@") == ["100%"]

    # The suppressions' address prefix is literal too.
    sups = f"/v1/sub-accounts/{tenant.sa1}/suppressions"
    for address in ("ab@example.com", "a_b@example.com"):
        r = await api.post(sups, headers=h, json={"channel": "email", "address": address,
                                                  "reason": "asked"})
        assert r.status_code == 201, r.text
    r = await api.get(sups, headers=h, params={"address": "a_"})
    assert [s["address"] for s in r.json()["data"]] == ["a_b@example.com"]
    # And a phone number is found written any way, or by part of its digits.
    r = await api.post(sups, headers=h, json={"channel": "sms", "address": "+16465550112",
                                              "reason": "asked"})
    assert r.status_code == 201, r.text
    for written in ("(646) 555-0112", "646555011", "+1 646 555 0112"):
        r = await api.get(sups, headers=h, params={"address": written})
        assert [s["address"] for s in r.json()["data"]] == ["+16465550112"], written


async def test_malformed_json_names_the_body_and_where(
    api: httpx.AsyncClient, tenant: Tenant
) -> None:
    h = {**auth(tenant.sa1_key), "Content-Type": "application/json"}
    r = await api.post(f"/v1/sub-accounts/{tenant.sa1}/contacts", headers=h,
                       content=b'{"phone": "+12125550101",\n "email": }')
    problem = assert_problem(r, 422, "validation_failed", field="body")
    [error] = problem["errors"]
    assert error["code"] == "json_invalid"
    assert "malformed JSON" in error["message"] and "line 2, column 11" in error["message"]
