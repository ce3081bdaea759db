"""Messages created already leased to their Sender shard, on the real PostgreSQL and the
sandbox carrier: the shard adopts a handed-off message without writing it, gives back bulk
beyond its backlog bound, and a message whose hand-off never arrives is still sent once,
after its lease expires or when its shard restarts. The scheduler creates its messages
leased and hands off only those it inserted.

The sub-accounts sit on slots no running shard owns, so only the SenderCore under test
sends their messages."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from actors.ring import sender_owner
from actors.scheduler import HandOff, SchedulerCore
from actors.sender import SenderConfig, SenderCore
from actors.shells import adapters_for
from hub import actions, sending
from hub.context import Hub
from hub.store import sending as send_store
from tests.test_scheduler_tick import _campaigns, _principal
from tests.test_sending import carrier, carrier_log, carrier_requests, wait_for

__all__ = ["carrier", "carrier_log"]  # fixtures shared with test_sending

_numbers = itertools.count(7_100_000)


async def _sub_account(hub: Hub, carrier_url: str, slot: int) -> dict[str, Any]:
    sa = await actions.do_create_sub_account(hub, await _principal(hub), {"name": "lease"})
    await hub.pool.execute("UPDATE sub_accounts SET slot = $2 WHERE id = $1", sa["id"], slot)
    provider = await actions.do_create_provider_account(hub, sa["id"], {
        "provider": "twilio", "name": "sandbox", "account_id": "AC" + "a" * 32,
        "secret": "sandbox-token", "base_url": carrier_url})
    await actions.do_create_sender(hub, sa, {
        "provider_account_id": provider["id"], "channel": "sms", "kind": "toll_free",
        "address": f"+1833{next(_numbers)}", "mps": 50})
    return sa


async def _send(hub: Hub, sa: dict[str, Any], owner: str | None) -> dict[str, Any]:
    return await sending.do_send_message(
        hub, sa, {"channel": "sms", "to": f"+1415{next(_numbers)}", "body": "hello"},
        lease_to=(lambda channel, slot: owner) if owner else None)


def _core(hub: Hub, owner: str, slot: int, **config: Any) -> SenderCore:
    cfg = SenderConfig(owner=owner, channels=("sms", "mms"), slots=(slot,),
                       public_url="http://127.0.0.1:9", lease_s=hub.settings.lease_s,
                       **config)
    return SenderCore(cfg, hub.pool, hub.redis, hub.box, adapters_for(("sms", "mms")))


@asynccontextmanager
async def _running(core: SenderCore) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(core.run(stop))
    try:
        yield
    finally:
        stop.set()
        await task
        for adapter in set(core.adapters.values()):
            await adapter.close()


async def _sent_once(log: httpx.AsyncClient, to: str) -> None:
    async def sent() -> list[dict[str, Any]]:
        return [q for q in await carrier_requests(log) if q["to"] == to]

    await wait_for(sent, timeout=30)
    await asyncio.sleep(0.5)  # nothing more arrives
    assert len(await sent()) == 1


async def test_a_handed_off_message_is_adopted_without_a_write(
    hub: Hub, carrier: Any, carrier_log: httpx.AsyncClient
) -> None:
    slot = 9_101
    owner = sender_owner("sms", 0)
    sa = await _sub_account(hub, carrier.url, slot)
    m = await _send(hub, sa, owner)
    row = await hub.pool.fetchrow(
        "SELECT lease_owner, lease_expires_at > now() AS live, xmin::text AS v "
        "FROM messages WHERE id = $1", m["id"])
    assert (row["lease_owner"], row["live"]) == (owner, True)

    core = _core(hub, owner, slot)
    assert await core.submit([str(m["id"])]) == 1
    assert await hub.pool.fetchval(  # read, not rewritten: the same row version
        "SELECT xmin::text FROM messages WHERE id = $1", m["id"]) == row["v"]
    assert await core.submit([str(m["id"])]) == 0  # a replayed hand-off adds nothing
    # Another shard's hand-off of it (a stale ring) neither takes nor changes it.
    assert await _core(hub, sender_owner("sms", 1), slot).submit([str(m["id"])]) == 0
    assert await hub.pool.fetchval(
        "SELECT xmin::text FROM messages WHERE id = $1", m["id"]) == row["v"]

    async with _running(core):
        await _sent_once(carrier_log, m["to_address"])
    assert await hub.pool.fetchval("SELECT status FROM messages WHERE id = $1",
                                   m["id"]) == "sent"


async def test_a_handed_lane_row_is_queued_unread_and_sent_only_under_its_lease(
    hub: Hub, carrier: Any, carrier_log: httpx.AsyncClient
) -> None:
    """The gateway hands the shard the lane columns it would have read; the shard queues
    them as given, and the `sending` UPDATE's lease check still decides what leaves."""
    slot = 9_106
    owner, other_owner = sender_owner("sms", 0), sender_owner("sms", 1)
    sa = await _sub_account(hub, carrier.url, slot)
    m = await _send(hub, sa, owner)
    assert "lane" not in sending.public(m) and "slot" not in sending.public(m)
    assert [m["lane"]] == await send_store.adopt(hub.pool, owner, [m["id"]],
                                                 hub.settings.lease_s)
    stale = await _send(hub, sa, other_owner)  # leased to another shard (a stale ring)
    version = await hub.pool.fetchval("SELECT xmin::text FROM messages WHERE id = $1",
                                      stale["id"])

    core = _core(hub, owner, slot)
    assert await core.submit([m["lane"], stale["lane"]]) == 2  # as given: nothing read
    assert await core.submit([m["lane"]]) == 0  # a replayed hand-off adds nothing
    async with _running(core):
        await _sent_once(carrier_log, m["to_address"])
    assert not [q for q in await carrier_requests(carrier_log)
                if q["to"] == stale["to_address"]]
    row = await hub.pool.fetchrow(
        "SELECT status, lease_owner, xmin::text AS v FROM messages WHERE id = $1", stale["id"])
    assert (row["status"], row["lease_owner"], row["v"]) == ("queued", other_owner, version)


