"""SQL for suppressions: one active row per (sub-account, channel, address), history kept."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg
from prometheus_client import Counter

from hub.pagination import Cursor, keyset_clause
from hub.store.sql import like_literal

Conn = asyncpg.Connection | asyncpg.Pool
Row = dict[str, Any]

#: Every way an address gets suppressed passes through `add`, so it is counted here once:
#: STOP keywords and one-click unsubscribes (source opt_out), carrier 21610 (provider),
#: bounces and spam reports, and suppressions added through the API. (Counted at the insert:
#: a transaction rolled back after it still counts, a rare overcount.)
OPT_OUTS = Counter("hub_opt_outs_total", "addresses suppressed, by channel and source",
                   ["channel", "source"])

COLS = (
    "id, sub_account_id, channel, address, reason, source, created_by, created_at, removed_at, "
    "removed_by, removed_reason"
)


async def add(conn: Conn, sub_account_id: UUID, channel: str, address: str, reason: str,
              source: str, created_by: str) -> tuple[Row, bool]:
    """Suppress; returns (the active suppression, whether this call created it)."""
    row = await conn.fetchrow(
        f"""INSERT INTO suppressions (sub_account_id, channel, address, reason, source, created_by)
            VALUES ($1, $2, $3, $4, $5, $6)
            ON CONFLICT (sub_account_id, channel, address) WHERE removed_at IS NULL DO NOTHING
            RETURNING {COLS}""",
        sub_account_id, channel, address, reason, source, created_by,
    )
    if row:
        OPT_OUTS.labels(channel, source).inc()
        return dict(row), True
    existing = await conn.fetchrow(
        f"""SELECT {COLS} FROM suppressions WHERE sub_account_id = $1 AND channel = $2
            AND address = $3 AND removed_at IS NULL""",
        sub_account_id, channel, address,
    )
    return dict(existing), False


async def get(conn: Conn, sub_account_id: UUID, id_: UUID) -> Row | None:
    row = await conn.fetchrow(
        f"SELECT {COLS} FROM suppressions WHERE id = $1 AND sub_account_id = $2",
        id_, sub_account_id,
    )
    return dict(row) if row else None


async def remove(conn: Conn, sub_account_id: UUID, id_: UUID, reason: str,
                 removed_by: str) -> Row | None:
    row = await conn.fetchrow(
        f"""UPDATE suppressions SET removed_at = now(), removed_by = $3, removed_reason = $4
            WHERE id = $1 AND sub_account_id = $2 AND removed_at IS NULL RETURNING {COLS}""",
        id_, sub_account_id, removed_by, reason,
    )
    return dict(row) if row else None


async def is_suppressed(conn: Conn, sub_account_id: UUID, channel: str, address: str) -> bool:
    return bool(await conn.fetchval(
        """SELECT EXISTS (SELECT 1 FROM suppressions WHERE sub_account_id = $1 AND channel = $2
           AND address = $3 AND removed_at IS NULL)""",
        sub_account_id, channel, address,
    ))


async def list_page(conn: Conn, sub_account_id: UUID, *, channel: str | None,
                    address: str | None, include_removed: bool, cursor: Cursor | None,
                    limit: int) -> list[Row]:
    cond, args = keyset_clause(cursor, 5)
    rows = await conn.fetch(
        f"""SELECT {COLS} FROM suppressions
            WHERE sub_account_id = $1 AND ($2::text IS NULL OR channel = $2)
              AND ($3::text IS NULL OR address LIKE '%' || $3 || '%')
              AND ($4 OR removed_at IS NULL) AND {cond}
            ORDER BY created_at DESC, id DESC LIMIT {limit + 1}""",
        sub_account_id, channel, None if address is None else like_literal(address),
        include_removed, *args,
    )
    return [dict(r) for r in rows]
