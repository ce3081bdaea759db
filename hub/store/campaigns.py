"""SQL for campaigns: create, materialise recipients at launch, claim due recipients into
messages, pause/cancel, and the counts behind stats and progress."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from hub.pagination import Cursor, keyset_clause
from hub.store import sql

Conn = asyncpg.Connection | asyncpg.Pool
Row = dict[str, Any]

COLS = (
    "id, sub_account_id, name, channel, status, audience, body, subject, html, media_urls, "
    "voice, sender_ids, start_at, window_start, window_end, rate_cap, failure_threshold, "
    "paused_reason, recipients_total, skipped_total, created_at, updated_at, launched_at, "
    "completed_at"
)


async def insert(conn: Conn, sub_account_id: UUID, fields: Row) -> Row:
    query, args = sql.insert("campaigns", {"sub_account_id": sub_account_id}, fields, COLS)
    return dict(await conn.fetchrow(query, *args))


async def get(conn: Conn, sub_account_id: UUID, id_: UUID, *, lock: bool = False) -> Row | None:
    row = await conn.fetchrow(
        f"SELECT {COLS} FROM campaigns WHERE id = $1 AND sub_account_id = $2"
        + (" FOR UPDATE" if lock else ""),
        id_, sub_account_id,
    )
    return dict(row) if row else None


async def list_page(conn: Conn, sub_account_id: UUID, status: str | None,
                    cursor: Cursor | None, limit: int) -> list[Row]:
    cond, args = keyset_clause(cursor, 3)
    rows = await conn.fetch(
        f"""SELECT {COLS} FROM campaigns WHERE sub_account_id = $1
              AND ($2::text IS NULL OR status = $2) AND {cond}
            ORDER BY created_at DESC, id DESC LIMIT {limit + 1}""",
        sub_account_id, status, *args,
    )
    return [dict(r) for r in rows]


async def set_status(conn: Conn, id_: UUID, status: str, *, paused_reason: str | None = None,
                     extra: str = "") -> Row:
    row = await conn.fetchrow(
        f"""UPDATE campaigns SET status = $2, paused_reason = $3, updated_at = now() {extra}
            WHERE id = $1 RETURNING {COLS}""",
        id_, status, paused_reason,
    )
    return dict(row)


def _address_sql(channel: str) -> tuple[str, str]:
    """(the contact's address column for this channel, the suppression channel)."""
    if channel == "email":
        return "c.email_key", "email"
    return "c.phone", "voice" if channel == "voice" else "sms"


#: Audience contacts materialised per statement: each stays far below the pool's command
#: timeout however large the audience (a million contacts in one INSERT took over 60 s on a
#: busy machine).
MATERIALISE_CHUNK = 50_000


async def materialise(conn: asyncpg.Connection, campaign: Row, audience_where: str,
                      audience_args: list[Any], due_at: datetime) -> tuple[int, int]:
    """Insert one recipient row per audience contact (unique per campaign and contact);
    contacts without an address for the channel, or suppressed, are recorded as skipped
    with the reason. In contact-id order, `MATERIALISE_CHUNK` contacts a statement, inside
    the caller's transaction. Returns (total, skipped)."""
    address, sup_channel = _address_sql(campaign["channel"])
    n = len(audience_args)
    total = 0
    last: UUID | None = None
    while True:
        row = await conn.fetchrow(
            f"""WITH batch AS (
                    SELECT c.id, c.sub_account_id, {address} AS address
                    FROM contacts c
                    WHERE c.sub_account_id = ${n + 2} AND ({audience_where})
                      AND (${n + 5}::uuid IS NULL OR c.id > ${n + 5})
                    ORDER BY c.id LIMIT ${n + 6}),
                ins AS (
                    INSERT INTO campaign_recipients
                        (campaign_id, contact_id, sub_account_id, status, skip_reason, due_at)
                    SELECT ${n + 1}, b.id, b.sub_account_id,
                           CASE WHEN b.address IS NULL OR sup.id IS NOT NULL THEN 'skipped'
                                ELSE 'pending' END,
                           CASE WHEN b.address IS NULL THEN 'no_{'email' if sup_channel == 'email'
                                                                 else 'phone'}'
                                WHEN sup.id IS NOT NULL THEN 'suppressed' END,
                           ${n + 3}
                    FROM batch b
                    LEFT JOIN suppressions sup ON sup.sub_account_id = b.sub_account_id
                         AND sup.channel = ${n + 4} AND sup.address = b.address
                         AND sup.removed_at IS NULL
                    ON CONFLICT DO NOTHING RETURNING 1)
                SELECT (SELECT count(*) FROM ins) AS inserted,
                       (SELECT id FROM batch ORDER BY id DESC LIMIT 1) AS last,
                       (SELECT count(*) FROM batch) AS seen""",
            *audience_args, campaign["id"], campaign["sub_account_id"], due_at, sup_channel,
            last, MATERIALISE_CHUNK,
        )
        total += int(row["inserted"])
        if row["seen"] < MATERIALISE_CHUNK:
            break
        last = row["last"]
    skipped = int(await conn.fetchval(
        "SELECT count(*) FROM campaign_recipients WHERE campaign_id = $1 AND status = 'skipped'",
        campaign["id"]))
    await conn.execute(
        """UPDATE campaigns SET recipients_total = $2, skipped_total = $3 WHERE id = $1""",
        campaign["id"], total, skipped)
    return total, skipped


async def active_for_slots(conn: Conn, slots: list[int]) -> list[Row]:
    rows = await conn.fetch(
        f"""SELECT {', '.join('c.' + c.strip() for c in COLS.split(','))},
                   s.timezone AS sa_timezone, s.slot
            FROM campaigns c JOIN sub_accounts s ON s.id = c.sub_account_id
            WHERE c.status IN ('scheduled', 'running') AND s.slot = ANY($1::int[])""",
        slots,
    )
    return [dict(r) for r in rows]


async def backlog(conn: Conn, campaign_id: UUID) -> int:
    """Messages of the campaign created but not yet answered by the provider."""
    return int(await conn.fetchval(
        """SELECT count(*) FROM messages WHERE campaign_id = $1
           AND status IN ('queued', 'sending')""", campaign_id))


async def claim_due(conn: asyncpg.Connection, campaign_id: UUID, owner: str, limit: int,
                    lease_s: float, suppression_channel: str) -> list[Row]:
    """Lease due pending recipients with their contact's fields, and whether they have been
    suppressed since launch."""
    rows = await conn.fetch(
        """WITH picked AS (
               SELECT contact_id FROM campaign_recipients
               WHERE campaign_id = $1 AND status = 'pending' AND due_at <= now()
                 AND (lease_owner IS NULL OR lease_owner = $2 OR lease_expires_at < now())
               ORDER BY due_at LIMIT $3 FOR UPDATE SKIP LOCKED),
           leased AS (
               UPDATE campaign_recipients r SET lease_owner = $2,
                      lease_expires_at = now() + make_interval(secs => $4)
               FROM picked WHERE r.campaign_id = $1 AND r.contact_id = picked.contact_id
               RETURNING r.contact_id)
           SELECT c.id AS contact_id, c.phone, c.email, c.first_name, c.last_name, c.timezone,
                  c.custom_fields, c.tags,
                  EXISTS (SELECT 1 FROM suppressions s WHERE s.sub_account_id = c.sub_account_id
                          AND s.removed_at IS NULL AND s.channel = $5
                          AND s.address = CASE WHEN $5 = 'email' THEN c.email_key
                                               ELSE c.phone END) AS suppressed
           FROM leased JOIN contacts c ON c.id = leased.contact_id""",
        campaign_id, owner, limit, lease_s, suppression_channel,
    )
    return [dict(r) for r in rows]


async def defer(conn: asyncpg.Connection, campaign_id: UUID, owner: str,
                rows: list[tuple[UUID, datetime]]) -> None:
    """Quiet hours: move recipients to the next time their window opens."""
    if rows:
        await conn.execute(
            """UPDATE campaign_recipients r SET due_at = u.due, lease_owner = NULL,
                      lease_expires_at = NULL
               FROM unnest($3::uuid[], $4::timestamptz[]) AS u(contact_id, due)
               WHERE r.campaign_id = $1 AND r.contact_id = u.contact_id AND r.lease_owner = $2""",
            campaign_id, owner, [r[0] for r in rows], [r[1] for r in rows])


async def skip(conn: asyncpg.Connection, campaign_id: UUID, owner: str,
               rows: list[tuple[UUID, str]]) -> None:
    if rows:
        await conn.execute(
            """UPDATE campaign_recipients r SET status = 'skipped', skip_reason = u.reason,
                      lease_owner = NULL
               FROM unnest($3::uuid[], $4::text[]) AS u(contact_id, reason)
               WHERE r.campaign_id = $1 AND r.contact_id = u.contact_id AND r.lease_owner = $2""",
            campaign_id, owner, [r[0] for r in rows], [r[1] for r in rows])
        await conn.execute("UPDATE campaigns SET skipped_total = skipped_total + $2 "
                           "WHERE id = $1", campaign_id, len(rows))


async def create_messages(conn: asyncpg.Connection, campaign: Row, owner: str,
                          messages: list[Row], slot: int) -> int:
    """Create the recipients' messages (queued, bulk) with their conversations, and mark the
    recipients queued. The message id is derived from (campaign, contact), and the unique
    (campaign_id, contact_id) index makes a second attempt a no-op: one message per
    recipient, whatever restarts in between."""
    if not messages:
        return 0
    sa, channel = campaign["sub_account_id"], campaign["channel"]
    conv_channel = "sms" if channel in ("sms", "mms") else channel
    contact_ids = [m["contact_id"] for m in messages]
    await conn.execute(
        """INSERT INTO conversations (sub_account_id, contact_id, channel)
           SELECT $1, unnest($2::uuid[]), $3 ON CONFLICT DO NOTHING""",
        sa, contact_ids, conv_channel)
    status = await conn.execute(
        """INSERT INTO messages (id, sub_account_id, conversation_id, contact_id, campaign_id,
               direction, channel, priority, sender_id, provider_account_id, from_address,
               to_address, subject, body, media_urls, voice, status, segments, encoding, slot)
           SELECT u.id, $1, conv.id, u.contact_id, $2, 'outbound', $3, 'bulk', u.sender_id,
                  snd.provider_account_id, snd.address, u.to_address, $4, u.body, $5, $6,
                  'queued', u.segments, u.encoding, $7
           FROM unnest($8::uuid[], $9::uuid[], $10::uuid[], $11::text[], $12::text[],
                       $13::int[], $14::text[]) AS u(id, contact_id, sender_id, to_address,
                                                     body, segments, encoding)
           JOIN senders snd ON snd.id = u.sender_id
           JOIN conversations conv ON conv.sub_account_id = $1 AND conv.contact_id = u.contact_id
                AND conv.channel = $15
           ON CONFLICT DO NOTHING""",
        sa, campaign["id"], channel, campaign["subject"], campaign["media_urls"],
        campaign["voice"], slot,
        [m["id"] for m in messages], contact_ids, [m["sender_id"] for m in messages],
        [m["to_address"] for m in messages], [m["body"] for m in messages],
        [m["segments"] for m in messages], [m["encoding"] for m in messages], conv_channel)
    await conn.execute(
        """UPDATE campaign_recipients r SET status = 'queued', message_id = u.id,
                  lease_owner = NULL, lease_expires_at = NULL
           FROM unnest($3::uuid[], $4::uuid[]) AS u(contact_id, id)
           WHERE r.campaign_id = $1 AND r.contact_id = u.contact_id AND r.lease_owner = $2""",
        campaign["id"], owner, contact_ids, [m["id"] for m in messages])
    return int(status.split()[-1])


async def pending_left(conn: Conn, campaign_id: UUID) -> bool:
    return bool(await conn.fetchval(
        """SELECT EXISTS (SELECT 1 FROM campaign_recipients
                          WHERE campaign_id = $1 AND status = 'pending')""", campaign_id))


async def counts(conn: Conn, campaign_id: UUID) -> dict[str, int]:
    """Recipients by outcome: pending and skipped from the recipients, the rest from their
    messages' statuses."""
    rows = await conn.fetch(
        """SELECT status, count(*) AS n FROM campaign_recipients WHERE campaign_id = $1
             AND status IN ('pending', 'skipped', 'canceled') GROUP BY status
           UNION ALL
           SELECT status, count(*) FROM messages WHERE campaign_id = $1 GROUP BY status""",
        campaign_id)
    out: dict[str, int] = {}
    for r in rows:
        out[r["status"]] = out.get(r["status"], 0) + int(r["n"])
    return out


async def unqueue(conn: asyncpg.Connection, campaign_id: UUID) -> int:
    """Pause: messages not yet sending go back to pending recipients. Their ids are
    deterministic, so resuming recreates exactly the same messages."""
    ids = await conn.fetch(
        """DELETE FROM messages WHERE campaign_id = $1 AND status = 'queued'
           RETURNING contact_id""", campaign_id)
    await conn.execute(
        """UPDATE campaign_recipients SET status = 'pending', message_id = NULL,
                  lease_owner = NULL, due_at = least(due_at, now())
           WHERE campaign_id = $1 AND contact_id = ANY($2::uuid[])""",
        campaign_id, [r["contact_id"] for r in ids])
    return len(ids)


async def cancel_rest(conn: asyncpg.Connection, campaign_id: UUID) -> int:
    """Cancel: every recipient not yet sent is canceled, and so are its queued messages."""
    await conn.execute(
        """UPDATE campaign_recipients SET status = 'canceled', skip_reason = 'campaign_canceled'
           WHERE campaign_id = $1 AND status = 'pending'""", campaign_id)
    status = await conn.execute(
        """UPDATE messages SET status = 'canceled', updated_at = now()
           WHERE campaign_id = $1 AND status = 'queued'""", campaign_id)
    return int(status.split()[-1])


async def recipients_page(conn: Conn, campaign_id: UUID, status: str | None,
                          after: UUID | None, limit: int) -> list[Row]:
    rows = await conn.fetch(
        """SELECT r.contact_id, r.status AS recipient_status, r.skip_reason, r.due_at,
                  r.message_id, m.status AS message_status, m.error_code, m.to_address,
                  m.sent_at, m.delivered_at
           FROM campaign_recipients r LEFT JOIN messages m ON m.id = r.message_id
           WHERE r.campaign_id = $1 AND ($3::uuid IS NULL OR r.contact_id > $3)
             AND ($2::text IS NULL OR coalesce(m.status, r.status) = $2)
           ORDER BY r.contact_id LIMIT $4""",
        campaign_id, status, after, limit)
    return [dict(r) for r in rows]


async def top_errors(conn: Conn, campaign_id: UUID, n: int = 5) -> list[Row]:
    rows = await conn.fetch(
        """SELECT error_code, count(*) AS n FROM messages WHERE campaign_id = $1
             AND error_code IS NOT NULL GROUP BY error_code ORDER BY n DESC LIMIT $2""",
        campaign_id, n)
    return [dict(r) for r in rows]