async def test_bulk_beyond_the_backlog_bound_is_given_back_for_claims(hub: Hub) -> None:
    slot = 9_102
    owner = sender_owner("sms", 0)
    sa = await _sub_account(hub, "http://127.0.0.1:9", slot)
    bulk = [await _send(hub, sa, owner) for _ in range(3)]
    reply = await _send(hub, sa, owner)
    await hub.pool.execute("UPDATE messages SET priority = 'bulk' WHERE id = ANY($1::uuid[])",
                           [m["id"] for m in bulk])
    unleased = await _send(hub, sa, None)  # created without actors: leased on adoption

    core = _core(hub, owner, slot, max_backlog=1)
    ids = [m["id"] for m in (*bulk, reply, unleased)]
    assert await core.submit([str(i) for i in ids]) == 3  # one bulk, the reply, the other
    rows = {r["id"]: r["lease_owner"] for r in await hub.pool.fetch(
        "SELECT id, lease_owner FROM messages WHERE id = ANY($1::uuid[])", ids)}
    # What the lanes hold is leased to the shard; the rest is given back, claimable in order.
    assert {i for i in ids if str(i) in core.lanes} == {i for i in ids if rows[i] == owner}
    assert sum(rows[m["id"]] is None for m in bulk) == 2
    assert rows[reply["id"]] == rows[unleased["id"]] == owner


