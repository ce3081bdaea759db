"""A call that rings busy or unanswered is a normal outcome of calling people, not a sign the
campaign is broken: it does not count toward the auto-pause threshold, while calls that fail
still do, and the campaign page says what busy and no-answer mean. (A user's voice campaign
with 10% busy and 10% no-answer paused itself at "21.2% failed; top error no-answer", and the
page called no-answer a provider error.)

Real gateway, Ray scheduler and sender shards, PostgreSQL and a sandbox carrier posting
signed call callbacks. Each campaign has one contact whose window is closed now (UTC+12), so
it stays running after the others are called and only a pause can stop it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from channels.sandbox import run_carrier_in_thread
from channels.sandbox_config import CarrierConfig, Latency
from hub.context import Hub
from tests.conftest import Tenant, auth
from tests.test_campaigns import stats, tenant
from tests.test_pages_errors import marketer
from tests.test_sending import wait_for
from tests.test_users import Browser
from tests.test_voice_mms_contract import campaign, launch, senders

__all__ = ["marketer", "tenant"]  # fixtures: a signed-in marketer; no quiet hours

CALLED = 60  # over the failure window's 50 samples, so it can judge the campaign


@pytest.fixture(scope="module")
def live_carrier() -> Iterator[Any]:
    """A carrier whose calls ring out at once and post signed status callbacks."""
    handle = run_carrier_in_thread(CarrierConfig(
        seed=47, latency=Latency(kind="fixed", seconds=0.05), call_duration_s=0.1))
    yield handle
    handle.stop()


async def calling(hub: Hub, api: httpx.AsyncClient, tenant: Tenant, prefix: str) -> str:
    """A running voice campaign (default 20% threshold) to `CALLED` contacts numbered
    `prefix` + 00.. and one whose window is closed now; returns its id."""
    await hub.pool.execute(
        """INSERT INTO contacts (sub_account_id, phone, first_name, timezone, tags)
           SELECT $1, $2 || lpad(i::text, 2, '0'), 'Pat',
                  CASE WHEN i = $3 THEN 'Etc/GMT-12' ELSE 'Etc/GMT' END, '{all}'
           FROM generate_series(0, $3) AS i""", uuid.UUID(tenant.sa1), prefix, CALLED)
    c = await campaign(api, tenant, channel="voice", voice={"say": "Your order is ready"})
    assert c.status_code == 201, c.text
    await launch(api, tenant, c.json()["id"])
    return str(c.json()["id"])


async def judged_with(hub: Hub, cid: str, status: str, n: int) -> None:
    """Waits for the scheduler to report `n` messages in `status`: it judges the failure
    window in the same tick, on outcomes read after those counts."""
    async def reported() -> bool:
        return bool(await hub.pool.fetchval(
            """SELECT count(*) FROM events WHERE topic = $1 AND type = 'campaign.progress'
                 AND (data -> 'counts' ->> $2)::int = $3""", f"campaign:{cid}", status, n))
    await wait_for(reported, timeout=90, every=0.3)


async def test_busy_and_unanswered_calls_do_not_pause_a_campaign(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant, live_carrier: Any, marketer: Browser
) -> None:
    await senders(api, tenant, live_carrier)
    live_carrier.configure(busy_rate=0.5, no_answer_rate=0.5)  # nobody picks up
    try:
        cid = await calling(hub, api, tenant, "+1415555")
        await judged_with(hub, cid, "undelivered", CALLED)
    finally:
        live_carrier.configure(busy_rate=0.0, no_answer_rate=0.0)
    s = await stats(api, tenant, cid)
    assert (s["status"], s["paused_reason"]) == ("running", None), s
    # They still show as what they are.
    assert s["counts"]["undelivered"] == CALLED and s["counts"]["pending"] == 1, s
    assert {e["code"] for e in s["top_errors"]} == {"busy", "no-answer"}, s

    r = await marketer.http.get(f"/app/sa/{tenant.sa1}/campaigns/{cid}/live")
    assert r.status_code == 200, r.text
    assert "The line was busy, so nobody picked up" in r.text, r.text
    assert "Nobody answered before the call stopped ringing" in r.text
    assert "not a problem with your account" in r.text and "Provider error" not in r.text
    r = await api.post(f"/v1/sub-accounts/{tenant.sa1}/campaigns/{cid}/cancel",
                       headers=auth(tenant.sa1_key))
    assert r.status_code == 200, r.text


async def test_calls_that_fail_still_pause_it_and_name_their_error(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant, live_carrier: Any
) -> None:
    await senders(api, tenant, live_carrier)
    # A third of the numbers are invalid (the carrier refuses the call, 21211); nobody
    # answers the others. Any 50 of these outcomes hold at least 20% refused calls.
    bad = {f"+1415556{i:02d}": 21211 for i in range(0, CALLED, 3)}
    live_carrier.configure(no_answer_rate=1.0, reject_to=bad)
    try:
        cid = await calling(hub, api, tenant, "+1415556")

        async def paused() -> dict[str, Any] | None:
            s = await stats(api, tenant, cid)
            return s if s["status"] == "paused" else None

        s = await wait_for(paused, timeout=90, every=0.3)
    finally:
        live_carrier.configure(no_answer_rate=0.0, reject_to={})
    reason = s["paused_reason"]
    assert "paused automatically" in reason and "threshold 20%" in reason, reason
    # No-answer outnumbers the refused calls two to one, but it was not what failed.
    assert "top error 21211 invalid phone number" in reason, reason
