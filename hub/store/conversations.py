"""SQL for changing a conversation: who handles it, and marking it read."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg

from hub.pagination import BY_ACTIVITY
from hub.store.messaging import CONVERSATION_COLS

Conn = asyncpg.Connection | asyncpg.Pool
Row = dict[str, Any]


async def set_assignee(conn: Conn, sub_account_id: UUID, id_: UUID,
                       assignee: str | None) -> Row | None:
    row = await conn.fetchrow(
        f"""UPDATE conversations SET assignee = $3, updated_at = now()
            WHERE id = $1 AND sub_account_id = $2 RETURNING {CONVERSATION_COLS}""",
        id_, sub_account_id, assignee)
    return dict(row) if row else None


async def mark_read(conn: Conn, sub_account_id: UUID, id_: UUID) -> tuple[Row | None, bool]:
    """The conversation, and whether it had unread messages (only then is it changed)."""
    row = await conn.fetchrow(
        f"""UPDATE conversations SET unread_count = 0, updated_at = now()
            WHERE id = $1 AND sub_account_id = $2 AND unread_count > 0
            RETURNING {CONVERSATION_COLS}""", id_, sub_account_id)
    if row is not None:
        return dict(row), True
    row = await conn.fetchrow(
        f"SELECT {CONVERSATION_COLS} FROM conversations WHERE id = $1 AND sub_account_id = $2",
        id_, sub_account_id)
    return (dict(row) if row else None), False


async def last_subject(conn: Conn, sub_account_id: UUID, id_: UUID) -> str | None:
    """The subject of the conversation's latest message that has one."""
    subject: str | None = await conn.fetchval(
        """SELECT subject FROM messages
           WHERE conversation_id = $1 AND sub_account_id = $2 AND subject <> ''
           ORDER BY created_at DESC, id DESC LIMIT 1""", id_, sub_account_id)
    return subject


INBOX_TABS = ("mine", "unassigned", "all")


def _tab_clause(tab: str) -> str:
    return {"mine": "c.assignee = $2", "unassigned": "c.assignee IS NULL"}.get(tab, "true")


async def inbox_counts(conn: Conn, sub_account_id: UUID, me: str) -> dict[str, Row]:
    """Threads and threads with unread messages, per inbox tab."""
    row = await conn.fetchrow(
        """SELECT count(*) FILTER (WHERE assignee = $2) AS mine,
                  count(*) FILTER (WHERE assignee = $2 AND unread_count > 0) AS mine_unread,
                  count(*) FILTER (WHERE assignee IS NULL) AS unassigned,
                  count(*) FILTER (WHERE assignee IS NULL AND unread_count > 0)
                      AS unassigned_unread,
                  count(*) AS "all", count(*) FILTER (WHERE unread_count > 0) AS all_unread
           FROM conversations WHERE sub_account_id = $1""", sub_account_id, me)
    return {t: {"total": int(row[t]), "unread": int(row[f"{t}_unread"])} for t in INBOX_TABS}


async def inbox_page(conn: Conn, sub_account_id: UUID, tab: str, me: str,
                     limit: int) -> list[Row]:
    """The threads of a tab with the latest activity (the API's order), with who they are
    with."""
    rows = await conn.fetch(
        f"""SELECT c.id, c.channel, c.unread_count, c.last_message_at, c.last_message_preview,
                   c.assignee, k.first_name, k.last_name, k.phone, k.email
            FROM conversations c JOIN contacts k ON k.id = c.contact_id
            WHERE c.sub_account_id = $1 AND ($2::text IS NOT NULL) AND {_tab_clause(tab)}
            ORDER BY {BY_ACTIVITY.format(p="c.")} LIMIT $3""",
        sub_account_id, me, limit)
    return [dict(r) for r in rows]


async def thread(conn: Conn, sub_account_id: UUID, id_: UUID, limit: int) -> list[Row]:
    """The last `limit` messages of a conversation, oldest first."""
    rows = await conn.fetch(
        """SELECT * FROM (
               SELECT id, direction, channel, body, status, error_code, error_message,
                      segments, created_at, sent_at, delivered_at, read_at, failed_at
               FROM messages WHERE conversation_id = $1 AND sub_account_id = $2
               ORDER BY created_at DESC, id DESC LIMIT $3) m
           ORDER BY created_at, id""", id_, sub_account_id, limit)
    return [dict(r) for r in rows]
