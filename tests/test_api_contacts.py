"""Contacts through the HTTP API: bad input is an RFC 9457 problem naming the field and
writes nothing; Idempotency-Key replays; pagination under concurrent inserts; upserts."""

from __future__ import annotations

import asyncio

import httpx

from hub.context import Hub
from tests.conftest import Tenant, assert_problem, auth


async def _count(hub: Hub, table: str) -> int:
    return int(await hub.pool.fetchval(f"SELECT count(*) FROM {table}"))


async def test_create_normalises_phone_email_and_records_an_event(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant
) -> None:
    r = await api.post(f"/v1/sub-accounts/{tenant.sa1}/contacts", headers=auth(tenant.sa1_key),
                       json={"phone": "(212) 555-0123", "email": "Ada@Example.COM",
                             "first_name": "Ada", "tags": ["vip", "vip", " lead "],
                             "custom_fields": {"plan": "gold"}})
    assert r.status_code == 201, r.text
    c = r.json()
    assert c["phone"] == "+12125550123"
    assert c["email"].lower() == "ada@example.com" and c["email"].endswith("@example.com")
    assert c["tags"] == ["vip", "lead"] and c["custom_fields"] == {"plan": "gold"}
    ev = await api.get(f"/v1/sub-accounts/{tenant.sa1}/events", headers=auth(tenant.sa1_key))
    created = [e for e in ev.json()["data"] if e["event"] == "contact.created"]
    assert created and created[-1]["data"]["id"] == c["id"]
    # Same phone again: a clear conflict, not a second contact.
    dup = await api.post(f"/v1/sub-accounts/{tenant.sa1}/contacts", headers=auth(tenant.sa1_key),
                         json={"phone": "+1 212 555 0123"})
    assert_problem(dup, 409, "duplicate_contact", field="phone")
    assert await _count(hub, "contacts") == 1


async def test_bad_input_names_the_field_and_writes_nothing(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant
) -> None:
    url, h = f"/v1/sub-accounts/{tenant.sa1}/contacts", auth(tenant.sa1_key)
    before = await _count(hub, "contacts"), await _count(hub, "events")
    cases = [
        ({"phone": "12"}, "phone"),
        ({"phone": "not a number"}, "phone"),
        ({"email": "ada@@example"}, "email"),
        ({"email": "ada@example.com", "timezone": "Mars/Olympus"}, "timezone"),
        ({"email": "ada@example.com", "favourite_colour": "blue"}, "favourite_colour"),
        ({"email": "ada@example.com", "tags": "vip"}, "tags"),
        ({"first_name": "no way to reach me"}, "phone"),
    ]
    for body, field in cases:
        r = await api.post(url, headers=h, json=body)
        assert_problem(r, 422, field=field)
    r = await api.post(url, headers={**h, "Content-Type": "application/json"}, content=b"{nope")
    assert_problem(r, 422)
    r = await api.post(url, headers=h, json={"email": "a@example.com",
                                             "first_name": "x" * 300_000})
    assert_problem(r, 413, "payload_too_large", field="body")
    r = await api.get(url, headers=h, params={"limit": 0})
    assert_problem(r, 422, field="limit")
    r = await api.get(url, headers=h, params={"cursor": "garbage!"})
    assert_problem(r, 422, field="cursor")
    r = await api.get("/v1/sub-accounts/not-a-uuid/contacts", headers=h)
    assert_problem(r, 422, field="sa")
    assert (await _count(hub, "contacts"), await _count(hub, "events")) == before


async def test_streamed_oversized_body_is_refused(api: httpx.AsyncClient, tenant: Tenant) -> None:
    async def chunks():  # no Content-Length: the limit must hold while streaming
        for _ in range(50):
            yield b" " * 10_000

    r = await api.post(f"/v1/sub-accounts/{tenant.sa1}/contacts", headers={
        **auth(tenant.sa1_key), "Content-Type": "application/json"}, content=chunks())
    assert_problem(r, 413, "payload_too_large")


async def test_idempotent_replay_and_reuse_with_another_body(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant
) -> None:
    url = f"/v1/sub-accounts/{tenant.sa1}/contacts"
    h = {**auth(tenant.sa1_key), "Idempotency-Key": "create-ada-1"}
    body = {"phone": "+12125550123", "first_name": "Ada"}
    first = await api.post(url, headers=h, json=body)
    assert first.status_code == 201
    again = await api.post(url, headers=h, json=body)
    assert again.status_code == 201 and again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    other = await api.post(url, headers=h, json={**body, "first_name": "Eve"})
    assert_problem(other, 422, "idempotency_key_reused", field="Idempotency-Key")
    assert await _count(hub, "contacts") == 1
    # Concurrent first attempts with one key: one effect, identical answers.
    h2 = {**auth(tenant.sa1_key), "Idempotency-Key": "create-bob"}
    rs = await asyncio.gather(*[api.post(url, headers=h2, json={"phone": "+12125550124"})
                                for _ in range(8)])
    assert {r.status_code for r in rs} == {201}
    assert len({r.json()["id"] for r in rs}) == 1
    assert await _count(hub, "contacts") == 2
    # A failed request does not burn its key: fix the body and retry with the same key.
    h3 = {**auth(tenant.sa1_key), "Idempotency-Key": "create-carol"}
    bad = await api.post(url, headers=h3, json={"phone": "+12125550123"})  # taken by Ada
    assert_problem(bad, 409, "duplicate_contact")
    good = await api.post(url, headers=h3, json={"phone": "+12125550125"})
    assert good.status_code == 201


