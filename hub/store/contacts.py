"""SQL for contacts: CRUD, upsert by phone or email, and the set-based import merge."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg

from hub.pagination import Cursor, keyset_clause
from hub.store import sql

Conn = asyncpg.Connection | asyncpg.Pool
Row = dict[str, Any]

CONTACT_COLS = (
    "id, sub_account_id, phone, email, first_name, last_name, timezone, tags, custom_fields, "
    "created_at, updated_at"
)


async def insert(conn: Conn, sub_account_id: UUID, fields: Row) -> Row | None:
    """Insert; None when the phone or email already belongs to another contact."""
    query, args = sql.insert("contacts", {"sub_account_id": sub_account_id}, fields,
                             CONTACT_COLS, "ON CONFLICT DO NOTHING")
    row = await conn.fetchrow(query, *args)
    return dict(row) if row else None


async def get(conn: Conn, sub_account_id: UUID, id_: UUID) -> Row | None:
    row = await conn.fetchrow(
        f"SELECT {CONTACT_COLS} FROM contacts WHERE id = $1 AND sub_account_id = $2",
        id_, sub_account_id,
    )
    return dict(row) if row else None


async def find_by_keys(conn: Conn, sub_account_id: UUID, phone: str | None,
                       email_key: str | None) -> list[Row]:
    rows = await conn.fetch(
        f"""SELECT {CONTACT_COLS} FROM contacts WHERE sub_account_id = $1
            AND ((phone = $2 AND $2 IS NOT NULL) OR (email_key = $3 AND $3 IS NOT NULL))
            FOR UPDATE""",
        sub_account_id, phone, email_key,
    )
    return [dict(r) for r in rows]


async def update(conn: Conn, sub_account_id: UUID, id_: UUID, fields: Row) -> Row | None:
    """Update; raises asyncpg.UniqueViolationError when the phone/email is taken."""
    if not fields:
        return await get(conn, sub_account_id, id_)
    query, args = sql.update("contacts", {"id": id_, "sub_account_id": sub_account_id}, fields,
                             CONTACT_COLS)
    row = await conn.fetchrow(query, *args)
    return dict(row) if row else None


async def delete(conn: Conn, sub_account_id: UUID, id_: UUID) -> bool:
    status = await conn.execute(
        "DELETE FROM contacts WHERE id = $1 AND sub_account_id = $2", id_, sub_account_id
    )
    return status.endswith(" 1")


async def list_page(conn: Conn, sub_account_id: UUID, *, tag: str | None, q: str | None,
                    cursor: Cursor | None, limit: int, phone: str | None = None) -> list[Row]:
    """Newest first; with `q`, the contacts whose email starts with it or whose name holds
    it, or whose phone holds `phone` (hub.contacts.phone_search of it)."""
    cond, args = keyset_clause(cursor, 5)
    rows = await conn.fetch(
        f"""SELECT {CONTACT_COLS} FROM contacts
            WHERE sub_account_id = $1
              AND ($2::text IS NULL OR tags @> ARRAY[$2::text])
              AND ($3::text IS NULL OR phone LIKE '%' || $4::text || '%'
                   OR email_key LIKE lower($3) || '%'
                   OR lower(first_name || ' ' || last_name) LIKE '%' || lower($3) || '%')
              AND {cond}
            ORDER BY created_at DESC, id DESC LIMIT {limit + 1}""",
        sub_account_id, tag, None if q is None else sql.like_literal(q),
        None if phone is None else sql.like_literal(phone), *args,
    )
    return [dict(r) for r in rows]


async def count(conn: Conn, sub_account_id: UUID) -> int:
    return int(await conn.fetchval(
        "SELECT count(*) FROM contacts WHERE sub_account_id = $1", sub_account_id
    ))


# --- bulk import -----------------------------------------------------------------------

IMPORT_COLUMNS = ("row_number", "phone", "email", "email_key", "first_name", "last_name",
                  "timezone", "tags", "custom_fields")


async def create_staging(conn: asyncpg.Connection) -> None:
    await conn.execute(
        """CREATE TEMP TABLE import_rows (
               row_number integer, phone text, email text, email_key text, first_name text,
               last_name text, timezone text, tags text[], custom_fields jsonb
           ) ON COMMIT DROP"""
    )


async def copy_staging(conn: asyncpg.Connection, records: list[tuple[Any, ...]]) -> None:
    await conn.copy_records_to_table("import_rows", records=records, columns=IMPORT_COLUMNS)


async def merge_staging(
    conn: asyncpg.Connection, sub_account_id: UUID
) -> tuple[int, int, list[Row], list[int]]:
    """Merge staged rows into contacts. Returns (created, updated, conflicts, superseded).

    A row matches an existing contact by phone, else by email. A row whose phone and email
    belong to two different contacts is a conflict, reported and not applied. Later rows of
    the file win over earlier rows with the same phone or email.
    """
    await conn.execute(
        """CREATE TEMP TABLE import_matched ON COMMIT DROP AS
           WITH ranked AS (
               SELECT r.*,
                   row_number() OVER (PARTITION BY phone ORDER BY row_number DESC) AS by_phone,
                   row_number() OVER (PARTITION BY email_key ORDER BY row_number DESC) AS by_email
               FROM import_rows r),
           last AS (  -- the file's last row for each phone and each email wins
               SELECT * FROM ranked
               WHERE (phone IS NULL OR by_phone = 1) AND (email_key IS NULL OR by_email = 1))
           SELECT l.*, cp.id AS phone_match, ce.id AS email_match
           FROM last l
           LEFT JOIN contacts cp ON cp.sub_account_id = $1 AND cp.phone = l.phone
           LEFT JOIN contacts ce ON ce.sub_account_id = $1 AND ce.email_key = l.email_key""",
        sub_account_id,
    )
    conflicts = await conn.fetch(
        """SELECT row_number FROM import_matched
           WHERE phone_match IS NOT NULL AND email_match IS NOT NULL
             AND phone_match <> email_match"""
    )
    updated = await conn.execute(
        """UPDATE contacts c SET
               phone = coalesce(m.phone, c.phone),
               email = coalesce(m.email, c.email),
               email_key = coalesce(m.email_key, c.email_key),
               first_name = coalesce(m.first_name, c.first_name),
               last_name = coalesce(m.last_name, c.last_name),
               timezone = coalesce(m.timezone, c.timezone),
               tags = CASE WHEN m.tags IS NULL THEN c.tags
                           ELSE ARRAY(SELECT DISTINCT unnest(c.tags || m.tags)) END,
               custom_fields = c.custom_fields || coalesce(m.custom_fields, '{}'),
               updated_at = now()
           FROM import_matched m
           WHERE c.sub_account_id = $1
             AND c.id = coalesce(m.phone_match, m.email_match)
             AND (m.phone_match IS NULL OR m.email_match IS NULL
                  OR m.phone_match = m.email_match)""",
        sub_account_id,
    )
    created = await conn.execute(
        """INSERT INTO contacts (sub_account_id, phone, email, email_key, first_name, last_name,
                                 timezone, tags, custom_fields)
           SELECT $1, phone, email, email_key, coalesce(first_name, ''), coalesce(last_name, ''),
                  timezone, coalesce(tags, '{}'), coalesce(custom_fields, '{}')
           FROM import_matched WHERE phone_match IS NULL AND email_match IS NULL
           ORDER BY row_number
           ON CONFLICT DO NOTHING""",
        sub_account_id,
    )
    superseded = await conn.fetch(
        """SELECT r.row_number FROM import_rows r
           WHERE NOT EXISTS (SELECT 1 FROM import_matched m WHERE m.row_number = r.row_number)"""
    )
    return (int(created.split()[-1]), int(updated.split()[-1]), [dict(r) for r in conflicts],
            [int(r["row_number"]) for r in superseded])
