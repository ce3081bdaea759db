"""SQL for saved message templates (migrations 0012 and 0021)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg

from hub.pagination import Cursor, keyset_clause
from hub.store.sql import like_literal

Conn = asyncpg.Connection | asyncpg.Pool
Row = dict[str, Any]

COLS = ("id, sub_account_id, name, channel, body, subject, html, media_urls, created_at, "
        "updated_at")
FIELDS = ("name", "channel", "body", "subject", "html", "media_urls")


async def insert(conn: Conn, sub_account_id: UUID, fields: Row) -> Row:
    """Raises asyncpg.UniqueViolationError when the name is taken."""
    row = await conn.fetchrow(
        f"""INSERT INTO templates (sub_account_id, name, channel, body, subject, html,
                                   media_urls)
            VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {COLS}""",
        sub_account_id, *(fields[f] for f in FIELDS))
    return dict(row)


async def get(conn: Conn, sub_account_id: UUID, id_: UUID, *, lock: bool = False
              ) -> Row | None:
    row = await conn.fetchrow(
        f"SELECT {COLS} FROM templates WHERE id = $1 AND sub_account_id = $2"
        + (" FOR UPDATE" if lock else ""), id_, sub_account_id)
    return dict(row) if row else None


async def update(conn: Conn, sub_account_id: UUID, id_: UUID, fields: Row) -> Row | None:
    """All of FIELDS written; raises asyncpg.UniqueViolationError when the name is taken."""
    row = await conn.fetchrow(
        f"""UPDATE templates SET name = $3, channel = $4, body = $5, subject = $6,
                html = $7, media_urls = $8, updated_at = now()
            WHERE id = $1 AND sub_account_id = $2 RETURNING {COLS}""",
        id_, sub_account_id, *(fields[f] for f in FIELDS))
    return dict(row) if row else None


async def delete(conn: Conn, sub_account_id: UUID, id_: UUID) -> bool:
    return await conn.fetchval(
        "DELETE FROM templates WHERE id = $1 AND sub_account_id = $2 RETURNING true",
        id_, sub_account_id) is not None


async def list_page(conn: Conn, sub_account_id: UUID, *, channel: str | None, q: str | None,
                    cursor: Cursor | None, limit: int) -> list[Row]:
    """Newest first; `q` matches a part of the name, whatever its case."""
    cond, args = keyset_clause(cursor, 5)
    pattern = None if q is None else f"%{like_literal(q)}%"
    rows = await conn.fetch(
        f"""SELECT {COLS} FROM templates
            WHERE sub_account_id = $1 AND ($2::text IS NULL OR channel = $2)
              AND ($3::text IS NULL OR name ILIKE $3) AND {cond}
            ORDER BY created_at DESC, id DESC LIMIT $4""",
        sub_account_id, channel, pattern, limit + 1, *args)
    return [dict(r) for r in rows]
