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


#: The contacts of sub-account $1 with tag $2 (if any) that match $3 (if any): their email
#: starts with it ($3 escaped for LIKE), their name holds $5 (the same search, unescaped),
#: accents and case aside (search_fold, migration 0020; folded once, as an InitPlan, not
#: per row under a generic plan), or their phone holds $4.
_MATCHING = """sub_account_id = $1
              AND ($2::text IS NULL OR tags @> ARRAY[$2::text])
              AND ($3::text IS NULL OR phone LIKE '%' || $4::text || '%'
                   OR email_key LIKE lower($3) || '%'
                   OR strpos(search_name, (SELECT search_fold($5::text))) > 0)"""


def _matching_args(sub_account_id: UUID, tag: str | None, q: str | None,
                   phone: str | None) -> tuple[Any, ...]:
    return (sub_account_id, tag, None if q is None else sql.like_literal(q),
            None if phone is None else sql.like_literal(phone), q)


async def list_page(conn: Conn, sub_account_id: UUID, *, tag: str | None, q: str | None,
                    cursor: Cursor | None, limit: int, phone: str | None = None) -> list[Row]:
    """Newest first; with `q`, the contacts whose email starts with it or whose name holds
    it (without regard to accents or case: "jose" finds "José"), or whose phone holds
    `phone` (hub.contacts.phone_search of it)."""
    cond, args = keyset_clause(cursor, 6)
    rows = await conn.fetch(
        f"""SELECT {CONTACT_COLS} FROM contacts WHERE {_MATCHING} AND {cond}
            ORDER BY created_at DESC, id DESC LIMIT {limit + 1}""",
        *_matching_args(sub_account_id, tag, q, phone), *args,
    )
    return [dict(r) for r in rows]


async def existing_ids(conn: Conn, sub_account_id: UUID, ids: list[UUID]) -> set[UUID]:
    """Those of `ids` that are contacts of this sub-account."""
    rows = await conn.fetch("SELECT id FROM contacts WHERE sub_account_id = $1 "
                            "AND id = ANY($2::uuid[])", sub_account_id, ids)
    return {r["id"] for r in rows}


async def count(conn: Conn, sub_account_id: UUID, *, tag: str | None = None,
                q: str | None = None, phone: str | None = None) -> int:
    """How many contacts `list_page` pages through with the same filters."""
    return int(await conn.fetchval(f"SELECT count(*) FROM contacts WHERE {_MATCHING}",
                                   *_matching_args(sub_account_id, tag, q, phone)))


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


MERGE_PASSES = 3  # a pass retries only rows another writer raced; three is plenty

# One merge at a time per sub-account: two at once over the same phones could deadlock
# (each waiting on rows the other inserted), and the second would retry what the first made.
_MERGE_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended('contact-merge:' || $1::uuid, 0))"

_MATCH = """CREATE TEMP TABLE import_matched ON COMMIT DROP AS
    WITH ranked AS (
        SELECT r.*,
            row_number() OVER (PARTITION BY phone ORDER BY row_number DESC) AS by_phone,
            row_number() OVER (PARTITION BY email_key ORDER BY row_number DESC) AS by_email
        FROM import_rows r),
    last AS (  -- the file's last row for each phone and each email wins
        SELECT * FROM ranked
        WHERE (phone IS NULL OR by_phone = 1) AND (email_key IS NULL OR by_email = 1))
    SELECT l.*, cp.id AS phone_match, ce.id AS email_match, gen_random_uuid() AS new_id,
           NULL::text AS outcome, NULL::integer AS other_row
    FROM last l
    LEFT JOIN contacts cp ON cp.sub_account_id = $1 AND cp.phone = l.phone
    LEFT JOIN contacts ce ON ce.sub_account_id = $1 AND ce.email_key = l.email_key"""

# Rows still open after a pass lost a race with another writer: match them again.
_REMATCH = """UPDATE import_matched m SET
        phone_match = (SELECT id FROM contacts WHERE sub_account_id = $1 AND phone = m.phone),
        email_match = (SELECT id FROM contacts
                       WHERE sub_account_id = $1 AND email_key = m.email_key)
    WHERE outcome IS NULL"""

