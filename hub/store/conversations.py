"""SQL for changing a conversation: who handles it, and marking it read."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg

from hub.pagination import BY_ACTIVITY, Cursor, keyset_clause
from hub.store.messaging import CONVERSATION_COLS

Conn = asyncpg.Connection | asyncpg.Pool
Row = dict[str, Any]


#: Whether the user with the id text `{who}` may handle threads of sub-account `{sa}`: one
#: with a grant there, not disabled. Assignees are stored as id text (the pages' "me").
_MEMBER = """EXISTS (SELECT 1 FROM user_grants g JOIN users u ON u.id = g.user_id
                     WHERE g.sub_account_id = {sa} AND u.id::text = {who}
                       AND u.disabled_at IS NULL)"""


async def is_member(conn: Conn, sub_account_id: UUID, user_id: UUID) -> bool:
    ok: bool = await conn.fetchval(f"SELECT {_MEMBER.format(sa='$1', who='$2')}",
                                   sub_account_id, str(user_id))
    return ok


async def set_assignee(conn: Conn, sub_account_id: UUID, id_: UUID, assignee: str | None,
                       caller: str | None, override: bool) -> Row | None:
    """Hand the thread to `assignee` if it is free, already theirs or the caller's, held by
    someone who is no longer a user here, or `override`; None otherwise (or no such
    thread). One statement: of two agents claiming at once, the second sees the first's
    claim (PostgreSQL re-checks the condition on the row it waited for)."""
    row = await conn.fetchrow(
        f"""UPDATE conversations c SET assignee = $3, updated_at = now()
            WHERE id = $1 AND sub_account_id = $2
              AND ($5 OR assignee IS NULL OR assignee = $3 OR assignee = $4
                   OR NOT {_MEMBER.format(sa='$2', who='c.assignee')})
            RETURNING {CONVERSATION_COLS}""",
        id_, sub_account_id, assignee, caller, override)
    return dict(row) if row else None


async def lock_assignee(conn: Conn, sub_account_id: UUID, id_: UUID) -> tuple[bool, str | None]:
    """(whether the thread exists, its assignee), locking it until the transaction ends."""
    row = await conn.fetchrow(
        "SELECT assignee FROM conversations WHERE id = $1 AND sub_account_id = $2 FOR UPDATE",
        id_, sub_account_id)
    return row is not None, row["assignee"] if row else None


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


async def inbox_page(conn: Conn, sub_account_id: UUID, tab: str, me: str, limit: int, *,
                     unread: bool = False, cursor: Cursor | None = None) -> list[Row]:
    """The threads of a tab with the latest activity (the API's order and cursors), with
    who they are with; `unread`: only those with unread messages."""
    cond, args = keyset_clause(cursor, 5, "c", by_activity=True)
    rows = await conn.fetch(
        f"""SELECT c.id, c.channel, c.unread_count, c.last_message_at, c.last_message_preview,
                   c.assignee, c.created_at, k.first_name, k.last_name, k.phone, k.email
            FROM conversations c JOIN contacts k ON k.id = c.contact_id
            WHERE c.sub_account_id = $1 AND ($2::text IS NOT NULL) AND {_tab_clause(tab)}
              AND (NOT $3 OR c.unread_count > 0) AND {cond}
            ORDER BY {BY_ACTIVITY.format(p="c.")} LIMIT $4""",
        sub_account_id, me, unread, limit, *args)
    return [dict(r) for r in rows]


async def thread(conn: Conn, sub_account_id: UUID, id_: UUID, limit: int,
                 before: Cursor | None = None) -> list[Row]:
    """The last `limit` messages of a conversation (before `before`, when given), oldest
    first."""
    cond, args = keyset_clause(before, 4)
    rows = await conn.fetch(
        f"""SELECT * FROM (
               SELECT id, direction, channel, body, media_urls, status, error_code,
                      error_message, segments, created_at, sent_at, delivered_at, read_at,
                      failed_at
               FROM messages WHERE conversation_id = $1 AND sub_account_id = $2 AND {cond}
               ORDER BY created_at DESC, id DESC LIMIT $3) m
           ORDER BY created_at, id""", id_, sub_account_id, limit, *args)
    return [dict(r) for r in rows]
