"""Idempotency-Key on sends through the real gateway, Ray sender shards, PostgreSQL and the
sandbox carrier (its request log is the ground truth): racing requests with one key make
one effect, a retry replays, a failed request leaves its key free."""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID

import httpx

from hub.context import Hub
from tests.conftest import Tenant, assert_problem, auth
from tests.test_sending import carrier, carrier_log, carrier_requests, setup_sms, wait_for

__all__ = ["carrier", "carrier_log"]  # fixtures shared with test_sending

TO = "+14155552671"


async def _messages(hub: Hub, sa: str) -> list[Any]:
    return list(await hub.pool.fetch(
        "SELECT id, status FROM messages WHERE sub_account_id = $1", UUID(sa)))


async def _created_events(hub: Hub, sa: str) -> int:
    return int(await hub.pool.fetchval(
        "SELECT count(*) FROM events WHERE sub_account_id = $1 AND type = 'message.created'",
        UUID(sa)))


def _send(tenant: Tenant, key: str, text: str) -> tuple[str, dict[str, str], dict[str, str]]:
    """The send route, its headers with `key`, and a body texting `text` to TO."""
    return (f"/v1/sub-accounts/{tenant.sa1}/messages",
            {**auth(tenant.sa1_key), "Idempotency-Key": key},
            {"channel": "sms", "to": TO, "body": text})


async def _sent_once(hub: Hub, tenant: Tenant, carrier_log: httpx.AsyncClient) -> str:
    """The one message of the sub-account, once the carrier has it; checks one request."""
    async def sent() -> list[Any] | None:
        rows = await _messages(hub, tenant.sa1)
        return rows if rows and all(r["status"] == "sent" for r in rows) else None

    rows = await wait_for(sent)
    assert len(rows) == 1
    reqs = [q for q in await carrier_requests(carrier_log) if q["to"] == TO]
    assert len(reqs) == 1
    return str(rows[0]["id"])


async def test_racing_sends_with_one_key_make_one_message_and_one_carrier_request(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant, carrier: Any,
    carrier_log: httpx.AsyncClient
) -> None:
    await setup_sms(api, tenant, carrier.url)
    url, h, body = _send(tenant, "race", "one of eight")
    rs = await asyncio.gather(*[api.post(url, headers=h, json=body) for _ in range(8)])
    assert [r.status_code for r in rs] == [202] * 8, [r.text for r in rs]
    assert len({r.json()["id"] for r in rs}) == 1
    # Exactly one request did the work; the others answered from its record.
    assert sum("Idempotent-Replayed" not in r.headers for r in rs) == 1
    assert await _sent_once(hub, tenant, carrier_log) == rs[0].json()["id"]
    assert await _created_events(hub, tenant.sa1) == 1


async def test_a_retry_replays_and_another_body_is_refused(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant, carrier: Any,
    carrier_log: httpx.AsyncClient
) -> None:
    await setup_sms(api, tenant, carrier.url)
    url, h, body = _send(tenant, "retry", "once")
    first = await api.post(url, headers=h, json=body)
    assert first.status_code == 202 and "Idempotent-Replayed" not in first.headers
    again = await api.post(url, headers=h, json=body)
    assert again.status_code == 202 and again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    other = await api.post(url, headers=h, json={**body, "body": "twice"})
    assert_problem(other, 422, "idempotency_key_reused", field="Idempotency-Key")
    assert await _sent_once(hub, tenant, carrier_log) == first.json()["id"]
    assert await _created_events(hub, tenant.sa1) == 1


async def test_a_failed_send_leaves_its_key_free_for_the_retry(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant, carrier: Any,
    carrier_log: httpx.AsyncClient
) -> None:
    url, h, body = _send(tenant, "after-setup", "when ready")
    refused = await api.post(url, headers=h, json=body)  # no sender yet
    assert_problem(refused, 422, field="channel")
    assert await hub.pool.fetchval("SELECT count(*) FROM idempotency_keys") == 0
    assert await hub.pool.fetchval(  # the contact the refused send made was undone too
        "SELECT count(*) FROM contacts WHERE sub_account_id = $1", UUID(tenant.sa1)) == 0
    await setup_sms(api, tenant, carrier.url)
    ok = await api.post(url, headers=h, json=body)
    assert ok.status_code == 202 and "Idempotent-Replayed" not in ok.headers
    assert await _sent_once(hub, tenant, carrier_log) == ok.json()["id"]
