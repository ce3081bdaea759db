"""A message waiting out a provider's refusal says why, and until when: an agent's reply
held back by a throttling carrier showed only "queued". Once sent, the reason goes."""

from __future__ import annotations

from typing import Any

import httpx

from hub.context import Hub
from tests.conftest import Tenant, auth
from tests.test_sending import carrier, carrier_log, setup_sms, wait_for

__all__ = ["carrier", "carrier_log"]  # fixtures


async def test_a_throttled_message_says_why_it_waits_until_it_is_sent(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant, carrier: Any,
    carrier_log: httpx.AsyncClient
) -> None:
    await setup_sms(api, tenant, carrier.url)
    await carrier_log.post("/sandbox/config", json={"rate_limit_rate": 1.0,
                                                    "retry_after_s": 1.0})
    try:
        r = await api.post(f"/v1/sub-accounts/{tenant.sa1}/messages",
                           headers={**auth(tenant.sa1_key), "Idempotency-Key": "held"},
                           json={"to": "+14155550142", "body": "on its way"})
        assert r.status_code == 202, r.text
        path = f"/v1/sub-accounts/{tenant.sa1}/messages/{r.json()['id']}"

        async def waiting() -> dict[str, Any] | None:
            m = (await api.get(path, headers=auth(tenant.sa1_key))).json()
            return m if m["status"] == "queued" and m["error_message"] else None

        held = await wait_for(waiting, timeout=30)
        assert "trying again at" in held["error_message"], held
    finally:
        await carrier_log.post("/sandbox/config", json={"rate_limit_rate": 0.0})

    async def sent() -> dict[str, Any] | None:
        m = (await api.get(path, headers=auth(tenant.sa1_key))).json()
        return m if m["status"] == "sent" else None

    assert (await wait_for(sent, timeout=60))["error_message"] is None
