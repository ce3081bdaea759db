"""A campaign's messages record their provider, as a single send's do: a status callback
that names the message only by the provider's id (a Twilio messaging service's own status
callback URL carries no message id of ours) finds it by (provider, SID). Campaign messages
had no provider, so such receipts stayed orphans and their messages `sent` for ever."""

from __future__ import annotations

from urllib.parse import urlencode

import httpx

from actors.scheduler import SchedulerCore
from config.settings import Settings
from hub.context import Hub
from tests.test_failure_window import _running_campaign
from tests.test_sending import wait_for
from tests.test_webhooks import STATUS, post_twilio

ACCOUNT = "AC" + "f" * 32  # the provider account `_running_campaign` creates (token "token")


async def test_a_campaign_message_is_found_by_its_provider_id(
    hub: Hub, api: httpx.AsyncClient, settings: Settings
) -> None:
    c = await _running_campaign(hub, 9_108, 1)
    core = SchedulerCore("scheduler:test9108", (9_108,), hub.pool, hub.redis)
    assert await core.tick() == 1
    message = await hub.pool.fetchrow(
        "SELECT id, provider FROM messages WHERE campaign_id = $1", c["id"])
    assert message["provider"] == "twilio"
    # The carrier took it (as the Sender shard records it) ...
    sid = "SM" + "7" * 32
    await hub.pool.execute(
        """UPDATE messages SET status = 'sent', provider_message_id = $2, sent_at = now(),
                  lease_owner = NULL, lease_expires_at = NULL WHERE id = $1""",
        message["id"], sid)
    # ... and its receipt names it only by the SID.
    body = urlencode({"MessageSid": sid, "SmsSid": sid, "AccountSid": ACCOUNT,
                      "MessageStatus": "delivered", "To": "+14156000001",
                      "From": "72999"})
    r = await post_twilio(api, settings, STATUS, body, token="token")
    assert r.status_code in (200, 204), r.text

    async def delivered() -> str | None:
        status = await hub.pool.fetchval("SELECT status FROM messages WHERE id = $1",
                                         message["id"])
        return status if status == "delivered" else None

    assert await wait_for(delivered, timeout=30) == "delivered"
