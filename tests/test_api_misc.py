"""Suppressions, the event log, conversations/messages reads, and the ops endpoints."""

from __future__ import annotations

import httpx

from hub.context import Hub
from tests.conftest import Tenant, assert_problem, auth


async def test_suppressions_add_is_idempotent_and_removal_keeps_history(
    api: httpx.AsyncClient, tenant: Tenant
) -> None:
    url, h = f"/v1/sub-accounts/{tenant.sa1}/suppressions", auth(tenant.sa1_key)
    a = await api.post(url, headers=h, json={"channel": "sms", "address": "(212) 555-0100",
                                             "reason": "asked by phone"})
    assert a.status_code == 201 and a.json()["address"] == "+12125550100"
    assert a.json()["created_by"].startswith("api_key:") and a.json()["source"] == "api"
    again = await api.post(url, headers=h, json={"channel": "sms", "address": "+12125550100",
                                                 "reason": "again"})
    assert again.status_code == 200 and again.json()["id"] == a.json()["id"]
    e = await api.post(url, headers=h, json={"channel": "email", "address": "Ada@Example.com",
                                             "reason": "bounced"})
    assert e.json()["address"] == "ada@example.com"
    bad = await api.post(url, headers=h, json={"channel": "fax", "address": "x", "reason": "r"})
    assert_problem(bad, 422, field="channel")
    bad = await api.post(url, headers=h, json={"channel": "sms", "address": "nope", "reason": "r"})
    assert_problem(bad, 422, field="address")

    no_reason = await api.delete(f"{url}/{a.json()['id']}", headers=h)
    assert_problem(no_reason, 422, field="reason")
    removed = await api.delete(f"{url}/{a.json()['id']}", headers=h,
                               params={"reason": "customer re-subscribed in store"})
    assert removed.status_code == 200
    assert removed.json()["removed_reason"] == "customer re-subscribed in store"
    twice = await api.delete(f"{url}/{a.json()['id']}", headers=h, params={"reason": "again"})
    assert_problem(twice, 409, "already_removed")
    active = (await api.get(url, headers=h, params={"channel": "sms"})).json()["data"]
    assert active == []
    history = (await api.get(url, headers=h, params={"include_removed": "true"})).json()["data"]
    assert {s["id"] for s in history} == {a.json()["id"], e.json()["id"]}
    # Suppressing again after removal makes a new active row; the old one stays as history.
    back = await api.post(url, headers=h, json={"channel": "sms", "address": "+12125550100",
                                                "reason": "STOP again"})
    assert back.status_code == 201 and back.json()["id"] != a.json()["id"]


async def test_events_are_gapless_and_ordered(api: httpx.AsyncClient, tenant: Tenant) -> None:
    h = auth(tenant.sa1_key)
    for i in range(5):
        await api.post(f"/v1/sub-accounts/{tenant.sa1}/contacts", headers=h,
                       json={"phone": f"+1212555{i:04d}"})
    page = (await api.get(f"/v1/sub-accounts/{tenant.sa1}/events", headers=h,
                          params={"limit": 3})).json()
    assert page["has_more"] is True
    rest = (await api.get(f"/v1/sub-accounts/{tenant.sa1}/events", headers=h,
                          params={"after_seq": page["next_after_seq"]})).json()
    seqs = [e["seq"] for e in page["data"] + rest["data"]]
    assert seqs == list(range(1, len(seqs) + 1))
    assert [e["event"] for e in rest["data"]][-1] == "contact.created"
    # The other sub-account's log is separate and starts at its own seq 1.
    other = (await api.get(f"/v1/sub-accounts/{tenant.sa2}/events",
                           headers=auth(tenant.sa2_key))).json()
    assert all(e["event"] != "contact.created" for e in other["data"])
    # A seq past PostgreSQL's bigint is a 422 naming it, not a 500 (found by review R5).
    r = await api.get(f"/v1/sub-accounts/{tenant.sa1}/events", headers=h,
                      params={"after_seq": str(2**63)})
    assert_problem(r, 422, field="after_seq")


async def test_messages_and_conversations_read_with_history(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant
) -> None:
    h = auth(tenant.sa1_key)
    contact = (await api.post(f"/v1/sub-accounts/{tenant.sa1}/contacts", headers=h,
                              json={"phone": "+12125550100"})).json()
    conv = await hub.pool.fetchval(
        """INSERT INTO conversations (sub_account_id, contact_id, channel, unread_count)
           VALUES ($1, $2, 'sms', 2) RETURNING id""", tenant.sa1, contact["id"])
    msg = await hub.pool.fetchval(
        """INSERT INTO messages (sub_account_id, conversation_id, contact_id, direction, channel,
               from_address, to_address, body, status)
           VALUES ($1, $2, $3, 'outbound', 'sms', '+12125550999', '+12125550100', 'hello',
                   'delivered') RETURNING id""", tenant.sa1, conv, contact["id"])
    await hub.pool.execute(
        """INSERT INTO message_events (message_id, sub_account_id, status, provider_status)
           VALUES ($1, $2, 'sent', 'sent'), ($1, $2, 'delivered', 'delivered')""",
        msg, tenant.sa1)
    convs = (await api.get(f"/v1/sub-accounts/{tenant.sa1}/conversations", headers=h,
                           params={"unread": "true"})).json()["data"]
    assert [c["id"] for c in convs] == [str(conv)] and convs[0]["unread_count"] == 2
    msgs = (await api.get(f"/v1/sub-accounts/{tenant.sa1}/conversations/{conv}/messages",
                          headers=h)).json()["data"]
    assert [m["body"] for m in msgs] == ["hello"]
    detail = (await api.get(f"/v1/sub-accounts/{tenant.sa1}/messages/{msg}", headers=h)).json()
    assert [s["status"] for s in detail["history"]] == ["sent", "delivered"]
    filtered = (await api.get(f"/v1/sub-accounts/{tenant.sa1}/messages", headers=h,
                              params={"status": "failed"})).json()["data"]
    assert filtered == []
    assert_problem(await api.get(f"/v1/sub-accounts/{tenant.sa1}/messages", headers=h,
                                 params={"status": "bogus"}), 422, field="status")


async def test_ops_endpoints(api: httpx.AsyncClient, tenant: Tenant) -> None:
    assert (await api.get("/healthz")).json() == {"status": "ok"}
    ready = await api.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"postgres": "ok",
                                                                   "redis": "ok"}
    await api.get("/v1/sub-accounts", headers=auth(tenant.agency_key))
    metrics = (await api.get("/metrics")).text
    assert 'hub_http_requests_total{method="GET",route="/v1/sub-accounts",status="200"}' in metrics
    spec = (await api.get("/openapi.json")).json()
    assert "/v1/sub-accounts/{sa}/contacts/imports" in spec["paths"]
    assert (await api.get("/docs")).status_code == 200
    assert_problem(await api.get("/v1/nope"), 404, "not_found")
