"""SQL for provider webhooks: finding the account, message and sender a callback names, the
durable inbox (insert, claim, finish, the sweeper's queue) and the status merge itself."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from hub.status import Status, sql_rank_case
from hub.store.messaging import MESSAGE_COLS

Conn = asyncpg.Connection | asyncpg.Pool
Row = dict[str, Any]

INBOX_COLS = ("id, provider, kind, sub_account_id, provider_account_id, event_key, payload, "
              "received_at, status, attempts, next_attempt_at, applied_at, error")
_ACCOUNT_COLS = "p.id, p.sub_account_id, p.provider, p.account_id, p.secret_encrypted, p.config"


# --- who a callback is for ---------------------------------------------------------------


async def provider_accounts(conn: Conn, provider: str, account_id: str) -> list[Row]:
    """Every sub-account's provider account with this provider-side id (a Twilio Account
    SID may be shared by several sub-accounts)."""
    rows = await conn.fetch(
        f"""SELECT {_ACCOUNT_COLS} FROM provider_accounts p
            WHERE p.provider = $1 AND p.account_id = $2 ORDER BY p.created_at, p.id""",
        provider, account_id)
    return [dict(r) for r in rows]


async def provider_account(conn: Conn, id_: UUID) -> Row | None:
    row = await conn.fetchrow(f"SELECT {_ACCOUNT_COLS} FROM provider_accounts p WHERE p.id = $1",
                              id_)
    return dict(row) if row else None


async def callback_message(conn: Conn, message_id: UUID | None, provider: str,
                           provider_message_id: str | None,
                           to_address: str | None = None) -> Row | None:
    """The message a status callback names (our id first, else the provider's, narrowed to
    a recipient when the provider id covers a batch), with the provider account that sent
    it."""
    if message_id is None and not provider_message_id:
        return None
    row = await conn.fetchrow(
        """SELECT m.id, m.sub_account_id, m.conversation_id, m.contact_id, m.channel,
                  m.priority, m.status, m.to_address, m.provider_message_id,
                  m.provider_account_id, p.provider, p.account_id, p.secret_encrypted,
                  p.config
           FROM messages m LEFT JOIN provider_accounts p ON p.id = m.provider_account_id
           WHERE CASE WHEN $1::uuid IS NOT NULL THEN m.id = $1
                      ELSE m.provider = $2 AND m.provider_message_id = $3
                           AND ($4::text IS NULL OR lower(m.to_address) = lower($4)) END
           LIMIT 1""",
        message_id, provider, provider_message_id, to_address)
    return dict(row) if row else None


async def inbound_senders(conn: Conn, account_sid: str, addresses: list[str],
                          service_sid: str | None, sub_account_id: UUID | None = None
                          ) -> list[Row]:
    """SMS senders an inbound message may be addressed to: the number it was sent to, or
    the messaging service the number belongs to, under a Twilio account with this SID.
    Direct number matches come first."""
    rows = await conn.fetch(
        f"""SELECT s.id, s.sub_account_id, s.provider_account_id, s.kind, s.address,
                   {_ACCOUNT_COLS.replace('p.id,', 'p.id AS account_row_id,')}
            FROM senders s JOIN provider_accounts p ON p.id = s.provider_account_id
            WHERE p.provider = 'twilio' AND p.account_id = $1 AND s.channel = 'sms'
              AND (s.address = ANY($2::text[])
                   OR (s.kind = 'messaging_service' AND s.address = $3))
              AND ($4::uuid IS NULL OR s.sub_account_id = $4)
            ORDER BY (s.address = ANY($2::text[])) DESC, s.created_at, s.id""",
        account_sid, addresses, service_sid, sub_account_id)
    return [dict(r) for r in rows]


# --- the inbox ----------------------------------------------------------------------------


async def insert_events(conn: Conn, rows: list[Row], first_attempt_s: float) -> list[int]:
    """Store verified events; duplicates (same provider, kind and key) are dropped. Returns
    the ids of the rows this call inserted."""
    if not rows:
        return []
    inserted = await conn.fetch(
        """INSERT INTO webhook_events (provider, kind, sub_account_id, provider_account_id,
                                       event_key, payload, next_attempt_at)
           SELECT u.provider, u.kind, u.sa, u.pa, u.key, u.payload,
                  now() + make_interval(secs => $7)
           FROM unnest($1::text[], $2::text[], $3::uuid[], $4::uuid[], $5::text[],
                       $6::jsonb[]) AS u(provider, kind, sa, pa, key, payload)
           ON CONFLICT (provider, kind, event_key) DO NOTHING
           RETURNING id""",
        [r["provider"] for r in rows], [r["kind"] for r in rows],
        [r.get("sub_account_id") for r in rows], [r.get("provider_account_id") for r in rows],
        [r["event_key"] for r in rows], [r["payload"] for r in rows], first_attempt_s)
    return [r["id"] for r in inserted]


async def claim(conn: asyncpg.Connection, id_: int) -> Row | None:
    """Lock one unapplied inbox row for this transaction; None if it is done or another
    worker holds it."""
    row = await conn.fetchrow(
        f"""SELECT {INBOX_COLS} FROM webhook_events
            WHERE id = $1 AND status IN ('pending', 'orphan') FOR UPDATE SKIP LOCKED""", id_)
    return dict(row) if row else None


async def finish(conn: Conn, id_: int, status: str, *, error: str | None = None,
                 sub_account_id: UUID | None = None,
                 next_attempt_at: datetime | None = None) -> None:
    await conn.execute(
        """UPDATE webhook_events SET status = $2, error = $3, attempts = attempts + 1,
                  sub_account_id = coalesce($4, sub_account_id), next_attempt_at = $5,
                  applied_at = CASE WHEN $2 IN ('applied', 'ignored') THEN now() END
           WHERE id = $1""",
        id_, status, error, sub_account_id, next_attempt_at)


async def due(conn: Conn, limit: int) -> list[int]:
    rows = await conn.fetch(
        """SELECT id FROM webhook_events
           WHERE status IN ('pending', 'orphan') AND next_attempt_at <= now()
           ORDER BY next_attempt_at LIMIT $1""", limit)
    return [r["id"] for r in rows]


async def prune(conn: Conn, keep_days: int) -> int:
    """Forget applied and ignored events older than `keep_days`; orphans stay."""
    status = await conn.execute(
        """DELETE FROM webhook_events WHERE status IN ('applied', 'ignored')
           AND received_at < now() - make_interval(days => $1)""", keep_days)
    return int(status.rsplit(" ", 1)[-1])


# --- the status merge ---------------------------------------------------------------------

_NEW_RANK = sql_rank_case("$2::text")
_NO_MOVE = [Status.CANCELED.value, Status.RECEIVED.value]


async def record_status_event(conn: asyncpg.Connection, message: Row, status: str,
                              provider_status: str, error_code: str | None, event_key: str,
                              occurred_at: datetime | None) -> bool:
    """The callback in the message's history; False when this event was recorded before."""
    inserted = await conn.fetchval(
        """INSERT INTO message_events (message_id, sub_account_id, status, provider_status,
                                       error_code, event_key, occurred_at)
           VALUES ($1, $2, $3, $4, $5, $6, coalesce($7, now()))
           ON CONFLICT (message_id, event_key) WHERE event_key IS NOT NULL DO NOTHING
           RETURNING id""",
        message["id"], message["sub_account_id"], status, provider_status, error_code,
        event_key, occurred_at)
    return inserted is not None


