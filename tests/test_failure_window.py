"""A campaign pauses itself on the failure rate of its last messages, as they stand now: a
late `undelivered` receipt counts against its own message, not as one more failure on top
of the window. (Counting receipts as new outcomes paused a demo campaign with 4% failures
at "34% of the last 200" once its sends slowed and late receipts kept coming.)

The sub-account sits on a slot no running shard owns, so only the SchedulerCore under test
touches the campaign, and the test plays the sender and the receipts in SQL."""

from __future__ import annotations

import itertools
from datetime import time
from typing import Any

from actors.scheduler import SchedulerCore
from hub import actions, campaign_actions
from hub.context import Hub
from tests.test_campaigns import open_window_now, sending_hours_now_for
from tests.test_scheduler_tick import _principal


async def _running_campaign(hub: Hub, slot: int, n: int) -> dict[str, Any]:
    """A running campaign on `slot` to `n` contacts whose window is open now, and one whose
    window is closed (UTC+12), so the campaign stays running after the others are sent."""
    sa = await actions.do_create_sub_account(hub, await _principal(hub), {"name": "fw"})
    sa = await sending_hours_now_for(hub, sa["id"])
    await hub.pool.execute("UPDATE sub_accounts SET slot = $2 WHERE id = $1", sa["id"], slot)
    provider = await actions.do_create_provider_account(hub, sa["id"], {
        "provider": "twilio", "name": "p", "account_id": "AC" + "f" * 32,
        "secret": "token", "base_url": "http://127.0.0.1:9"})
    await actions.do_create_sender(hub, sa, {
        "provider_account_id": provider["id"], "channel": "sms", "kind": "short_code",
        "address": "72999"})
    await hub.pool.execute(
        """INSERT INTO contacts (sub_account_id, phone, first_name, timezone, tags)
           SELECT $1, '+1415' || (6000000 + i)::text, 'Pat',
                  CASE WHEN i = 0 THEN 'Etc/GMT-12' ELSE 'Etc/GMT' END, ARRAY['all']
           FROM generate_series(0, $2) AS i""", sa["id"], n)
    start, end = (time.fromisoformat(t) for t in open_window_now())
    c = await campaign_actions.do_create_campaign(hub, sa, {
        "name": "c", "channel": "sms", "audience": {"tags_any": ["all"]}, "body": "Hi",
        "window_start": start, "window_end": end, "failure_threshold": 0.2})
    await campaign_actions.do_launch_campaign(hub, sa, c["id"])
    return c


def _scheduler(slot: int, hub: Hub) -> SchedulerCore:
    """A SchedulerCore that counts and judges the campaign at every tick. Its clock moves a
    second per reading: counting is spaced by the campaign's size (`_counts_due`), and two
    ticks a few milliseconds apart on a quick machine would otherwise skip the count."""
    seconds = itertools.count()
    return SchedulerCore(f"scheduler:test{slot}", (slot,), hub.pool, hub.redis,
                         progress_every_s=0.0, full_every_s=0.0,
                         clock=lambda: float(next(seconds)))


async def _settle(hub: Hub, campaign_id: Any, status: str, rows: range) -> None:
    """Messages `rows` (in the order they were sent) take `status`, as a receipt would."""
    await hub.pool.execute(
        """UPDATE messages m SET status = $2, error_code = '30007',
                  failed_at = coalesce(m.failed_at, now())
           FROM (SELECT id, row_number() OVER (ORDER BY sent_at) - 1 AS i FROM messages
                 WHERE campaign_id = $1) o
           WHERE m.id = o.id AND o.i = ANY($3::bigint[])""",
        campaign_id, status, list(rows))


async def _status(hub: Hub, campaign_id: Any) -> tuple[str, str | None]:
    row = await hub.pool.fetchrow(
        "SELECT status, paused_reason FROM campaigns WHERE id = $1", campaign_id)
    return row["status"], row["paused_reason"]


async def test_late_receipts_count_against_their_own_messages(hub: Hub) -> None:
    c = await _running_campaign(hub, 9_106, 400)
    core = _scheduler(9_106, hub)
    assert await core.tick() == 400  # the closed-window contact waits
    # The carrier takes all 400, in order, a millisecond apart.
    await hub.pool.execute(
        """UPDATE messages m SET status = 'sent', lease_owner = NULL, lease_expires_at = NULL,
                  sent_at = now() + o.i * interval '1 millisecond'
           FROM (SELECT id, row_number() OVER (ORDER BY id) AS i FROM messages
                 WHERE campaign_id = $1) o
           WHERE m.id = o.id""", c["id"])
    await core.tick()
    assert await _status(hub, c["id"]) == ("running", None)

    # Late receipts: 60 of the first 200 were undelivered after all (15% of the campaign),
    # and nothing new is sent. The last 200 sent are all fine, so the campaign runs on.
    await _settle(hub, c["id"], "undelivered", range(0, 180, 3))
    await core.tick()
    await core.tick()
    assert await _status(hub, c["id"]) == ("running", None)

    # 50 of the last 200 fail: 25% of them, over the 20% threshold.
    await _settle(hub, c["id"], "undelivered", range(350, 400))
    await core.tick()
    status, reason = await _status(hub, c["id"])
    assert status == "paused"
    assert reason is not None and "25% of the last 200 messages failed" in reason, reason
    assert "top error 30007" in reason, reason


async def test_a_resumed_run_is_judged_on_its_own_messages(hub: Hub) -> None:
    c = await _running_campaign(hub, 9_107, 300)
    core = _scheduler(9_107, hub)
    await core.tick()
    # Sent before the run that is judged began: an older run's failures are history.
    await hub.pool.execute(
        """UPDATE messages SET status = 'undelivered', error_code = '30007',
                  sent_at = now() - interval '1 hour', failed_at = now() - interval '1 hour',
                  lease_owner = NULL, lease_expires_at = NULL
           WHERE campaign_id = $1""", c["id"])
    await core.tick()
    assert await _status(hub, c["id"]) == ("running", None)