_CONFLICTS = """UPDATE import_matched SET outcome = 'ambiguous_contact'
    WHERE outcome IS NULL AND phone_match <> email_match"""

# One contact takes one row of a file. Two open rows can share a contact only when one
# matches it by phone and the other by email alone (the file's phones and emails are
# unique by now): the phone match wins, as matching goes by phone first.
_SAME_CONTACT = """UPDATE import_matched m SET outcome = 'same_contact', other_row = o.row_number
    FROM import_matched o
    WHERE m.outcome IS NULL AND o.row_number <> m.row_number
      AND coalesce(o.phone_match, o.email_match) = coalesce(m.phone_match, m.email_match)
      AND (o.outcome = 'updated' OR o.outcome IS NULL AND m.phone_match IS NULL)"""

_UPDATE = """WITH applied AS (
        UPDATE contacts c SET
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
        WHERE m.outcome IS NULL AND c.sub_account_id = $1
          AND c.id = coalesce(m.phone_match, m.email_match)
        RETURNING m.row_number)
    UPDATE import_matched m SET outcome = 'updated'
    FROM applied a WHERE m.row_number = a.row_number"""

# A contact another writer created since the match makes the insert skip the row; it stays
# open for the next pass, which matches it to that contact and updates it.
_INSERT = """WITH created AS (
        INSERT INTO contacts (id, sub_account_id, phone, email, email_key, first_name,
                              last_name, timezone, tags, custom_fields)
        SELECT new_id, $1, phone, email, email_key, coalesce(first_name, ''),
               coalesce(last_name, ''), timezone, coalesce(tags, '{}'),
               coalesce(custom_fields, '{}')
        FROM import_matched
        WHERE outcome IS NULL AND phone_match IS NULL AND email_match IS NULL
        ORDER BY row_number
        ON CONFLICT DO NOTHING
        RETURNING id)
    UPDATE import_matched m SET outcome = 'created' FROM created c WHERE m.new_id = c.id"""


async def merge_staging(conn: asyncpg.Connection, sub_account_id: UUID
                        ) -> tuple[int, int, list[Row]]:
    """Merge staged rows into contacts. Returns (created, updated, rejected): every staged
    row is created, updated or rejected, and a rejected row says why (`row_number`,
    `reason`, `other_row`, `matched_by`).

    A row matches an existing contact by phone, else by email. Reasons: `superseded`, a
    later row of the file has the same phone or email (later rows win); `ambiguous_contact`,
    the phone and the email belong to two different contacts; `same_contact`, another row
    (`other_row`) writes the contact this row matches (by `matched_by`); `contact_changed`,
    other writers kept changing the contacts the row matches while it was merged.

    Another writer's new contact with a row's phone or email (a concurrent `POST /contacts`,
    an inbound message) turns that row's insert into an update, in a further pass.
    """
    await conn.execute(_MERGE_LOCK, sub_account_id)
    await conn.execute(_MATCH, sub_account_id)
    created = updated = 0
    for attempt in range(MERGE_PASSES):
        if attempt:
            await conn.execute(_REMATCH, sub_account_id)
        try:
            async with conn.transaction():  # a savepoint
                await conn.execute(_CONFLICTS)
                await conn.execute(_SAME_CONTACT)
                updated += _count(await conn.execute(_UPDATE, sub_account_id))
        except asyncpg.UniqueViolationError:
            continue  # a phone or email a row sets was just taken by another writer
        created += _count(await conn.execute(_INSERT, sub_account_id))
        if not await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM import_matched WHERE outcome IS NULL)"):
            break
    rejected = await conn.fetch(
        """SELECT r.row_number, CASE WHEN m.row_number IS NULL THEN 'superseded'
                                     ELSE coalesce(m.outcome, 'contact_changed') END AS reason,
                  m.other_row,
                  CASE WHEN m.phone_match IS NOT NULL THEN 'phone' ELSE 'email' END
                      AS matched_by
           FROM import_rows r LEFT JOIN import_matched m USING (row_number)
           WHERE coalesce(m.outcome, '') NOT IN ('created', 'updated')"""
    )
    return created, updated, [dict(r) for r in rejected]


def _count(status: str) -> int:
    return int(status.split()[-1])
