"""The API key and the route's sub-account are read in one statement (`find_api_key` with
the `{sa}` of the path); whether the key may act on it is still `sub_account_for`'s check.
So a send through another tenant's path is a 404 that creates nothing, a revoked key is a
401 on the send path too (no cache), and a malformed `{sa}` is a 422 naming it."""

from __future__ import annotations

from uuid import uuid4

import httpx

from hub.context import Hub
from hub.crypto import hash_api_key
from hub.store import tenants
from tests.conftest import Tenant, assert_problem, auth, make_tenant


async def _send(api: httpx.AsyncClient, key: str, sa: str, to: str) -> httpx.Response:
    return await api.post(f"/v1/sub-accounts/{sa}/messages",
                          headers=auth(key) | {"Idempotency-Key": uuid4().hex},
                          json={"channel": "sms", "to": to, "body": "hi"})


async def test_the_key_and_the_sub_account_are_read_together(hub: Hub, tenant: Tenant) -> None:
    row = await tenants.find_api_key(hub.pool, hash_api_key(tenant.sa1_key), tenant.sa2)
    assert row is not None and row["sub_account"] is not None
    # Read, not granted: the row is of sa2, the key is sa1's; sub_account_for refuses it.
    assert (str(row["sub_account"]["id"]), str(row["sub_account_id"])) == (tenant.sa2,
                                                                          tenant.sa1)
    assert (await tenants.find_api_key(hub.pool, hash_api_key(tenant.sa1_key),
                                       uuid4()))["sub_account"] is None
    assert (await tenants.find_api_key(hub.pool, hash_api_key(tenant.sa1_key)))[
        "sub_account"] is None


async def test_sends_through_another_tenants_path_are_404_and_create_nothing(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant
) -> None:
    rival = await make_tenant(hub, api, "Rival")
    before = await hub.pool.fetchval("SELECT count(*) FROM messages")
    for key, sa in ((tenant.sa1_key, tenant.sa2), (tenant.agency_key, rival.sa1),
                    (rival.sa1_key, tenant.sa1), (tenant.agency_key, str(uuid4()))):
        assert_problem(await _send(api, key, sa, "+14155550142"), 404,
                       "sub_account_not_found")
    assert await hub.pool.fetchval("SELECT count(*) FROM messages") == before


async def test_revoked_and_malformed_on_a_sub_account_path(
    api: httpx.AsyncClient, tenant: Tenant
) -> None:
    assert_problem(await _send(api, tenant.sa1_key, "not-a-uuid", "+14155550143"), 422,
                   field="sa")
    assert_problem(await _send(api, "sbk_nope", "not-a-uuid", "+14155550143"), 401,
                   "invalid_api_key")
    keys = await api.get(f"/v1/sub-accounts/{tenant.sa1}/api-keys",
                         headers=auth(tenant.agency_key))
    key_id = keys.json()["data"][0]["id"]
    r = await api.delete(f"/v1/sub-accounts/{tenant.sa1}/api-keys/{key_id}",
                         headers=auth(tenant.agency_key))
    assert r.status_code == 200
    assert_problem(await _send(api, tenant.sa1_key, tenant.sa1, "+14155550144"), 401,
                   "invalid_api_key")
    assert_problem(await api.get(f"/v1/sub-accounts/{tenant.sa1}", headers=auth(
        tenant.sa1_key)), 401, "invalid_api_key")
