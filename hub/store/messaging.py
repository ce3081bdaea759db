"""SQL for reading conversations, messages and their status history."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg

from hub.pagination import Cursor, keyset_clause

Conn = asyncpg.Connection | asyncpg.Pool
Row = dict[str, Any]

CONVERSATION_COLS = (
    "id, sub_account_id, contact_id, channel, unread_count, last_message_at, "
    "last_message_preview, assignee, created_at, updated_at"
)
MESSAGE_COLS = (
    "id, sub_account_id, conversation_id, contact_id, campaign_id, direction, channel, priority, "
    "sender_id, from_address, to_address, subject, body, media_urls, status, in_doubt, provider, "
    "provider_message_id, error_code, error_message, segments, encoding, created_at, updated_at, "
    "sent_at, delivered_at, read_at, failed_at"
)


async def get_conversation(conn: Conn, sub_account_id: UUID, id_: UUID) -> Row | None:
    row = await conn.fetchrow(
        f"SELECT {CONVERSATION_COLS} FROM conversations WHERE id = $1 AND sub_account_id = $2",
        id_, sub_account_id,
    )
    return dict(row) if row else None


async def list_conversations(conn: Conn, sub_account_id: UUID, *, contact_id: UUID | None,
                             unread: bool | None, cursor: Cursor | None, limit: int,
                             assignee: str | None = None,
                             unassigned: bool | None = None) -> list[Row]:
    cond, args = keyset_clause(cursor, 6)
    rows = await conn.fetch(
        f"""SELECT {CONVERSATION_COLS} FROM conversations
            WHERE sub_account_id = $1 AND ($2::uuid IS NULL OR contact_id = $2)
              AND ($3::bool IS NULL OR (unread_count > 0) = $3)
              AND ($4::text IS NULL OR assignee = $4)
              AND ($5::bool IS NULL OR (assignee IS NULL) = $5) AND {cond}
            ORDER BY created_at DESC, id DESC LIMIT {limit + 1}""",
        sub_account_id, contact_id, unread, assignee, unassigned, *args,
    )
    return [dict(r) for r in rows]


async def get_message(conn: Conn, sub_account_id: UUID, id_: UUID) -> Row | None:
    row = await conn.fetchrow(
        f"SELECT {MESSAGE_COLS} FROM messages WHERE id = $1 AND sub_account_id = $2",
        id_, sub_account_id,
    )
    return dict(row) if row else None


async def list_messages(conn: Conn, sub_account_id: UUID, *, conversation_id: UUID | None,
                        status: str | None, direction: str | None, channel: str | None,
                        cursor: Cursor | None, limit: int) -> list[Row]:
    cond, args = keyset_clause(cursor, 6)
    rows = await conn.fetch(
        f"""SELECT {MESSAGE_COLS} FROM messages
            WHERE sub_account_id = $1 AND ($2::uuid IS NULL OR conversation_id = $2)
              AND ($3::text IS NULL OR status = $3) AND ($4::text IS NULL OR direction = $4)
              AND ($5::text IS NULL OR channel = $5) AND {cond}
            ORDER BY created_at DESC, id DESC LIMIT {limit + 1}""",
        sub_account_id, conversation_id, status, direction, channel, *args,
    )
    return [dict(r) for r in rows]


async def message_history(conn: Conn, message_id: UUID) -> list[Row]:
    rows = await conn.fetch(
        """SELECT status, provider_status, error_code, occurred_at FROM message_events
           WHERE message_id = $1 ORDER BY id""",
        message_id,
    )
    return [dict(r) for r in rows]
