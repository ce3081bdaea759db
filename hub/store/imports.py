"""SQL for contact import jobs and their per-row error reports."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg

from hub.pagination import Cursor, keyset_clause

Conn = asyncpg.Connection | asyncpg.Pool
Row = dict[str, Any]

COLS = (
    "id, sub_account_id, status, filename, total_rows, processed_rows, created_rows, "
    "updated_rows, error_rows, error, created_at, started_at, finished_at"
)


async def create(conn: Conn, sub_account_id: UUID, filename: str | None, source: bytes) -> Row:
    row = await conn.fetchrow(
        f"INSERT INTO import_jobs (sub_account_id, filename, source) VALUES ($1, $2, $3) "
        f"RETURNING {COLS}",
        sub_account_id, filename, source,
    )
    return dict(row)


async def get(conn: Conn, sub_account_id: UUID, id_: UUID) -> Row | None:
    row = await conn.fetchrow(
        f"SELECT {COLS} FROM import_jobs WHERE id = $1 AND sub_account_id = $2",
        id_, sub_account_id,
    )
    return dict(row) if row else None


async def list_page(conn: Conn, sub_account_id: UUID, cursor: Cursor | None,
                    limit: int) -> list[Row]:
    cond, args = keyset_clause(cursor, 2)
    rows = await conn.fetch(
        f"""SELECT {COLS} FROM import_jobs WHERE sub_account_id = $1 AND {cond}
            ORDER BY created_at DESC, id DESC LIMIT {limit + 1}""",
        sub_account_id, *args,
    )
    return [dict(r) for r in rows]


async def unfinished(conn: Conn) -> list[Row]:
    rows = await conn.fetch(
        "SELECT id, sub_account_id FROM import_jobs WHERE status IN ('pending', 'running') "
        "ORDER BY created_at"
    )
    return [dict(r) for r in rows]


async def start(conn: Conn, id_: UUID) -> bytes | None:
    """Mark running and return the file; None if another worker already finished it."""
    value = await conn.fetchval(
        """UPDATE import_jobs SET status = 'running', started_at = coalesce(started_at, now()),
               processed_rows = 0
           WHERE id = $1 AND status IN ('pending', 'running') RETURNING source""",
        id_,
    )
    return bytes(value) if value is not None else None


async def progress(conn: Conn, id_: UUID, processed: int, total: int) -> None:
    await conn.execute(
        "UPDATE import_jobs SET processed_rows = $2, total_rows = $3 WHERE id = $1",
        id_, processed, total,
    )


async def finish(conn: Conn, id_: UUID, *, status: str, total: int, created: int,
                 updated: int, errors: list[tuple[int, str, str, str]],
                 error: str | None = None) -> None:
    await conn.execute("DELETE FROM import_errors WHERE job_id = $1", id_)
    if errors:
        await conn.copy_records_to_table(
            "import_errors",
            records=[(id_, n, f, c, m) for n, f, c, m in errors],
            columns=("job_id", "row_number", "field", "code", "message"),
        )
    # Row 0 holds notes on the file's columns (one renamed to a custom field's key), not a
    # row that was left out.
    error_rows = len({n for n, *_ in errors if n > 0})
    await conn.execute(
        """UPDATE import_jobs SET status = $2, total_rows = $3, processed_rows = $3,
               created_rows = $4, updated_rows = $5, error_rows = $6, error = $7,
               finished_at = now(), source = NULL
           WHERE id = $1""",
        id_, status, total, created, updated, error_rows, error,
    )


async def list_errors(conn: Conn, job_id: UUID, after: tuple[int, str],
                      limit: int) -> list[Row]:
    """The errors after (row number, field), in that order (a row can have several)."""
    rows = await conn.fetch(
        """SELECT row_number, field, code, message FROM import_errors
           WHERE job_id = $1 AND (row_number, field) > ($2, $3)
           ORDER BY row_number, field LIMIT $4""",
        job_id, *after, limit,
    )
    return [dict(r) for r in rows]
