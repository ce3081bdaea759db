"""A provider id that another message already holds for the same recipient, against the
unique (provider, provider_message_id, lower(to_address)) index: recording an accepted batch
keeps the rest of the batch and the clashing message's status (a sandbox carrier restarted
on old data handed SIDs out again, and the whole batch stayed `sending`), and migration 0016's
backfill of `provider` leaves such rows as they were instead of failing."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from hub.context import Hub
from hub.db import migration_files
from hub.store import sending as store
from tests.test_send_store import _account

OWNER = "shard-clash"
SID = "SM" + "c" * 32
TO = "+12125550100"


async def _message(hub: Hub, sa: uuid.UUID, pa: uuid.UUID, to: str, *, status: str = "queued",
                   provider: str | None = "twilio", pid: str | None = None,
                   direction: str = "outbound", age_s: float = 0.0) -> uuid.UUID:
    mid: uuid.UUID = await hub.pool.fetchval(
        """INSERT INTO messages (sub_account_id, direction, channel, priority,
               provider_account_id, provider, provider_message_id, from_address, to_address,
               body, status, lease_owner, lease_expires_at, created_at)
           VALUES ($1, $2, 'sms', 'bulk', $3, $4, $5, '72000', $6, 'hi', $7,
                   CASE WHEN $7 = 'queued' THEN $8 END,
                   CASE WHEN $7 = 'queued' THEN now() + interval '1 minute' END, $9)
           RETURNING id""",
        sa, direction, pa, provider, pid, to, status, OWNER,
        datetime.now(UTC) - timedelta(seconds=age_s))
    return mid


async def test_a_clashing_provider_id_keeps_the_batch_and_the_status(
        hub: Hub, caplog: pytest.LogCaptureFixture) -> None:
    sa, pa = await _account(hub, "clash")
    await _message(hub, sa, pa, TO, status="delivered", pid=SID)  # an earlier run's
    clash = await _message(hub, sa, pa, TO)
    others = [await _message(hub, sa, pa, f"+1212555020{i}") for i in range(3)]
    await store.begin_sending(hub.pool, OWNER, [clash, *others], 30.0)

    with caplog.at_level(logging.WARNING, logger="hub.store.sending"):
        async with hub.pool.acquire() as conn, conn.transaction():  # as the shard records
            await store.record_accepted(
                conn, OWNER, [(clash, SID, "sent")]
                + [(m, f"SM{i:032x}", "sent") for i, m in enumerate(others)])

    rows = {r["id"]: r for r in await hub.pool.fetch(
        """SELECT id, status, provider_message_id, lease_owner, sent_at FROM messages
           WHERE id = ANY($1::uuid[])""", [clash, *others])}
    assert all(r["status"] == "sent" and r["lease_owner"] is None and r["sent_at"]
               for r in rows.values())
    assert rows[clash]["provider_message_id"] is None
    assert [rows[m]["provider_message_id"] for m in others] == [
        f"SM{i:032x}" for i in range(3)]
    history = await hub.pool.fetch(
        "SELECT message_id, status FROM message_events WHERE message_id = ANY($1::uuid[])",
        [clash, *others])
    assert sorted((r["message_id"], r["status"]) for r in history) == sorted(
        (m, "sent") for m in (clash, *others))
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.message_id == str(clash)  # type: ignore[attr-defined]
    assert SID not in caplog.text and TO not in caplog.text


async def test_a_case_different_recipient_clashes_too(hub: Hub) -> None:
    """The index compares addresses in lower case, and so does the check."""
    sa, pa = await _account(hub, "clash")
    await _message(hub, sa, pa, "Ann@Example.org", status="sent", pid=SID)
    mid = await _message(hub, sa, pa, "ann@example.org")
    await store.begin_sending(hub.pool, OWNER, [mid], 30.0)
    await store.record_accepted(hub.pool, OWNER, [(mid, SID, "sent")])
    row = await hub.pool.fetchrow(
        "SELECT status, provider_message_id FROM messages WHERE id = $1", mid)
    assert (row["status"], row["provider_message_id"]) == ("sent", None)


async def test_the_provider_backfill_skips_rows_that_would_clash(hub: Hub) -> None:
    sa, pa = await _account(hub, "clash")
    held = await _message(hub, sa, pa, TO, status="sent", pid=SID)  # a single send's
    behind_held = await _message(hub, sa, pa, TO, status="sent", provider=None, pid=SID)
    # The same SID to one recipient twice among campaign messages (two demo runs).
    older = await _message(hub, sa, pa, "+12125550101", status="delivered", provider=None,
                           pid="SM" + "d" * 32, age_s=60)
    newer = await _message(hub, sa, pa, "+12125550101", status="sent", provider=None,
                           pid="SM" + "d" * 32)
    plain = await _message(hub, sa, pa, "+12125550102", status="sent", provider=None,
                           pid="SM" + "e" * 32)
    queued = await _message(hub, sa, pa, "+12125550103", provider=None)
    inbound = await _message(hub, sa, pa, "+12125550104", status="received", provider=None,
                             pid="SM" + "f" * 32, direction="inbound")
    (sql,) = [sql for version, sql in migration_files() if version.startswith("0016_")]

    await hub.pool.execute(sql)

    provider = {r["id"]: r["provider"] for r in await hub.pool.fetch(
        "SELECT id, provider FROM messages WHERE sub_account_id = $1", sa)}
    assert provider == {held: "twilio", behind_held: None, older: None, newer: "twilio",
                        plain: "twilio", queued: "twilio", inbound: None}
