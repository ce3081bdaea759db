"""Compliance end to end: keywords on real inbound webhooks, a STOP in the middle of running
campaigns checked on the carrier's own request log, HELP and START answers, and one-click
email unsubscribe links (the link a bulk email really carried, and forged ones)."""

from __future__ import annotations

import asyncio
import collections
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from config.settings import Settings
from hub import compliance
from hub.context import Hub
from tests.conftest import REFERENCE, Tenant, assert_problem, auth
from tests.test_campaigns import open_window_now, tenant
from tests.test_sending import carrier, carrier_log, carrier_requests, wait_for
from tests.test_webhooks import INBOUND, add_provider, add_sender, post_twilio, settled

__all__ = ["carrier", "carrier_log", "tenant"]  # fixtures shared with other modules

VECTORS = json.loads((REFERENCE / "vectors" / "opt_out_keyword_vectors.json").read_text())
EXPECTED_KEYWORD = {"STOP": compliance.Keyword.STOP, "START": compliance.Keyword.START,
                    "HELP": compliance.Keyword.HELP, None: None}
HELP_TEXT = "Acme Dental: reply STOP to opt out. Call +1 212 555 0100 for help."


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda c: repr(c["body"]))
def test_keyword_vectors(case: dict[str, Any]) -> None:
    assert compliance.classify(case["body"]) == EXPECTED_KEYWORD[case["expected_OptOutType"]]


