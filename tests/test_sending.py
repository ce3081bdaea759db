"""Sending one message through the real gateway, Ray sender shards and the sandbox carrier;
the carrier's request log is the ground truth."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from channels.sandbox import run_carrier_in_thread
from channels.sandbox_config import CarrierConfig
from hub.context import Hub
from tests.conftest import Tenant, assert_problem, auth


@pytest.fixture(scope="session")
def carrier() -> Iterator[Any]:
    handle = run_carrier_in_thread(CarrierConfig(seed=7, callbacks_enabled=False))
    yield handle
    handle.stop()


@pytest.fixture
async def carrier_log(carrier: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=carrier.url, timeout=10) as client:
        await client.delete("/sandbox/requests")
        await client.post("/sandbox/config", json={"callbacks_enabled": False})
        yield client


async def setup_sms(api: httpx.AsyncClient, tenant: Tenant, carrier_url: str,
                    numbers: tuple[str, ...] = ("+12125550100",),
                    mps: float = 50, account: tuple[str, str] = ("AC" + "a" * 32,
                                                                "sandbox-token"),
                    ) -> list[dict[str, Any]]:
    """A Twilio provider account (`account`: SID and token) on the carrier, and an SMS
    sender for each number."""
    h = auth(tenant.sa1_key)
    p = await api.post(f"/v1/sub-accounts/{tenant.sa1}/providers", headers=h, json={
        "provider": "twilio", "name": "sandbox", "account_id": account[0],
        "secret": account[1], "base_url": carrier_url})
    assert p.status_code == 201, p.text
    senders = []
    for n in numbers:
        s = await api.post(f"/v1/sub-accounts/{tenant.sa1}/senders", headers=h, json={
            "provider_account_id": p.json()["id"], "channel": "sms", "kind": "toll_free",
            "address": n, "mps": mps})
        assert s.status_code == 201, s.text
        senders.append(s.json())
    return senders


async def wait_for(pred: Any, timeout: float = 60.0, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await pred()
        if value:
            return value
        await asyncio.sleep(every)
    raise AssertionError("condition not met in time")


async def carrier_requests(log: httpx.AsyncClient) -> list[dict[str, Any]]:
    r = await log.get("/sandbox/requests", params={"limit": 1_000_000})
    body = r.json()
    return body["requests"] if isinstance(body, dict) else body


async def test_send_sms_reaches_the_carrier_once(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant, carrier: Any,
    carrier_log: httpx.AsyncClient
) -> None:
    await setup_sms(api, tenant, carrier.url)
    h = {**auth(tenant.sa1_key), "Idempotency-Key": "first-text"}
    body = {"channel": "sms", "to": "(415) 555-2671", "body": "Your table is ready 🍽"}
    r = await api.post(f"/v1/sub-accounts/{tenant.sa1}/messages", headers=h, json=body)
    assert r.status_code == 202, r.text
    msg = r.json()
    assert msg["status"] == "queued" and msg["to_address"] == "+14155552671"
    assert msg["segments"] == 1 and msg["encoding"] == "UCS-2"
    again = await api.post(f"/v1/sub-accounts/{tenant.sa1}/messages", headers=h, json=body)
    assert again.json()["id"] == msg["id"]

    async def sent() -> dict[str, Any] | None:
        m = (await api.get(f"/v1/sub-accounts/{tenant.sa1}/messages/{msg['id']}",
                           headers=auth(tenant.sa1_key))).json()
        return m if m["status"] == "sent" else None

    final = await wait_for(sent)
    assert final["provider_message_id"].startswith("SM")
    assert [s["status"] for s in final["history"]][:1] == ["queued"]
    reqs = [q for q in await carrier_requests(carrier_log) if q["to"] == "+14155552671"]
    assert len(reqs) == 1 and reqs[0]["body"] == body["body"]
    assert reqs[0]["provider_sid"] == final["provider_message_id"]
    # The contact and its conversation now exist.
    convs = (await api.get(f"/v1/sub-accounts/{tenant.sa1}/conversations",
                           headers=auth(tenant.sa1_key))).json()["data"]
    assert [c["id"] for c in convs] == [final["conversation_id"]]


async def test_suppressed_recipient_is_refused_without_a_provider_call(
    api: httpx.AsyncClient, tenant: Tenant, carrier: Any, carrier_log: httpx.AsyncClient
) -> None:
    await setup_sms(api, tenant, carrier.url)
    h = auth(tenant.sa1_key)
    await api.post(f"/v1/sub-accounts/{tenant.sa1}/suppressions", headers=h, json={
        "channel": "sms", "address": "+14155550111", "reason": "texted STOP"})
    r = await api.post(f"/v1/sub-accounts/{tenant.sa1}/messages",
                       headers={**h, "Idempotency-Key": "k1"},
                       json={"to": "+14155550111", "body": "hi"})
    assert_problem(r, 409, "recipient_suppressed", field="to")
    missing_key = await api.post(f"/v1/sub-accounts/{tenant.sa1}/messages", headers=h,
                                 json={"to": "+14155550112", "body": "hi"})
    assert_problem(missing_key, 422, field="Idempotency-Key")
    await asyncio.sleep(1.0)
    assert [q for q in await carrier_requests(carrier_log)
            if q["to"] in ("+14155550111", "+14155550112")] == []


async def test_cancel_works_until_the_send_begins(
    api: httpx.AsyncClient, tenant: Tenant, carrier: Any, carrier_log: httpx.AsyncClient
) -> None:
    # A slow sender (one message per 20 s): the second message waits in its lane.
    await setup_sms(api, tenant, carrier.url, mps=0.05)
    h = auth(tenant.sa1_key)
    first = await api.post(f"/v1/sub-accounts/{tenant.sa1}/messages",
                           headers={**h, "Idempotency-Key": "goes"},
                           json={"to": "+14155550121", "body": "on its way"})
    second = await api.post(f"/v1/sub-accounts/{tenant.sa1}/messages",
                            headers={**h, "Idempotency-Key": "stays"},
                            json={"to": "+14155550122", "body": "never mind"})
    c = await api.post(f"/v1/sub-accounts/{tenant.sa1}/messages/{second.json()['id']}/cancel",
                       headers=h)
    assert c.status_code == 200 and c.json()["status"] == "canceled"

    async def first_sent() -> bool:
        m = (await api.get(f"/v1/sub-accounts/{tenant.sa1}/messages/{first.json()['id']}",
                           headers=h)).json()
        return m["status"] == "sent"

    await wait_for(first_sent)
    again = await api.post(f"/v1/sub-accounts/{tenant.sa1}/messages/{first.json()['id']}/cancel",
                           headers=h)
    assert_problem(again, 409, "not_cancelable")
    await asyncio.sleep(1.0)
    tos = [q["to"] for q in await carrier_requests(carrier_log)]
    assert tos.count("+14155550121") == 1 and "+14155550122" not in tos


async def test_actor_metrics_reach_prometheus_through_ray(
    api: httpx.AsyncClient, tenant: Tenant, carrier: Any, carrier_log: httpx.AsyncClient
) -> None:
    from actors import ray_api

    await setup_sms(api, tenant, carrier.url)
    r = await api.post(f"/v1/sub-accounts/{tenant.sa1}/messages",
                       headers={**auth(tenant.sa1_key), "Idempotency-Key": "metrics"},
                       json={"to": "+14155550133", "body": "counted"})
    assert r.status_code == 202
    url = ray_api.metrics_url()
    assert url is not None
    async with httpx.AsyncClient(timeout=10) as http:

        async def exported() -> bool:
            body = (await http.get(url)).text
            return 'ray_hub_messages_total{' in body and 'channel="sms"' in body and \
                "ray_hub_provider_latency_seconds" in body

        await wait_for(exported, timeout=60, every=1.0)


async def test_claims_take_priority_order_skip_own_leases_and_get_expired_ones_back(
    hub: Hub, tenant: Tenant
) -> None:
    from hub.store import sending as store

    slot = 9_999  # no shard owns it: only this test claims these messages
    # Oldest first within a priority; bulk created long before the reply still goes after.
    ids = await hub.pool.fetch(
        """INSERT INTO messages (sub_account_id, direction, channel, priority, from_address,
                                 to_address, status, slot, created_at)
           SELECT $1, 'outbound', 'sms', p, '+12125550100', '+1415555' || (1000 + i)::text,
                  'queued', $2, now() - make_interval(secs => 100 - i)
           FROM unnest(ARRAY['bulk', 'bulk', 'bulk', 'transactional', 'reply',
                             'transactional']) WITH ORDINALITY AS u(p, i)
           RETURNING id, priority""", tenant.sa1, slot)
    by_priority = {p: [r["id"] for r in ids if r["priority"] == p]
                   for p in ("reply", "transactional", "bulk")}

    first = await store.lease_queued(hub.pool, "shard-a", ["sms"], [slot], 4, 60)
    assert {r["id"] for r in first} == {*by_priority["reply"], *by_priority["transactional"],
                                        by_priority["bulk"][0]}
    # The next claim does not hand shard-a what it already holds.
    second = await store.lease_queued(hub.pool, "shard-a", ["sms"], [slot], 10, 60)
    assert {r["id"] for r in second} == set(by_priority["bulk"][1:])
    assert await store.lease_queued(hub.pool, "shard-a", ["sms"], [slot], 10, 60) == []

    # A lease that expired (its shard died) goes back to whoever owns the slot now.
    await hub.pool.execute("UPDATE messages SET lease_expires_at = now() - interval '1 s' "
                           "WHERE id = $1", by_priority["reply"][0])
    assert await store.release_stale(hub.pool, "shard-b", ["sms"], [slot], own=False) == 1
    taken = await store.lease_queued(hub.pool, "shard-b", ["sms"], [slot], 10, 60)
    assert [r["id"] for r in taken] == by_priority["reply"]
    # A restarted shard-a hands back what its previous incarnation held, and claims it anew.
    assert await store.release_stale(hub.pool, "shard-a", ["sms"], [slot], own=True) == 5
    again = await store.lease_queued(hub.pool, "shard-a", ["sms"], [slot], 10, 60)
    assert len(again) == 5 and by_priority["reply"][0] not in {r["id"] for r in again}


async def test_a_text_to_the_sub_accounts_own_number_is_refused(
    api: httpx.AsyncClient, tenant: Tenant, carrier: Any, carrier_log: httpx.AsyncClient
) -> None:
    """A contact holding the sub-account's own sender number (review R5: an agent's reply
    went from +12125550100 to +12125550100, which the carrier refuses)."""
    await setup_sms(api, tenant, carrier.url)
    h = auth(tenant.sa1_key)
    r = await api.post(f"/v1/sub-accounts/{tenant.sa1}/messages",
                       headers={**h, "Idempotency-Key": "self"},
                       json={"to": "(212) 555-0100", "body": "hi"})
    assert_problem(r, 422, "validation_failed", field="to")
    assert "own sender" in r.json()["errors"][0]["message"]
    await asyncio.sleep(0.5)
    assert [q for q in await carrier_requests(carrier_log) if q["to"] == "+12125550100"] == []
