"""Tenancy through the HTTP API: a sub-account key never reads or changes another
sub-account's data (404), agency keys reach only their own agency, and secrets stay hidden."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx

from hub.context import Hub
from hub.status import Status
from tests.conftest import Tenant, assert_problem, auth, make_tenant


async def _seed_thread(hub: Hub, sa: str, phone: str) -> dict[str, str]:
    """A contact with a conversation and one inbound message, written as the webhook will."""
    async with hub.transaction() as tx:
        contact = await tx.conn.fetchrow(
            "INSERT INTO contacts (sub_account_id, phone) VALUES ($1, $2) RETURNING id", sa, phone)
        conv = await tx.conn.fetchrow(
            """INSERT INTO conversations (sub_account_id, contact_id, channel, unread_count)
               VALUES ($1, $2, 'sms', 1) RETURNING id""", sa, contact["id"])
        msg = await tx.conn.fetchrow(
            """INSERT INTO messages (sub_account_id, conversation_id, contact_id, direction,
                   channel, from_address, to_address, body, status)
               VALUES ($1, $2, $3, 'inbound', 'sms', $4, '+12125550100', 'hi', $5)
               RETURNING id""", sa, conv["id"], contact["id"], phone, Status.RECEIVED.value)
    return {"contact": str(contact["id"]), "conversation": str(conv["id"]),
            "message": str(msg["id"])}


async def test_sub_account_key_cannot_touch_another_sub_account(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant
) -> None:
    other = await _seed_thread(hub, tenant.sa2, "+14155550199")
    sup = await api.post(f"/v1/sub-accounts/{tenant.sa2}/suppressions",
                         headers=auth(tenant.sa2_key),
                         json={"channel": "sms", "address": "+14155550123", "reason": "asked"})
    assert sup.status_code == 201, sup.text
    mine = auth(tenant.sa1_key)

    # Reading through the other sub-account's path: the sub-account itself is not found.
    for path in ("", "/contacts", f"/contacts/{other['contact']}", "/conversations",
                 f"/conversations/{other['conversation']}", f"/messages/{other['message']}",
                 "/suppressions", "/events"):
        r = await api.get(f"/v1/sub-accounts/{tenant.sa2}{path}", headers=mine)
        assert_problem(r, 404, "sub_account_not_found")
    # Using the other sub-account's ids under my own path: not found either.
    for path in (f"/contacts/{other['contact']}", f"/conversations/{other['conversation']}",
                 f"/messages/{other['message']}", f"/suppressions/{sup.json()['id']}"):
        r = await api.get(f"/v1/sub-accounts/{tenant.sa1}{path}", headers=mine)
        assert_problem(r, 404)
    # Changing: patch, delete and remove all fail, and nothing changed.
    r = await api.patch(f"/v1/sub-accounts/{tenant.sa1}/contacts/{other['contact']}",
                        headers=mine, json={"first_name": "Mallory"})
    assert_problem(r, 404, "contact_not_found")
    r = await api.delete(f"/v1/sub-accounts/{tenant.sa1}/contacts/{other['contact']}",
                         headers=mine)
    assert_problem(r, 404, "contact_not_found")
    r = await api.delete(f"/v1/sub-accounts/{tenant.sa1}/suppressions/{sup.json()['id']}",
                         headers=mine, params={"reason": "mine now"})
    assert_problem(r, 404, "suppression_not_found")
    r = await api.post(f"/v1/sub-accounts/{tenant.sa2}/contacts", headers=mine,
                       json={"phone": "+14155550100"})
    assert_problem(r, 404, "sub_account_not_found")

    theirs = auth(tenant.sa2_key)
    contact = (await api.get(f"/v1/sub-accounts/{tenant.sa2}/contacts/{other['contact']}",
                             headers=theirs)).json()
    assert contact["first_name"] == ""
    still = await api.get(f"/v1/sub-accounts/{tenant.sa2}/suppressions/{sup.json()['id']}",
                          headers=theirs)
    assert still.json()["removed_at"] is None
    listed = (await api.get(f"/v1/sub-accounts/{tenant.sa2}/contacts", headers=theirs)).json()
    assert [c["id"] for c in listed["data"]] == [other["contact"]]


async def test_agency_key_reaches_its_sub_accounts_only(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant
) -> None:
    rival = await make_tenant(hub, api, "Rival")
    r = await api.get("/v1/sub-accounts", headers=auth(tenant.agency_key))
    assert sorted(s["id"] for s in r.json()["data"]) == sorted([tenant.sa1, tenant.sa2])
    for sa in (tenant.sa1, tenant.sa2):
        r = await api.get(f"/v1/sub-accounts/{sa}/contacts", headers=auth(tenant.agency_key))
        assert r.status_code == 200
    r = await api.get(f"/v1/sub-accounts/{rival.sa1}/contacts", headers=auth(tenant.agency_key))
    assert_problem(r, 404, "sub_account_not_found")
    # A sub-account key sees only itself in the list and cannot create sub-accounts.
    r = await api.get("/v1/sub-accounts", headers=auth(tenant.sa1_key))
    assert [s["id"] for s in r.json()["data"]] == [tenant.sa1]
    r = await api.post("/v1/sub-accounts", headers=auth(tenant.sa1_key), json={"name": "x"})
    assert_problem(r, 403, "agency_key_required")


async def test_missing_revoked_and_malformed_keys_are_401(
    api: httpx.AsyncClient, tenant: Tenant
) -> None:
    assert_problem(await api.get("/v1/sub-accounts"), 401, "missing_api_key")
    assert_problem(await api.get("/v1/sub-accounts", headers=auth("nope")), 401,
                   "invalid_api_key")
    keys = await api.get(f"/v1/sub-accounts/{tenant.sa1}/api-keys", headers=auth(tenant.agency_key))
    key_id = keys.json()["data"][0]["id"]
    r = await api.delete(f"/v1/sub-accounts/{tenant.sa1}/api-keys/{key_id}",
                         headers=auth(tenant.agency_key))
    assert r.status_code == 200 and r.json()["revoked_at"]
    assert_problem(await api.get("/v1/sub-accounts", headers=auth(tenant.sa1_key)), 401,
                   "invalid_api_key")


async def test_provider_secret_is_write_only_and_encrypted(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant
) -> None:
    secret = "auth-token-that-must-never-leak-0123456789"
    r = await api.post(f"/v1/sub-accounts/{tenant.sa1}/providers", headers=auth(tenant.sa1_key),
                       json={"provider": "twilio", "name": "main", "account_id": "AC" + "1" * 32,
                             "secret": secret, "base_url": "http://127.0.0.1:8025/"})
    assert r.status_code == 201, r.text
    assert secret not in r.text and r.json()["secret_set"] is True
    assert r.json()["base_url"] == "http://127.0.0.1:8025"
    got = await api.get(f"/v1/sub-accounts/{tenant.sa1}/providers/{r.json()['id']}",
                        headers=auth(tenant.sa1_key))
    assert secret not in got.text
    stored = await hub.pool.fetchval(
        "SELECT secret_encrypted FROM provider_accounts WHERE id = $1", r.json()["id"])
    assert secret.encode() not in bytes(stored)
    assert hub.box.decrypt(stored) == secret
    # The other sub-account cannot see it or attach a sender to it.
    r2 = await api.post(f"/v1/sub-accounts/{tenant.sa2}/senders", headers=auth(tenant.sa2_key),
                        json={"provider_account_id": r.json()["id"], "channel": "sms",
                              "kind": "long_code", "address": "+12125550100"})
    assert_problem(r2, 422, field="provider_account_id")


async def test_senders_normalise_and_default_throughput(
    api: httpx.AsyncClient, tenant: Tenant
) -> None:
    h = auth(tenant.sa1_key)
    p = await api.post(f"/v1/sub-accounts/{tenant.sa1}/providers", headers=h,
                       json={"provider": "twilio", "name": "main", "account_id": "AC" + "2" * 32,
                             "secret": "tok"})
    pid = p.json()["id"]
    r = await api.post(f"/v1/sub-accounts/{tenant.sa1}/senders", headers=h, json={
        "provider_account_id": pid, "channel": "sms", "kind": "toll_free",
        "address": "(833) 555-0100"})
    assert r.status_code == 201, r.text
    assert r.json()["address"] == "+18335550100" and r.json()["mps"] == 3.0
    dup = await api.post(f"/v1/sub-accounts/{tenant.sa1}/senders", headers=h, json={
        "provider_account_id": pid, "channel": "sms", "kind": "toll_free",
        "address": "+18335550100"})
    assert_problem(dup, 409, "sender_exists")
    short = await api.post(f"/v1/sub-accounts/{tenant.sa1}/senders", headers=h, json={
        "provider_account_id": pid, "channel": "sms", "kind": "short_code",
        "address": " 72345 "})
    assert short.status_code == 201, short.text
    assert short.json()["address"] == "72345" and short.json()["mps"] == 100.0
    for bad in ("+72345", "7234567890", "12"):
        r = await api.post(f"/v1/sub-accounts/{tenant.sa1}/senders", headers=h, json={
            "provider_account_id": pid, "channel": "sms", "kind": "short_code",
            "address": bad})
        assert_problem(r, 422, field="address")
    wrong = await api.post(f"/v1/sub-accounts/{tenant.sa1}/senders", headers=h, json={
        "provider_account_id": pid, "channel": "email", "kind": "email",
        "address": "news@example.com"})
    assert_problem(wrong, 422, field="provider_account_id")
    in_use = await api.delete(f"/v1/sub-accounts/{tenant.sa1}/providers/{pid}", headers=h)
    assert_problem(in_use, 409, "provider_account_in_use")


async def test_a_sender_a_launched_campaign_uses_cannot_be_deleted(
    api: httpx.AsyncClient, tenant: Tenant
) -> None:
    h = auth(tenant.sa1_key)
    sa = f"/v1/sub-accounts/{tenant.sa1}"
    p = await api.post(f"{sa}/providers", headers=h,
                       json={"provider": "twilio", "name": "main", "account_id": "AC" + "3" * 32,
                             "secret": "tok"})
    senders = [(await api.post(f"{sa}/senders", headers=h, json={
        "provider_account_id": p.json()["id"], "channel": "sms", "kind": "long_code",
        "address": f"+1212555018{i}"})).json()["id"] for i in range(3)]
    campaign = {"name": "Spring sale", "channel": "sms", "audience": {"tags_any": ["none"]},
                "body": "Hi",  # scheduled: it holds its sender without sending
                "start_at": (datetime.now(UTC) + timedelta(days=300)).isoformat()}
    launched, draft = [(await api.post(f"{sa}/campaigns", headers=h, json={
        **campaign, "sender_ids": [s]})).json()["id"] for s in senders[:2]]
    assert (await api.post(f"{sa}/campaigns/{launched}/launch", headers=h)).status_code == 200

    in_use = await api.delete(f"{sa}/senders/{senders[0]}", headers=h)
    assert_problem(in_use, 409, "sender_in_use")
    assert f"'Spring sale' (scheduled, {launched})" in in_use.json()["detail"]
    assert (await api.get(f"{sa}/senders/{senders[0]}", headers=h)).status_code == 200
    # A draft does not hold its sender; launching it afterwards says what happened.
    assert (await api.delete(f"{sa}/senders/{senders[1]}", headers=h)).status_code == 204
    assert_problem(await api.post(f"{sa}/campaigns/{draft}/launch", headers=h), 409, "no_sender")
    # Once the campaign is canceled, its sender goes.
    assert (await api.post(f"{sa}/campaigns/{launched}/cancel", headers=h)).status_code == 200
    assert (await api.delete(f"{sa}/senders/{senders[0]}", headers=h)).status_code == 204