@pytest.fixture
async def sandbox(carrier: Any, carrier_log: httpx.AsyncClient,
                  settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The carrier delivering inbound texts to this gateway and accepting every send, so its
    log shows exactly what the hub sent (Twilio's own opt-out blocking is off)."""
    await carrier_log.post("/sandbox/config", json={
        "inbound_url": f"{settings.base_url}{INBOUND}", "honor_opt_out": False})
    yield carrier_log
    await carrier_log.post("/sandbox/config", json={"inbound_url": None,
                                                    "honor_opt_out": True})


async def texting_setup(api: httpx.AsyncClient, tenant: Tenant, carrier: Any, number: str,
                        mps: float = 50) -> tuple[str, str]:
    """A Twilio account as the carrier signs this number's texts, and the number as sender."""
    state = carrier.carrier.state
    sid = state.owner_of(number)
    pa = await add_provider(api, tenant, tenant.sa1, tenant.sa1_key, account_id=sid,
                            secret=state.token_for(sid), base_url=carrier.url)
    r = await api.post(f"/v1/sub-accounts/{tenant.sa1}/senders", headers=auth(tenant.sa1_key),
                       json={"provider_account_id": pa, "channel": "sms", "kind": "long_code",
                             "address": number, "mps": mps})
    assert r.status_code == 201, r.text
    return pa, sid


async def text_in(sandbox: httpx.AsyncClient, from_: str, to: str, body: str) -> None:
    r = await sandbox.post("/sandbox/inbound", json={"from": from_, "to": to, "body": body})
    assert r.status_code == 200 and r.json()["status"] == 200, r.text


async def sent_to(log: httpx.AsyncClient, number: str) -> list[str]:
    return [q["body"] for q in await carrier_requests(log) if q["to"] == number]


async def test_every_keyword_vector_through_the_inbound_webhook(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant, settings: Settings, carrier: Any,
    sandbox: httpx.AsyncClient
) -> None:
    number = "+12125550181"
    r = await api.patch(f"/v1/sub-accounts/{tenant.sa1}", headers=auth(tenant.agency_key),
                        json={"help_text": HELP_TEXT})
    assert r.status_code == 200, r.text
    _, sid = await texting_setup(api, tenant, carrier, number)
    token = carrier.carrier.state.token_for(sid)
    cases = VECTORS["cases"]
    contact = {i: f"+1415555{3100 + i:04d}" for i in range(len(cases))}

    async def post(i: int) -> None:
        body = urlencode({"MessageSid": f"SM{i:032x}", "AccountSid": sid, "From": contact[i],
                          "To": number, "Body": cases[i]["body"], "NumMedia": "0"})
        resp = await post_twilio(api, settings, INBOUND, body, token=token)
        assert resp.status_code == 200, resp.text

    await asyncio.gather(*(post(i) for i in range(len(cases))))
    await settled(hub)
    inbound = await hub.pool.fetch("SELECT from_address, body FROM messages "
                                   "WHERE direction = 'inbound'")
    assert sorted(r["from_address"] for r in inbound) == sorted(contact.values())
    suppressed = {r["address"] for r in await hub.pool.fetch(
        "SELECT address FROM suppressions WHERE removed_at IS NULL AND source = 'opt_out'")}
    replies = collections.defaultdict(list)
    for r in await hub.pool.fetch("SELECT to_address, body, priority FROM messages "
                                  "WHERE direction = 'outbound'"):
        assert r["priority"] == "transactional"
        replies[r["to_address"]].append(r["body"])
    for i, case in enumerate(cases):
        kind, who = case["expected_OptOutType"], contact[i]
        assert (who in suppressed) == (kind == "STOP"), case
        expected = {"STOP": [compliance.STOP_CONFIRMATION], "HELP": [HELP_TEXT]}.get(kind, [])
        assert replies.get(who, []) == expected, case  # START: nothing was suppressed

    help_sent = [q for q in await wait_for(lambda: _sent_from(sandbox, number, HELP_TEXT,
                                                              len(HELP_CASES)))]
    assert sorted(q["to"] for q in help_sent) == sorted(
        contact[i] for i, c in enumerate(cases) if c["expected_OptOutType"] == "HELP")


HELP_CASES = [c for c in VECTORS["cases"] if c["expected_OptOutType"] == "HELP"]


async def _sent_from(log: httpx.AsyncClient, number: str, body: str,
                     n: int) -> list[dict[str, Any]] | None:
    got = [q for q in await carrier_requests(log) if q["from"] == number and q["body"] == body]
    return got if len(got) >= n else None


async def make_contacts(hub: Hub, sa: str, n: int) -> list[str]:
    phones = [f"+1415555{3200 + i:04d}" for i in range(n)]
    await hub.pool.execute(
        """INSERT INTO contacts (sub_account_id, phone, first_name, timezone, tags)
           SELECT $1, p, 'Pat', 'Etc/GMT', ARRAY['all'] FROM unnest($2::text[]) p""",
        uuid.UUID(sa), phones)
    return phones


async def launch(api: httpx.AsyncClient, tenant: Tenant, **extra: Any) -> dict[str, Any]:
    start, end = open_window_now()
    h = auth(tenant.sa1_key)
    r = await api.post(f"/v1/sub-accounts/{tenant.sa1}/campaigns", headers=h, json={
        "name": "Spring sale", "channel": "sms", "audience": {"tags_any": ["all"]},
        "body": "Hi {{first_name}}, 20% off this week. Reply STOP to opt out.",
        "window_start": start, "window_end": end, **extra})
    assert r.status_code == 201, r.text
    r = await api.post(f"/v1/sub-accounts/{tenant.sa1}/campaigns/{r.json()['id']}/launch",
                       headers=h)
    assert r.status_code == 200, r.text
    return dict(r.json())


async def test_stop_during_running_campaigns_stops_every_campaign_message(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant, carrier: Any,
    sandbox: httpx.AsyncClient
) -> None:
    number = "+12125550177"
    await texting_setup(api, tenant, carrier, number, mps=4)
    phones = await make_contacts(hub, tenant.sa1, 8)
    running = await launch(api, tenant, rate_cap=1.0)  # one text a second
    start_at = datetime.now(UTC) + timedelta(seconds=10)
    scheduled = await launch(api, tenant, start_at=start_at.isoformat(), rate_cap=4.0)
    assert (running["status"], scheduled["status"]) == ("running", "scheduled")

    async def first_sent() -> bool:
        return len(await carrier_requests(sandbox)) >= 1
    await wait_for(first_sent, timeout=30)
    queued = await hub.pool.fetch(
        "SELECT to_address FROM messages WHERE campaign_id = $1 AND status = 'queued'",
        uuid.UUID(str(running["id"])))
    assert len(queued) >= 5, "the slow campaign should still have most texts waiting"
    target = queued[-1]["to_address"]

    await text_in(sandbox, target, number, "Stop")
    await settled(hub)
    await asyncio.sleep(0.5)  # a send already in flight lands in the log
    before = [b for b in await sent_to(sandbox, target) if b != compliance.STOP_CONFIRMATION]
    await text_in(sandbox, target, number, " STOP ")  # a second STOP: no second confirmation

    async def both_done() -> bool:
        rows = await hub.pool.fetch("SELECT status FROM campaigns WHERE sub_account_id = $1",
                                    uuid.UUID(tenant.sa1))
        return all(r["status"] == "completed" for r in rows)
    await wait_for(both_done, timeout=60, every=0.5)
    await asyncio.sleep(1.0)  # anything extra (there must be nothing) would arrive now

    got = await sent_to(sandbox, target)
    campaign_texts = [b for b in got if b != compliance.STOP_CONFIRMATION]
    assert len(campaign_texts) <= len(before) <= 1, got
    assert got.count(compliance.STOP_CONFIRMATION) <= 1, got  # its delivery: the test below
    assert await confirmations(hub, target) == 1  # two STOPs, one confirmation
    others = collections.Counter(q["to"] for q in await carrier_requests(sandbox))
    assert all(others[p] == 2 for p in phones if p != target), others  # both campaigns
    rec = await hub.pool.fetchrow(
        """SELECT r.status, r.skip_reason FROM campaign_recipients r JOIN contacts c
           ON c.id = r.contact_id WHERE r.campaign_id = $1 AND c.phone = $2""",
        uuid.UUID(str(scheduled["id"])), target)
    assert (rec["status"], rec["skip_reason"]) == ("canceled", "opted_out")
    sup = await hub.pool.fetch("SELECT source, reason FROM suppressions WHERE address = $1",
                               target)
    assert [(s["source"], s["reason"]) for s in sup] == [("opt_out", "texted STOP")]
    # Both STOPs are in the conversation as ordinary inbound messages.
    assert sorted(r["body"] for r in await hub.pool.fetch(
        "SELECT body FROM messages WHERE direction = 'inbound'")) == [" STOP ", "Stop"]


async def confirmations(hub: Hub, phone: str) -> int:
    n: int = await hub.pool.fetchval(
        "SELECT count(*) FROM messages WHERE direction = 'outbound' AND to_address = $1 "
        "AND body = $2", phone, compliance.STOP_CONFIRMATION)
    return n


async def test_help_answers_and_start_resubscribes(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant, carrier: Any,
    sandbox: httpx.AsyncClient
) -> None:
    number, contact = "+12125550188", "+14155553300"
    h = auth(tenant.sa1_key)
    r = await api.patch(f"/v1/sub-accounts/{tenant.sa1}", headers=auth(tenant.agency_key),
                        json={"help_text": HELP_TEXT})
    assert r.status_code == 200, r.text
    await texting_setup(api, tenant, carrier, number)

    async def replies(*expected: str) -> None:
        async def arrived() -> bool:
            got = [b for b in await sent_to(sandbox, contact)
                   if b != compliance.STOP_CONFIRMATION]  # its delivery: the test below
            return got == list(expected)
        await wait_for(arrived, timeout=30)

    await text_in(sandbox, contact, number, "help")
    await replies(HELP_TEXT)
    await text_in(sandbox, contact, number, "STOP")
    await settled(hub)
    assert await confirmations(hub, contact) == 1
    refused = await api.post(f"/v1/sub-accounts/{tenant.sa1}/messages",
                             headers={**h, "Idempotency-Key": "after-stop"},
                             json={"to": contact, "body": "are you there?"})
    assert_problem(refused, 409, "recipient_suppressed")
    await text_in(sandbox, contact, number, "HELP")  # opted out: HELP is still answered (CTIA)
    await replies(HELP_TEXT, HELP_TEXT)
    await text_in(sandbox, contact, number, "START")
    await replies(HELP_TEXT, HELP_TEXT, compliance.START_CONFIRMATION)
    history = (await api.get(f"/v1/sub-accounts/{tenant.sa1}/suppressions", headers=h,
                             params={"include_removed": True})).json()["data"]
    assert [(s["reason"], s["removed_reason"]) for s in history] == [
        ("texted STOP", "re-subscribed by START")]
    ok = await api.post(f"/v1/sub-accounts/{tenant.sa1}/messages",
                        headers={**h, "Idempotency-Key": "after-start"},
                        json={"to": contact, "body": "welcome back"})
    assert ok.status_code == 202, ok.text
    await replies(HELP_TEXT, HELP_TEXT, compliance.START_CONFIRMATION, "welcome back")
    await text_in(sandbox, contact, number, "yes")  # not opted out: no opt-in notice
    await settled(hub)
    await asyncio.sleep(1.0)
    await replies(HELP_TEXT, HELP_TEXT, compliance.START_CONFIRMATION, "welcome back")


async def test_stop_confirmation_reaches_the_carrier_exactly_once(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant, carrier: Any,
    sandbox: httpx.AsyncClient
) -> None:
    number, contact = "+12125550189", "+14155553301"
    await texting_setup(api, tenant, carrier, number)
    await text_in(sandbox, contact, number, "STOP")
    await text_in(sandbox, contact, number, "stop")
    await settled(hub)

    async def delivered() -> bool:
        return await sent_to(sandbox, contact) == [compliance.STOP_CONFIRMATION]
    await wait_for(delivered, timeout=15)
    await asyncio.sleep(1.0)
    assert await sent_to(sandbox, contact) == [compliance.STOP_CONFIRMATION]


async def test_keyword_replies_left_to_the_provider_are_not_sent_but_still_recorded(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant, carrier: Any,
    carrier_log: httpx.AsyncClient, settings: Settings
) -> None:
    """With Twilio's default opt-out handling on, Twilio answers STOP, START and HELP
    itself and refuses the hub's own confirmation (21610): an account set to
    `keyword_replies: provider` sends none, and its opt-outs and opt-ins still count."""
    number, contact = "+12125550187", "+14155553302"
    h = auth(tenant.sa1_key)
    pa, _ = await texting_setup(api, tenant, carrier, number)
    assert_problem(await api.patch(f"/v1/sub-accounts/{tenant.sa1}/providers/{pa}", headers=h,
                                   json={"config": {"keyword_replies": "carrier"}}),
                   422, field="config.keyword_replies")
    r = await api.patch(f"/v1/sub-accounts/{tenant.sa1}/providers/{pa}", headers=h,
                        json={"config": {"keyword_replies": "provider"}})
    assert r.status_code == 200, r.text
    await carrier_log.post("/sandbox/config", json={
        "inbound_url": f"{settings.base_url}{INBOUND}", "honor_opt_out": True})
    try:
        for body in ("HELP", "STOP", "START"):
            await text_in(carrier_log, contact, number, body)
            await settled(hub)
        await asyncio.sleep(1.0)  # a reply would have reached the carrier by now
        assert await sent_to(carrier_log, contact) == []
        outbound = await hub.pool.fetchval(
            "SELECT count(*) FROM messages WHERE to_address = $1", contact)
        assert outbound == 0
        history = (await api.get(f"/v1/sub-accounts/{tenant.sa1}/suppressions", headers=h,
                                 params={"include_removed": True})).json()["data"]
        assert [(s["address"], s["reason"], s["removed_reason"]) for s in history] == [
            (contact, "texted STOP", "re-subscribed by START")]
    finally:
        await carrier_log.post("/sandbox/config", json={"inbound_url": None})


# --- one-click email unsubscribe --------------------------------------------------------


async def test_one_click_unsubscribe_from_a_real_bulk_email(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant, carrier: Any,
    carrier_log: httpx.AsyncClient
) -> None:
    h = auth(tenant.sa1_key)
    pa = await add_provider(api, tenant, tenant.sa1, tenant.sa1_key, provider="sendgrid",
                            account_id="sg", secret="SG.test", base_url=carrier.url)
    await add_sender(api, tenant.sa1, tenant.sa1_key, pa, address="news@acme.example",
                     channel="email", kind="email")
    await hub.pool.execute(
        """INSERT INTO contacts (sub_account_id, email, email_key, first_name, timezone, tags)
           VALUES ($1, 'Pat@Example.com', 'pat@example.com', 'Pat', 'Etc/GMT', '{all}')""",
        uuid.UUID(tenant.sa1))
    await launch(api, tenant, channel="email", subject="Spring news", body="Hi {{first_name}}")

    async def delivered() -> dict[str, Any] | None:
        emails = [q for q in await carrier_requests(carrier_log) if q["channel"] == "email"]
        return emails[0] if emails else None
    email = await wait_for(delivered, timeout=30)
    headers = email["headers"]
    # One-click (List-Unsubscribe-Post) is only advertised for https; this server is http.
    assert headers.get("List-Unsubscribe-Post", "List-Unsubscribe=One-Click") == \
        "List-Unsubscribe=One-Click"
    link = headers["List-Unsubscribe"].split(",")[0].strip("<> ")
    path = httpx.URL(link).raw_path.decode()
    assert path.startswith(f"/v1/unsubscribe/{email['message_id']}?sig=")

    # Forged links: another message id with this token, a tampered token, no token.
    other = f"/v1/unsubscribe/{uuid.uuid4()}?{httpx.URL(link).query.decode()}"
    bad_sig = path[:-3] + ("aaa" if not path.endswith("aaa") else "bbb")
    no_sig = path.split("?")[0]
    for forged in (other, bad_sig, no_sig):
        assert_problem(await api.post(forged, data={"List-Unsubscribe": "One-Click"}), 403)
        assert (await api.get(forged)).status_code == 403
    page = await api.get(path)  # a person opening the link: a button, no effect yet
    assert page.status_code == 200 and "<form method=\"post\"" in page.text
    assert not await hub.pool.fetchval("SELECT count(*) FROM suppressions")

    r = await api.post(path, data={"List-Unsubscribe": "One-Click"})  # RFC 8058
    assert r.status_code == 200, r.text
    again = await api.post(path, data={"List-Unsubscribe": "One-Click"})
    assert again.status_code == 200
    sups = (await api.get(f"/v1/sub-accounts/{tenant.sa1}/suppressions", headers=h)).json()
    assert [(s["channel"], s["address"], s["source"]) for s in sups["data"]] == [
        ("email", "pat@example.com", "opt_out")]
