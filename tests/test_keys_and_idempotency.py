"""API keys and Idempotency-Key through the real gateway and PostgreSQL (and, for sends, Ray
and the sandbox carrier): a key belongs to the account a request acts on, not to the API key
making it; a created key's secret is answered once and stored nowhere; agency keys are
listed, created and revoked by agency keys."""

from __future__ import annotations

import dataclasses
from importlib import resources
from typing import Any
from uuid import UUID

import httpx

from gateway.idempotency import scope
from hub.context import Hub
from hub.tenancy import Principal
from tests.conftest import Tenant, assert_problem, auth
from tests.test_sending import carrier, carrier_log, carrier_requests, setup_sms, wait_for

__all__ = ["carrier", "carrier_log"]  # fixtures shared with test_sending

TO = "+14155552671"


async def test_a_retry_with_another_key_of_the_account_replays_and_sends_once(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant, carrier: Any,
    carrier_log: httpx.AsyncClient
) -> None:
    await setup_sms(api, tenant, carrier.url)
    url = f"/v1/sub-accounts/{tenant.sa1}/messages"
    body = {"channel": "sms", "to": TO, "body": "your order shipped"}
    first = await api.post(url, json=body,
                           headers={**auth(tenant.agency_key), "Idempotency-Key": "ship-1"})
    assert first.status_code == 202, first.text
    # The client retries after rotating to the sub-account's own key.
    again = await api.post(url, json=body,
                           headers={**auth(tenant.sa1_key), "Idempotency-Key": "ship-1"})
    assert again.status_code == 202 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]

    async def sent() -> bool:
        return await hub.pool.fetchval(
            "SELECT status FROM messages WHERE id = $1", UUID(first.json()["id"])) == "sent"

    await wait_for(sent)
    assert await hub.pool.fetchval(
        "SELECT count(*) FROM messages WHERE sub_account_id = $1", UUID(tenant.sa1)) == 1
    assert len([q for q in await carrier_requests(carrier_log) if q["to"] == TO]) == 1


async def test_one_idempotency_key_on_two_sub_accounts_makes_two_effects(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant
) -> None:
    h = {**auth(tenant.agency_key), "Idempotency-Key": "import-row-7"}
    made = []
    for sa in (tenant.sa1, tenant.sa2):
        r = await api.post(f"/v1/sub-accounts/{sa}/contacts", headers=h,
                           json={"phone": "+14155550107"})
        assert r.status_code == 201 and "Idempotent-Replayed" not in r.headers, r.text
        made.append(r.json())
    assert [c["sub_account_id"] for c in made] == [tenant.sa1, tenant.sa2]
    # The sub-account's own key, with that key on its sub-account: the same account, a replay.
    r = await api.post(f"/v1/sub-accounts/{tenant.sa1}/contacts", json={"phone": "+14155550107"},
                       headers={**auth(tenant.sa1_key), "Idempotency-Key": "import-row-7"})
    assert r.status_code == 201 and r.headers["Idempotent-Replayed"] == "true"
    assert r.json() == made[0]


async def _rows_holding(hub: Hub, text: str) -> list[str]:
    """The tables with a row whose text form holds `text`, as text or as bytes."""
    tables = await hub.pool.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
    return [t["tablename"] for t in tables if await hub.pool.fetchval(
        f"""SELECT EXISTS (SELECT 1 FROM "{t['tablename']}" t
                           WHERE strpos(t::text, $1) > 0 OR strpos(t::text, $2) > 0)""",
        text, text.encode().hex())]


async def test_a_created_key_is_shown_once_and_stored_nowhere(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant
) -> None:
    for url, who in ((f"/v1/sub-accounts/{tenant.sa1}/api-keys", tenant.agency_key),
                     ("/v1/agency/api-keys", tenant.agency_key)):
        h = {**auth(who), "Idempotency-Key": f"new-key {url}"}
        created = await api.post(url, headers=h, json={"name": "ci"})
        assert created.status_code == 201, created.text
        secret = created.json()["key"]
        assert secret.startswith("sbk_")
        assert await _rows_holding(hub, secret) == []
        replay = await api.post(url, headers=h, json={"name": "ci"})
        problem = assert_problem(replay, 409, "secret_shown_once")
        assert created.json()["id"] in problem["detail"] and secret not in replay.text
        # The key works, and the replay made no second one.
        listed = await api.get(url, headers=auth(secret))
        assert [k["id"] for k in listed.json()["data"] if k["name"] == "ci"] == \
            [created.json()["id"]]


