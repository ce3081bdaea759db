"""An explicit audience names contacts of the campaign's sub-account (found by review R4: a
list of one own, one foreign and one unknown id was accepted and counted 1, silently)."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from tests.conftest import Tenant, assert_problem, auth
from tests.test_sending import carrier, setup_sms

__all__ = ["carrier"]


async def test_foreign_and_unknown_contact_ids_are_named(
    api: httpx.AsyncClient, tenant: Tenant, carrier: Any
) -> None:
    await setup_sms(api, tenant, carrier.url)

    async def contact(sa: str, key: str, phone: str) -> str:
        r = await api.post(f"/v1/sub-accounts/{sa}/contacts", headers=auth(key),
                           json={"phone": phone})
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    own = await contact(tenant.sa1, tenant.sa1_key, "+14155550161")
    foreign = await contact(tenant.sa2, tenant.sa2_key, "+14155550162")
    unknown = str(uuid.uuid4())
    body = {"name": "VIPs", "channel": "sms", "body": "Hi",
            "audience": {"contact_ids": [own, foreign, unknown]}}
    r = await api.post(f"/v1/sub-accounts/{tenant.sa1}/campaigns",
                       headers=auth(tenant.sa1_key), json=body)
    problem = assert_problem(r, 422, "validation_failed")
    assert [(e["field"], e["code"]) for e in problem["errors"]] == [
        ("audience.contact_ids.1", "not_found"), ("audience.contact_ids.2", "not_found")]
    r = await api.post(f"/v1/sub-accounts/{tenant.sa1}/campaigns",
                       headers=auth(tenant.sa1_key),
                       json={**body, "audience": {"contact_ids": [own]}})
    assert r.status_code == 201, r.text
