"""Contact search ignores accents and case on names, whichever way the contact was written
(create, PATCH, upsert, CSV import, plain SQL) and whichever way the search is typed."""

from __future__ import annotations

import httpx

from hub.context import Hub
from tests.conftest import Tenant, auth
from tests.test_api_imports import _upload, _wait


async def _names(api: httpx.AsyncClient, tenant: Tenant, q: str) -> set[str]:
    r = await api.get(f"/v1/sub-accounts/{tenant.sa1}/contacts", headers=auth(tenant.sa1_key),
                      params={"q": q, "limit": 100})
    assert r.status_code == 200, r.text
    return {f"{c['first_name']} {c['last_name']}".strip() for c in r.json()["data"]}


async def test_search_finds_names_without_regard_to_accents_or_case(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant
) -> None:
    sa, h = f"/v1/sub-accounts/{tenant.sa1}", auth(tenant.sa1_key)
    r = await api.post(f"{sa}/contacts", headers=h, json={
        "phone": "+12125550150", "first_name": "José", "last_name": "Álvarez"})
    assert r.status_code == 201, r.text
    r = await api.post(f"{sa}/contacts", headers=h, json={"phone": "+12125550151",
                                                          "first_name": "Zed"})
    r = await api.patch(f"{sa}/contacts/{r.json()['id']}", headers=h,
                        json={"first_name": "Zoë", "last_name": "MÜLLER"})
    assert r.status_code == 200, r.text
    r = await api.post(f"{sa}/contacts/upsert", headers=h, json={
        "phone": "+12125550152", "first_name": "Søren", "last_name": "Straße"})
    assert r.status_code == 201, r.text
    await hub.pool.execute("INSERT INTO contacts (sub_account_id, phone, first_name) "
                           "VALUES ($1, '+12125550153', 'Łukasz')", tenant.sa1)
    r = await _upload(api, tenant, "phone,first_name,last_name\n+12125550154,Jose,Ñandú\n"
                      .encode())
    assert r.status_code == 202, r.text
    job = await _wait(api, f"{sa}/contacts/imports/{r.json()['id']}", tenant.sa1_key)
    assert job["created_rows"] == 1, job

    cases = {
        "jose": {"José Álvarez", "Jose Ñandú"},
        "JOSÉ": {"José Álvarez", "Jose Ñandú"},
        "alvarez": {"José Álvarez"},
        "muller": {"Zoë MÜLLER"},
        "zoe mü": {"Zoë MÜLLER"},
        "strasse": {"Søren Straße"},
        "soren": {"Søren Straße"},
        "lukasz": {"Łukasz"},
        "nandu": {"Jose Ñandú"},
        "Ｊｏｓｅ": {"José Álvarez", "Jose Ñandú"},  # full-width letters, as some keyboards type
        "josef": set(),
    }
    for q, expected in cases.items():
        assert await _names(api, tenant, q) == expected, q
    # The other sub-account's José is not found.
    other = await api.post(f"/v1/sub-accounts/{tenant.sa2}/contacts",
                           headers=auth(tenant.sa2_key),
                           json={"phone": "+12125550155", "first_name": "José"})
    assert other.status_code == 201, other.text
    assert await _names(api, tenant, "jose") == cases["jose"]