async def test_agency_keys_are_listed_rotated_and_revoked_by_agency_keys(
    api: httpx.AsyncClient, tenant: Tenant
) -> None:
    old = auth(tenant.agency_key)
    assert_problem(await api.get("/v1/agency/api-keys", headers=auth(tenant.sa1_key)), 403,
                   "agency_key_required")
    assert_problem(await api.post("/v1/agency/api-keys", headers=auth(tenant.sa1_key),
                                  json={"name": "x"}), 403, "agency_key_required")
    listed = (await api.get("/v1/agency/api-keys", headers=old)).json()["data"]
    assert [(k["name"], k["sub_account_id"]) for k in listed] == [("default", None)]
    old_id = listed[0]["id"]
    # The last agency key is not revoked: nobody could then create sub-accounts or keys.
    assert_problem(await api.delete(f"/v1/agency/api-keys/{old_id}", headers=old), 409,
                   "last_agency_key")
    # A sub-account's key is not an agency key, and another agency's keys are not found.
    sa_keys = await api.get(f"/v1/sub-accounts/{tenant.sa1}/api-keys", headers=old)
    assert_problem(await api.delete(f"/v1/agency/api-keys/{sa_keys.json()['data'][0]['id']}",
                                    headers=old), 404, "api_key_not_found")
    assert_problem(await api.post("/v1/agency/api-keys", headers=old, json={"name": ""}), 422,
                   field="name")

    # Rotate: make the new key, then revoke the old one with it; the old one is refused at once.
    new = await api.post("/v1/agency/api-keys", headers=old, json={"name": "rotated"})
    assert new.status_code == 201 and new.json()["sub_account_id"] is None, new.text
    fresh = auth(new.json()["key"])
    gone = await api.delete(f"/v1/agency/api-keys/{old_id}", headers=fresh)
    assert gone.status_code == 200 and gone.json()["revoked_at"], gone.text
    assert_problem(await api.get("/v1/sub-accounts", headers=old), 401, "invalid_api_key")
    r = await api.get(f"/v1/sub-accounts/{tenant.sa2}/contacts", headers=fresh)
    assert r.status_code == 200
    assert_problem(await api.delete(f"/v1/agency/api-keys/{new.json()['id']}", headers=fresh),
                   409, "last_agency_key")


async def test_migration_moves_sub_account_key_records_and_drops_stored_secrets(
    hub: Hub, tenant: Tenant
) -> None:
    key_id = await hub.pool.fetchval(
        "SELECT id FROM api_keys WHERE sub_account_id = $1", UUID(tenant.sa1))
    agency_key_id = await hub.pool.fetchval(
        "SELECT id FROM api_keys WHERE agency_id = $1 AND sub_account_id IS NULL",
        UUID(tenant.agency_id))
    rows = [(str(key_id), "send-1", {"id": "m1"}),
            (str(agency_key_id), "key-1", {"id": "k1", "key": "sbk_plaintext"})]
    for owner, key, response in rows:
        await hub.pool.execute(
            """INSERT INTO idempotency_keys (scope, key, request_hash, status_code, response)
               VALUES ($1, $2, '\\x00', 201, $3)""", owner, key, response)
    sql = (resources.files("hub") / "migrations" / "0015_idempotency_per_account.sql").read_text()
    async with hub.transaction() as tx:
        await tx.conn.execute(sql)
    got = {r["key"]: (r["scope"], r["response"]) for r in await hub.pool.fetch(
        "SELECT scope, key, response FROM idempotency_keys")}
    assert got == {"send-1": (f"sub_account:{tenant.sa1}", {"id": "m1"}),
                   "key-1": (str(agency_key_id), {"id": "k1", "key": None})}


def test_scope_is_the_account_acted_on() -> None:
    agency, sa, key = UUID(int=1), UUID(int=2), UUID(int=3)
    agency_key = Principal(key, agency, None)
    assert scope(agency_key, f"/v1/sub-accounts/{sa.hex}/messages") == \
        scope(agency_key, f"/v1/sub-accounts/{str(sa).upper()}/messages") == \
        scope(Principal(UUID(int=4), agency, sa), f"/v1/sub-accounts/{sa}/messages") == \
        f"sub_account:{sa}"
    assert scope(agency_key, "/v1/sub-accounts") == scope(agency_key, "/v1/agency/api-keys") \
        == f"agency:{agency}"
    assert scope(dataclasses.replace(agency_key, sub_account_id=sa), "/v1/sub-accounts") == \
        f"sub_account:{sa}"
