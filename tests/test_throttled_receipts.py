"""Throttling that Twilio reports after accepting a message (a 201, then a `failed` callback
with 30022): the hub queues the message again instead of failing it, and a receipt from the
retired attempt moves nothing. Real gateway, shards, PostgreSQL and the sandbox carrier,
whose log is the ground truth."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from twilio.request_validator import RequestValidator

from channels.sandbox import run_carrier_in_thread
from channels.sandbox_config import CarrierConfig, Latency
from config.settings import Settings
from hub.context import Hub
from tests.conftest import Tenant, auth
from tests.test_campaigns import make_campaign, tenant
from tests.test_sending import setup_sms, wait_for

__all__ = ["tenant"]  # its first sub-account has no quiet hours

NUMBER = "+12125550177"


@pytest.fixture(scope="module")
def live_carrier() -> Iterator[Any]:
    """A carrier that posts signed status callbacks to the gateway."""
    handle = run_carrier_in_thread(CarrierConfig(seed=23, latency=Latency(kind="fixed",
                                                                          seconds=0.05)))
    yield handle
    handle.stop()


async def _sender(api: httpx.AsyncClient, tenant: Tenant, carrier: Any) -> None:
    """The number's account as the carrier knows it (so its callbacks verify); the hub
    believes the number may go faster than it can."""
    state = carrier.carrier.state
    sid = state.owner_of(NUMBER)
    await setup_sms(api, tenant, carrier.url, numbers=(NUMBER,), mps=100,
                    account=(sid, state.token_for(sid)))


async def test_throttled_receipts_queue_again_until_each_text_is_delivered_once(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant, live_carrier: Any
) -> None:
    await _sender(api, tenant, live_carrier)
    # Downstream, the number takes 10 a second with 2 waiting; beyond that Twilio accepts
    # the message and then fails it with 30022 (A2P 10DLC rate limit exceeded).
    live_carrier.configure(mps=10.0, queue_limit=2, queue_overflow="30022")
    try:
        h = auth(tenant.sa1_key)
        to = [f"+1415555{2000 + i}" for i in range(30)]
        ids = []
        for i, number in enumerate(to):
            r = await api.post(f"/v1/sub-accounts/{tenant.sa1}/messages",
                               headers={**h, "Idempotency-Key": f"throttled-{i}"},
                               json={"to": number, "body": f"Order {i} shipped"})
            assert r.status_code == 202, r.text
            ids.append(r.json()["id"])

        async def settled() -> list[Any] | None:
            rows = await hub.pool.fetch("SELECT status FROM messages WHERE id = ANY($1::uuid[])",
                                        ids)
            done = [r["status"] for r in rows]
            return done if all(s in ("delivered", "failed", "undelivered") for s in done) \
                else None

        statuses = await wait_for(settled, timeout=120, every=0.5)
    finally:
        live_carrier.configure(mps=0.0, queue_limit=0, queue_overflow="429")

    assert collections.Counter(statuses) == {"delivered": 30}  # none failed
    log = [r for r in live_carrier.call(live_carrier.carrier.requests) if r["from"] == NUMBER]
    throttled = [r for r in log if r["error_code"] == 30022]
    assert throttled, "the carrier never throttled: the test proves nothing"
    delivered = collections.Counter(r["to"] for r in log if r["outcome"] == "delivered")
    assert delivered == dict.fromkeys(to, 1)  # every text arrived, exactly once
    # Each 30022 became one re-queue, recorded in the message's history.
    requeues = await hub.pool.fetchval(
        """SELECT count(*) FROM message_events
           WHERE message_id = ANY($1::uuid[]) AND provider_status = 'requeued'""", ids)
    assert requeues == len(throttled)


async def test_a_receipt_naming_another_attempt_moves_nothing(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant, live_carrier: Any, settings: Settings
) -> None:
    await _sender(api, tenant, live_carrier)
    live_carrier.configure(callbacks_enabled=False)  # the text stays `sent` until we say
    try:
        r = await api.post(f"/v1/sub-accounts/{tenant.sa1}/messages",
                           headers={**auth(tenant.sa1_key), "Idempotency-Key": "retired"},
                           json={"to": "+14155553000", "body": "Your code is 1234"})
        assert r.status_code == 202, r.text
        mid = r.json()["id"]

        async def sent() -> Any:
            return await hub.pool.fetchrow(
                "SELECT status, provider_message_id FROM messages WHERE id = $1 "
                "AND status = 'sent'", mid)

        row = await wait_for(sent, timeout=60)
    finally:
        live_carrier.configure(callbacks_enabled=True)
    state = live_carrier.carrier.state
    account, token = state.owner_of(NUMBER), state.token_for(state.owner_of(NUMBER))

    async def callback(message_sid: str, status: str) -> None:
        url = f"{settings.base_url}/v1/providers/twilio/sms/status?message_id={mid}"
        form = {"AccountSid": account, "MessageSid": message_sid, "MessageStatus": status,
                "From": NUMBER, "To": "+14155553000"}
        signature = RequestValidator(token).compute_signature(url, form)
        answer = await api.post(url, data=form, headers={"X-Twilio-Signature": signature})
        assert answer.status_code in (200, 204), answer.text

        async def applied() -> bool:
            return bool(await hub.pool.fetchval(
                """SELECT count(*) FROM webhook_events WHERE status <> 'pending'
                   AND payload->'form'->>'MessageSid' = $1
                   AND payload->'form'->>'MessageStatus' = $2""", message_sid, status))

        await wait_for(applied, timeout=30)

    # Signed and well-formed, naming our message, but another attempt's SID (one retired by
    # a re-queue): it must not move the attempt in flight.
    await callback("SM" + "e" * 32, "delivered")
    after = await hub.pool.fetchrow(
        "SELECT status, provider_message_id FROM messages WHERE id = $1", mid)
    assert dict(after) == dict(row)
    await callback(row["provider_message_id"], "delivered")  # its own receipt does
    assert await hub.pool.fetchval("SELECT status FROM messages WHERE id = $1",
                                   mid) == "delivered"


async def test_a_throttled_receipt_after_a_pause_or_a_cancel_sends_nothing_more(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant, live_carrier: Any, settings: Settings
) -> None:
    """A campaign's text is accepted, the campaign is paused, and then Twilio reports the
    text throttled: the message goes back to a pending recipient like the campaign's other
    queued messages, not to the queue; after a cancel, it is canceled."""
    await _sender(api, tenant, live_carrier)
    to = ["+14155554001", "+14155554002", "+14155554003"]
    # A fourth contact, at UTC+12, is outside the window for hours: the campaign stays
    # running once the others are sent.
    await hub.pool.execute(
        """INSERT INTO contacts (sub_account_id, phone, first_name, timezone, tags)
           SELECT $1, p, 'Pat', z, ARRAY['all']
           FROM unnest($2::text[], $3::text[]) AS u(p, z)""",
        tenant.sa1, [*to, "+14155554004"], ["UTC"] * len(to) + ["Etc/GMT-12"])
    live_carrier.configure(callbacks_enabled=False)  # texts stay `sent` until we say
    try:
        c = await make_campaign(api, tenant)
        base = f"/v1/sub-accounts/{tenant.sa1}/campaigns/{c['id']}"
        h = auth(tenant.sa1_key)
        assert (await api.post(f"{base}/launch", headers=h)).json()["status"] == "running"

        async def all_sent() -> list[Any] | None:
            rows = await hub.pool.fetch(
                """SELECT id, to_address, provider_message_id FROM messages
                   WHERE campaign_id = $1 AND status = 'sent' ORDER BY to_address""", c["id"])
            return rows if len(rows) == len(to) else None

        first, second, _ = await wait_for(all_sent, timeout=60)
    finally:
        live_carrier.configure(callbacks_enabled=True)
    state = live_carrier.carrier.state
    account, token = state.owner_of(NUMBER), state.token_for(state.owner_of(NUMBER))

    async def throttled_receipt(message: Any) -> None:
        url = (f"{settings.base_url}/v1/providers/twilio/sms/status"
               f"?message_id={message['id']}")
        form = {"AccountSid": account, "MessageSid": message["provider_message_id"],
                "MessageStatus": "failed", "ErrorCode": "30022", "From": NUMBER,
                "To": message["to_address"]}
        signature = RequestValidator(token).compute_signature(url, form)
        answer = await api.post(url, data=form, headers={"X-Twilio-Signature": signature})
        assert answer.status_code in (200, 204), answer.text

        async def applied() -> bool:
            return bool(await hub.pool.fetchval(
                """SELECT count(*) FROM webhook_events WHERE status <> 'pending'
                   AND payload->'form'->>'MessageSid' = $1""", message["provider_message_id"]))

        await wait_for(applied, timeout=30)

    async def recipient(message: Any) -> Any:
        return await hub.pool.fetchrow(
            """SELECT r.status, m.status AS message_status
               FROM campaign_recipients r JOIN contacts k ON k.id = r.contact_id
               LEFT JOIN messages m ON m.id = r.message_id
               WHERE r.campaign_id = $1 AND k.phone = $2""", c["id"], message["to_address"])

    assert (await api.post(f"{base}/pause", headers=h)).json()["status"] == "paused"
    await throttled_receipt(first)
    assert dict(await recipient(first)) == {"status": "pending", "message_status": None}
    assert await hub.pool.fetchval("SELECT count(*) FROM messages WHERE campaign_id = $1 "
                                   "AND status = 'queued'", c["id"]) == 0

    assert (await api.post(f"{base}/cancel", headers=h)).json()["status"] == "canceled"
    await throttled_receipt(second)
    assert await hub.pool.fetchval("SELECT status FROM messages WHERE id = $1",
                                   second["id"]) == "canceled"
    assert (await recipient(first))["status"] == "canceled"

    await asyncio.sleep(3.0)  # a re-queued text would have gone by now (back-off 1-2 s)
    log = live_carrier.call(live_carrier.carrier.requests)
    assert collections.Counter(r["to"] for r in log if r["to"] in to) == dict.fromkeys(to, 1)
