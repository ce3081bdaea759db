"""A second `hub demo` on the same folder cancels the demo campaigns an earlier run left live
(found by review R5: a rerun launched beside them, and 2,499 demo numbers got each text
twice). Driven through the real routes, as the demo's client drives them."""

from __future__ import annotations

import httpx

from hub.context import Hub
from hub.demo import DemoClient
from tests.conftest import Tenant
from tests.test_campaign_fixes import call, created, setup


async def test_a_rerun_cancels_the_earlier_runs_live_demo_campaigns_only(
        hub: Hub, api: httpx.AsyncClient, tenant: Tenant) -> None:
    await setup(hub, api, tenant)
    live = await created(api, tenant, name="Demo sms campaign")
    await call(api, tenant, "POST", f"/campaigns/{live['id']}/launch")
    draft = await created(api, tenant, name="Demo email campaign", channel="sms")
    mine = await created(api, tenant, name="Spring sale")
    await call(api, tenant, "POST", f"/campaigns/{mine['id']}/launch")

    client = DemoClient(str(api.base_url).rstrip("/"), tenant.sa1_key)
    try:
        assert await client.cancel_earlier_runs([tenant.sa1]) == 1
        assert await client.cancel_earlier_runs([tenant.sa1]) == 0  # nothing left to cancel
    finally:
        await client.close()
    status = {c: (await call(api, tenant, "GET", f"/campaigns/{c}"))["status"]
              for c in (live["id"], draft["id"], mine["id"])}
    assert status[live["id"]] == "canceled"
    assert status[draft["id"]] == "draft"  # never launched: nothing to send twice
    assert status[mine["id"]] != "canceled"  # a user's own campaign is left alone