async def test_pagination_has_no_gaps_or_repeats_while_rows_are_inserted(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant
) -> None:
    url, h = f"/v1/sub-accounts/{tenant.sa1}/contacts", auth(tenant.sa1_key)
    await hub.pool.execute(
        """INSERT INTO contacts (sub_account_id, phone, created_at)
           SELECT $1, '+1212555' || lpad(i::text, 4, '0'), now() - (i % 7) * interval '1 second'
           FROM generate_series(1, 250) i""", tenant.sa1)
    existing = {str(r["id"]) for r in await hub.pool.fetch("SELECT id FROM contacts")}
    seen: list[str] = []
    cursor = None
    inserted = 0
    while True:
        params = {"limit": 37, **({"cursor": cursor} if cursor else {})}
        page = (await api.get(url, headers=h, params=params)).json()
        seen += [c["id"] for c in page["data"]]
        r = await api.post(url, headers=h, json={"phone": f"+1312555{inserted:04d}"})
        assert r.status_code == 201
        inserted += 1
        if not page["has_more"]:
            assert page["next_cursor"] is None
            break
        cursor = page["next_cursor"]
    assert len(seen) == len(set(seen)), "a contact was listed twice"
    assert existing <= set(seen), "a contact that existed throughout was skipped"


async def test_upsert_matches_by_phone_then_email_and_merges_tags(
    api: httpx.AsyncClient, tenant: Tenant
) -> None:
    url, h = f"/v1/sub-accounts/{tenant.sa1}/contacts/upsert", auth(tenant.sa1_key)
    a = await api.post(url, headers=h, json={"phone": "+12125550123", "tags": ["a"]})
    assert a.status_code == 201
    b = await api.post(url, headers=h, json={"phone": "212-555-0123", "email": "x@example.com",
                                             "tags": ["b"]})
    assert b.status_code == 200 and b.json()["id"] == a.json()["id"]
    assert b.json()["tags"] == ["a", "b"] and b.json()["email"] == "x@example.com"
    c = await api.post(url, headers=h, json={"email": "X@example.com", "first_name": "Xi"})
    assert c.status_code == 200 and c.json()["id"] == a.json()["id"]
    assert c.json()["first_name"] == "Xi" and c.json()["tags"] == ["a", "b"]
    # Matching only by email moves the contact to the new phone.
    d = await api.post(url, headers=h, json={"phone": "+12125550999", "email": "x@example.com"})
    assert d.status_code == 200 and d.json()["phone"] == "+12125550999"
    other = await api.post(url, headers=h, json={"phone": "+12125550777"})
    assert other.status_code == 201
    # A phone of one contact with the email of another: refused, nothing merged.
    e = await api.post(url, headers=h, json={"phone": "+12125550777", "email": "x@example.com"})
    assert_problem(e, 409, "ambiguous_contact")
    listing = await api.get(f"/v1/sub-accounts/{tenant.sa1}/contacts", headers=h)
    assert len(listing.json()["data"]) == 2


async def test_patch_and_delete(api: httpx.AsyncClient, tenant: Tenant) -> None:
    base, h = f"/v1/sub-accounts/{tenant.sa1}/contacts", auth(tenant.sa1_key)
    one = (await api.post(base, headers=h, json={"phone": "+12125550001"})).json()
    two = (await api.post(base, headers=h, json={"phone": "+12125550002"})).json()
    r = await api.patch(f"{base}/{one['id']}", headers=h, json={"timezone": "Europe/Paris",
                                                                "last_name": "Lovelace"})
    assert r.status_code == 200 and r.json()["timezone"] == "Europe/Paris"
    r = await api.patch(f"{base}/{one['id']}", headers=h, json={"phone": two["phone"]})
    assert_problem(r, 409, "duplicate_contact", field="phone")
    r = await api.patch(f"{base}/{one['id']}", headers=h, json={"phone": None})
    assert_problem(r, 422, field="phone")
    assert (await api.delete(f"{base}/{two['id']}", headers=h)).status_code == 204
    assert_problem(await api.get(f"{base}/{two['id']}", headers=h), 404, "contact_not_found")
