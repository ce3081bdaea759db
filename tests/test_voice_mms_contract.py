"""Voice and MMS content follow one contract on every path (one message, campaign,
template), shown on the real gateway, Ray shards, PostgreSQL and a sandbox carrier that
posts signed call callbacks (its request log is the ground truth): a call speaks
`voice.say`, else `body`; an MMS needs media; a call that ends busy or unanswered says why."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from channels.sandbox import run_carrier_in_thread
from channels.sandbox_config import CarrierConfig, Latency
from channels.twilio_voice import parse_call_status
from hub.context import Hub
from hub.status import Status
from tests.conftest import Tenant, assert_problem, auth
from tests.test_campaigns import open_window_now, stats, tenant
from tests.test_sending import wait_for
from tests.test_webhooks import add_provider, add_sender

__all__ = ["tenant"]  # its first sub-account has no quiet hours

CALLER, TEXTER = "+12125550161", "+12125550162"
FINAL = ("delivered", "undelivered", "failed")


@pytest.fixture(scope="module")
def live_carrier() -> Iterator[Any]:
    """A carrier whose calls end quickly and post signed status callbacks to the gateway."""
    handle = run_carrier_in_thread(CarrierConfig(
        seed=31, latency=Latency(kind="fixed", seconds=0.05), call_duration_s=0.1))
    yield handle
    handle.stop()


async def senders(api: httpx.AsyncClient, tenant: Tenant, carrier: Any) -> None:
    """A Twilio account on the carrier with a voice number and an SMS/MMS number."""
    pa = await add_provider(api, tenant, tenant.sa1, tenant.sa1_key,
                            account_id="AC" + "c" * 32, secret="sandbox-token",
                            base_url=carrier.url)
    await add_sender(api, tenant.sa1, tenant.sa1_key, pa, address=CALLER, channel="voice")
    await add_sender(api, tenant.sa1, tenant.sa1_key, pa, address=TEXTER)


async def send(api: httpx.AsyncClient, tenant: Tenant, key: str, **body: Any) -> httpx.Response:
    return await api.post(f"/v1/sub-accounts/{tenant.sa1}/messages", json=body,
                          headers={**auth(tenant.sa1_key), "Idempotency-Key": key})


async def campaign(api: httpx.AsyncClient, tenant: Tenant, **body: Any) -> httpx.Response:
    start, end = open_window_now()
    return await api.post(f"/v1/sub-accounts/{tenant.sa1}/campaigns", headers=auth(
        tenant.sa1_key), json={"name": "Calls", "audience": {"tags_any": ["all"]},
                               "window_start": start, "window_end": end, **body})


async def contacts(hub: Hub, tenant: Tenant, *phones: str) -> None:
    await hub.pool.execute(
        """INSERT INTO contacts (sub_account_id, phone, first_name, timezone, tags)
           SELECT $1, unnest($2::text[]), 'Pat', 'Etc/GMT', '{all}'""",
        uuid.UUID(tenant.sa1), list(phones))


async def launch(api: httpx.AsyncClient, tenant: Tenant, cid: str) -> None:
    r = await api.post(f"/v1/sub-accounts/{tenant.sa1}/campaigns/{cid}/launch",
                       headers=auth(tenant.sa1_key))
    assert r.status_code == 200, r.text


async def settled(hub: Hub, where: str, arg: Any, n: int) -> list[dict[str, Any]]:
    """The `n` messages matching `where` once each has a final status."""
    async def done() -> list[dict[str, Any]] | None:
        rows = await hub.pool.fetch(f"SELECT * FROM messages WHERE {where}", arg)
        return ([dict(r) for r in rows]
                if len(rows) == n and all(r["status"] in FINAL for r in rows) else None)
    return list(await wait_for(done, timeout=60, every=0.2))


def calls_to(carrier: Any, *numbers: str) -> dict[str, list[str]]:
    """The TwiML of the calls the carrier accepted, by number called."""
    calls: dict[str, list[str]] = {}
    for r in carrier.call(carrier.carrier.requests):
        if r["channel"] == "voice" and r["to"] in numbers:
            calls.setdefault(r["to"], []).append(r["body"])
    return calls


# --- 1. one rule for a call's words ------------------------------------------------------------


async def test_a_call_speaks_voice_say_else_body_on_every_path(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant, live_carrier: Any
) -> None:
    await senders(api, tenant, live_carrier)
    # One message: the body alone is what the call says (it was refused).
    one = await send(api, tenant, "body-only", channel="voice", to="+14155550171",
                     body="Your table is ready")
    assert one.status_code == 202, one.text
    two = await send(api, tenant, "say-only", channel="voice", to="+14155550172",
                     voice={"say": "Your car is ready"})
    assert two.status_code == 202, two.text
    for key, body in (("nothing", {}), ("blank", {"body": "  ", "voice": {"say": " "}})):
        problem = assert_problem(await send(api, tenant, key, channel="voice",
                                            to="+14155550173", **body), 422, field="voice.say")
        assert "body" in problem["errors"][0]["message"]
    # A campaign: voice.say alone (it needed a body never spoken) or body alone.
    said = await campaign(api, tenant, channel="voice", voice={"say": "Hi {{ first_name }}"})
    assert said.status_code == 201, said.text
    bodied = await campaign(api, tenant, channel="voice", body="Hello {{ first_name }}")
    assert bodied.status_code == 201, bodied.text
    assert bodied.json()["voice"]["say"] == "Hello {{ first_name }}"
    assert_problem(await campaign(api, tenant, channel="voice"), 422, field="voice.say")
    # A voice template's body is the call's words for a campaign made from it.
    t = await api.post(f"/v1/sub-accounts/{tenant.sa1}/templates", headers=auth(
        tenant.sa1_key), json={"name": "reminder", "channel": "voice",
                               "body": "Reminder for {{ first_name }}"})
    assert t.status_code == 201, t.text
    from_template = await campaign(api, tenant, channel="voice", template_id=t.json()["id"])
    assert from_template.status_code == 201, from_template.text

    ids = [uuid.UUID(x.json()["id"]) for x in (one, two)]
    await settled(hub, "id = ANY($1::uuid[])", ids, 2)
    calls = calls_to(live_carrier, "+14155550171", "+14155550172")
    assert "<Say>Your table is ready</Say>" in calls["+14155550171"][0], calls
    assert "<Say>Your car is ready</Say>" in calls["+14155550172"][0], calls

    await contacts(hub, tenant, "+14155550174")
    for c in (bodied, from_template):
        await launch(api, tenant, c.json()["id"])
        await settled(hub, "campaign_id = $1", uuid.UUID(c.json()["id"]), 1)
    (twiml, other) = sorted(calls_to(live_carrier, "+14155550174")["+14155550174"])
    assert "<Say>Hello Pat</Say>" in twiml and "<Say>Reminder for Pat</Say>" in other


# --- 3. unanswered calls say why ---------------------------------------------------------------


def test_an_unanswered_call_records_its_status_as_the_error() -> None:
    form = {"CallSid": "CA" + "1" * 32, "SequenceNumber": "2"}
    for raw, status in (("busy", Status.UNDELIVERED), ("no-answer", Status.UNDELIVERED),
                        ("failed", Status.FAILED), ("canceled", Status.CANCELED)):
        update = parse_call_status({**form, "CallStatus": raw}, {})
        assert (update.status, update.error_code) == (status, raw)
    assert parse_call_status({**form, "CallStatus": "completed"}, {}).error_code is None
    # Twilio's own code, when it gives one, is kept.
    assert parse_call_status({**form, "CallStatus": "failed", "ErrorCode": "13224"},
                             {}).error_code == "13224"


async def test_busy_and_unanswered_calls_show_why_in_the_message_and_stats(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant, live_carrier: Any
) -> None:
    await senders(api, tenant, live_carrier)
    live_carrier.configure(no_answer_rate=1.0)
    try:
        r = await send(api, tenant, "unanswered", channel="voice", to="+14155550181",
                       voice={"say": "Your order shipped"})
        assert r.status_code == 202, r.text
        (m,) = await settled(hub, "id = $1", uuid.UUID(r.json()["id"]), 1)
        live_carrier.configure(no_answer_rate=0.0, busy_rate=1.0)
        got = await api.get(f"/v1/sub-accounts/{tenant.sa1}/messages/{m['id']}",
                            headers=auth(tenant.sa1_key))
        assert (got.json()["status"], got.json()["error_code"]) == ("undelivered", "no-answer")

        phones = [f"+1415555019{i}" for i in range(3)]
        await contacts(hub, tenant, *phones)
        c = await campaign(api, tenant, channel="voice", voice={"say": "Sale today"},
                           failure_threshold=1.0)
        assert c.status_code == 201, c.text
        await launch(api, tenant, c.json()["id"])
        await settled(hub, "campaign_id = $1", uuid.UUID(c.json()["id"]), 3)
    finally:
        live_carrier.configure(no_answer_rate=0.0, busy_rate=0.0)
    assert (await stats(api, tenant, c.json()["id"]))["top_errors"] == [
        {"code": "busy", "count": 3}]
    assert set(calls_to(live_carrier, *phones)) == set(phones)  # each call was placed


# --- 4. an MMS needs media ---------------------------------------------------------------------


async def test_an_mms_without_media_is_refused_on_every_path(
    api: httpx.AsyncClient, tenant: Tenant, live_carrier: Any
) -> None:
    await senders(api, tenant, live_carrier)
    before = len(live_carrier.call(live_carrier.carrier.requests))
    problem = assert_problem(await send(api, tenant, "mms-bare", channel="mms",
                                        to="+14155550201", body="Look at this"),
                             422, field="media_urls")
    assert "send an SMS instead" in problem["errors"][0]["message"]
    assert_problem(await campaign(api, tenant, channel="mms", body="Look at this"), 422,
                   field="media_urls")
    t = await api.post(f"/v1/sub-accounts/{tenant.sa1}/templates", headers=auth(
        tenant.sa1_key), json={"name": "bare", "channel": "mms", "body": "Look"})
    assert_problem(t, 422, field="media_urls")
    # With media it is accepted, and an SMS still needs no media.
    r = await send(api, tenant, "mms-media", channel="mms", to="+14155550201", body="Look",
                   media_urls=["https://cdn.example/a.jpg"])
    assert r.status_code == 202, r.text
    r = await send(api, tenant, "sms", to="+14155550202", body="Hi")
    assert r.status_code == 202, r.text

    async def both() -> list[dict[str, Any]] | None:
        log = live_carrier.call(live_carrier.carrier.requests)[before:]
        return log if len(log) >= 2 else None

    log = await wait_for(both, timeout=30)
    assert sorted((q["to"], len(q["media_urls"] or ())) for q in log) == [
        ("+14155550201", 1), ("+14155550202", 0)]