async def merge_status(conn: asyncpg.Connection, message_id: UUID, status: str,
                       error_code: str | None, provider_message_id: str | None) -> Row | None:
    """Move the message to `status` if that is forward (rank(new) > rank(current)); the
    updated message, or None when it did not move. Read implies delivered; a positive
    receipt clears an earlier failure; any callback settles an in-doubt send."""
    row = await conn.fetchrow(
        f"""UPDATE messages SET status = $2::text,
                  sent_at = CASE WHEN $2 IN ('sent', 'delivered', 'read', 'undelivered')
                                 THEN coalesce(sent_at, now()) ELSE sent_at END,
                  delivered_at = CASE WHEN $2 IN ('delivered', 'read')
                                      THEN coalesce(delivered_at, now()) ELSE delivered_at END,
                  read_at = CASE WHEN $2 = 'read' THEN coalesce(read_at, now()) ELSE read_at END,
                  failed_at = CASE WHEN $2 IN ('failed', 'undelivered')
                                   THEN coalesce(failed_at, now())
                                   WHEN $2 IN ('delivered', 'read') THEN NULL
                                   ELSE failed_at END,
                  error_code = $3, in_doubt = false,
                  provider_message_id = coalesce(provider_message_id, $4),
                  updated_at = now()
            WHERE id = $1 AND {_NEW_RANK} > {sql_rank_case('status')}
              AND NOT (status = ANY($5::text[])) AND NOT ($2 = ANY($5::text[]))
            RETURNING {MESSAGE_COLS}""",
        message_id, status, error_code, provider_message_id, _NO_MOVE)
    return dict(row) if row else None