async def test_a_hand_off_that_never_arrives_is_sent_after_expiry_or_restart(
    hub: Hub, carrier: Any, carrier_log: httpx.AsyncClient
) -> None:
    slot = 9_103
    sa = await _sub_account(hub, carrier.url, slot)
    # Leased to a shard whose hand-off never came: it restarts (same owner) ...
    restarted = await _send(hub, sa, sender_owner("sms", 0))
    # ... and to one that is gone for good: its lease must expire first.
    orphan = await _send(hub, sa, sender_owner("sms", 7))

    expires = await hub.pool.fetchval(
        "SELECT lease_expires_at FROM messages WHERE id = $1", orphan["id"])

    core = _core(hub, sender_owner("sms", 0), slot)
    async with _running(core):  # start-up frees its own leases at once
        await _sent_once(carrier_log, restarted["to_address"])
        await _sent_once(carrier_log, orphan["to_address"])
    rows = {r["id"]: r for r in await hub.pool.fetch(
        "SELECT id, status, sent_at FROM messages WHERE id = ANY($1::uuid[])",
        [restarted["id"], orphan["id"]])}
    assert [rows[m["id"]]["status"] for m in (restarted, orphan)] == ["sent", "sent"]
    assert rows[restarted["id"]]["sent_at"] < expires <= rows[orphan["id"]]["sent_at"]


async def test_the_scheduler_creates_leased_messages_and_hands_off_those_it_inserted(
    hub: Hub
) -> None:
    slot = 9_104
    (c,) = await _campaigns(hub, await _principal(hub), 1, slot)
    handed: list[dict[str, list[dict[str, Any]]]] = []

    async def send(by_owner: dict[str, list[dict[str, Any]]]) -> list[str]:
        handed.append(by_owner)
        return []

    core = SchedulerCore("scheduler:test9104", (slot,), hub.pool, hub.redis, lease_s=30.0,
                         hand_off=HandOff(lambda ch, s: f"sender:{ch}:{s}", send, room=10))
    assert await core.tick() == 1  # the open-window contact; one opted out, one deferred
    (message,) = await hub.pool.fetch(
        """SELECT id, lease_owner, lease_expires_at > now() + interval '20 s' AS live
           FROM messages WHERE campaign_id = $1""", c["id"])
    assert (message["lease_owner"], message["live"]) == (f"sender:sms:{slot}", True)
    # Handed off as its lane columns: what the shard would otherwise read back.
    read = await hub.pool.fetchrow(
        f"SELECT {send_store.LANE_COLS} FROM messages m {send_store.LANE_JOIN} WHERE m.id = $1",
        message["id"])
    assert handed == [{f"sender:sms:{slot}": [dict(read)]}]
    recipients = {r["status"] for r in await hub.pool.fetch(
        "SELECT status FROM campaign_recipients WHERE campaign_id = $1", c["id"])}
    assert recipients == {"queued", "skipped", "pending"}

    # A second attempt at the same recipient (a retry after a restart) inserts nothing, so
    # nothing is handed off again.
    await hub.pool.execute(
        """UPDATE campaign_recipients SET status = 'pending', message_id = NULL
           WHERE campaign_id = $1 AND status = 'queued'""", c["id"])
    handed.clear()
    assert await core.tick() == 0
    assert handed == []
    assert await hub.pool.fetchval(
        "SELECT count(*) FROM messages WHERE campaign_id = $1", c["id"]) == 1


async def test_leases_go_back_when_the_shard_cannot_be_reached(hub: Hub) -> None:
    """A hand-off that fails gives the leases back, so that a claim takes the messages at
    once instead of when their leases expire."""
    slot = 9_105
    (c,) = await _campaigns(hub, await _principal(hub), 1, slot)

    async def send(by_owner: dict[str, list[dict[str, Any]]]) -> list[str]:
        return list(by_owner)  # no shard reached

    core = SchedulerCore("scheduler:test9105", (slot,), hub.pool, hub.redis, lease_s=30.0,
                         hand_off=HandOff(lambda ch, s: f"sender:{ch}:{s}", send, room=10))
    assert await core.tick() == 1
    (message,) = await hub.pool.fetch(
        "SELECT status, lease_owner, lease_expires_at FROM messages WHERE campaign_id = $1",
        c["id"])
    assert (message["status"], message["lease_owner"], message["lease_expires_at"]) == (
        "queued", None, None)
