"""The send path's SQL on the real PostgreSQL: the `sending` commit with its suppression gate,
and recording the provider's answer with the message's history, each in one statement."""

from __future__ import annotations

import uuid
from typing import Any

from hub.context import Hub
from hub.store import sending as store

OWNER = "shard-a"


async def _account(hub: Hub, agency_name: str = "send store") -> tuple[uuid.UUID, uuid.UUID]:
    """A sub-account and its Twilio provider account, written directly."""
    agency = await hub.pool.fetchval(
        "INSERT INTO agencies (name) VALUES ($1) RETURNING id", agency_name)
    sa = await hub.pool.fetchval(
        "INSERT INTO sub_accounts (agency_id, name) VALUES ($1, 'sa') RETURNING id", agency)
    pa = await hub.pool.fetchval(
        """INSERT INTO provider_accounts (sub_account_id, provider, name, account_id,
               secret_encrypted) VALUES ($1, 'twilio', 'p', 'AC1', '\\x00') RETURNING id""", sa)
    return sa, pa


async def _queued(hub: Hub, sa: uuid.UUID, pa: uuid.UUID, to: str, *, owner: str = OWNER,
                  compliance: bool = False) -> uuid.UUID:
    mid: uuid.UUID = await hub.pool.fetchval(
        """INSERT INTO messages (sub_account_id, direction, channel, priority,
               provider_account_id, from_address, to_address, body, status, compliance,
               lease_owner, lease_expires_at)
           VALUES ($1, 'outbound', 'sms', 'bulk', $2, '72000', $3, 'hi', 'queued', $4, $5,
                   now() + interval '1 minute')
           RETURNING id""", sa, pa, to, compliance, owner)
    return mid


async def _row(hub: Hub, mid: uuid.UUID) -> dict[str, Any]:
    row = await hub.pool.fetchrow("SELECT * FROM messages WHERE id = $1", mid)
    assert row is not None
    return dict(row)


async def test_begin_sending_cancels_the_suppressed_and_commits_the_rest(hub: Hub) -> None:
    sa, pa = await _account(hub)
    await hub.pool.execute(
        """INSERT INTO suppressions (sub_account_id, channel, address, reason, source,
               created_by) VALUES ($1, 'sms', '+12125550001', 'stop', 'inbound', 'test')""", sa)
    stopped = await _queued(hub, sa, pa, "+12125550001")
    confirmation = await _queued(hub, sa, pa, "+12125550001", compliance=True)
    plain = await _queued(hub, sa, pa, "+12125550002")
    theirs = await _queued(hub, sa, pa, "+12125550003", owner="shard-b")

    rows = await store.begin_sending(hub.pool, OWNER, [stopped, confirmation, plain, theirs],
                                     30.0)

    assert {r["id"] for r in rows} == {confirmation, plain}  # only these may be sent
    assert {r["provider"] for r in rows} == {"twilio"}
    for mid in (confirmation, plain):
        m = await _row(hub, mid)
        assert (m["status"], m["attempts"], m["lease_owner"]) == ("sending", 1, OWNER)
    m = await _row(hub, stopped)
    assert (m["status"], m["error_code"], m["attempts"], m["lease_owner"],
            m["lease_expires_at"]) == ("canceled", "suppressed", 0, None, None)
    m = await _row(hub, theirs)  # another shard's lease: untouched
    assert (m["status"], m["attempts"], m["lease_owner"]) == ("queued", 0, "shard-b")
    # A second attempt (a replayed batch) finds nothing left to send.
    assert await store.begin_sending(hub.pool, OWNER, [stopped, confirmation, plain],
                                     30.0) == []


async def test_record_accepted_writes_the_history_of_the_messages_it_moved(hub: Hub) -> None:
    sa, pa = await _account(hub)
    first, overtaken, lost = [await _queued(hub, sa, pa, f"+1212555001{i}") for i in range(3)]
    await store.begin_sending(hub.pool, OWNER, [first, overtaken, lost], 30.0)
    # A delivery receipt arrived before the provider's answer; another shard took `lost`.
    await hub.pool.execute("UPDATE messages SET status = 'delivered' WHERE id = $1", overtaken)
    await hub.pool.execute("UPDATE messages SET lease_owner = 'shard-b' WHERE id = $1", lost)

    await store.record_accepted(hub.pool, OWNER, [(first, "SM1", "sent"),
                                                  (overtaken, "SM2", "sent"),
                                                  (lost, "SM3", "sent")])

    got = {mid: await _row(hub, mid) for mid in (first, overtaken, lost)}
    assert (got[first]["status"], got[first]["provider_message_id"],
            got[first]["lease_owner"]) == ("sent", "SM1", None)
    assert got[first]["sent_at"] is not None
    assert (got[overtaken]["status"], got[overtaken]["provider_message_id"]) == \
        ("delivered", "SM2")
    assert (got[lost]["status"], got[lost]["provider_message_id"]) == ("sending", None)
    history = await hub.pool.fetch(
        "SELECT message_id, status FROM message_events WHERE message_id = ANY($1::uuid[])",
        [first, overtaken, lost])
    assert sorted((r["message_id"], r["status"]) for r in history) == sorted(
        [(first, "sent"), (overtaken, "delivered")])
