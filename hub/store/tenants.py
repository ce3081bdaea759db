"""SQL for agencies, sub-accounts, API keys, provider accounts and senders."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg

from hub.pagination import Cursor, keyset_clause
from hub.store import sql

Conn = asyncpg.Connection | asyncpg.Pool
Row = dict[str, Any]

API_KEY_COLS = "id, agency_id, sub_account_id, name, prefix, created_at, last_used_at, revoked_at"
SUB_ACCOUNT_COLS = (
    "id, agency_id, name, default_region, timezone, help_text, quiet_start, quiet_end, "
    "created_at, updated_at"
)
PROVIDER_COLS = (
    "id, sub_account_id, provider, name, account_id, base_url, config, created_at, updated_at"
)
SENDER_COLS = (
    "id, sub_account_id, provider_account_id, channel, kind, address, throughput_class, mps, "
    "from_name, created_at"
)


async def insert_agency(conn: Conn, name: str) -> Row:
    row = await conn.fetchrow(
        "INSERT INTO agencies (name) VALUES ($1) RETURNING id, name, created_at", name
    )
    return dict(row)


async def insert_api_key(
    conn: Conn, agency_id: UUID, sub_account_id: UUID | None, name: str, prefix: str,
    key_hash: bytes,
) -> Row:
    row = await conn.fetchrow(
        """INSERT INTO api_keys (agency_id, sub_account_id, name, prefix, key_hash)
           VALUES ($1, $2, $3, $4, $5) RETURNING """ + API_KEY_COLS,
        agency_id, sub_account_id, name, prefix, key_hash,
    )
    return dict(row)


_SA_COLS = SUB_ACCOUNT_COLS.split(", ")


async def find_api_key(conn: Conn, key_hash: bytes,
                       sub_account_id: UUID | None = None) -> Row | None:
    """The live key of this hash; its "sub_account" is the row of `sub_account_id` read in
    the same round trip (None when there is none or no id was given). Whether the key may
    act on that sub-account is the caller's check (`hub.tenancy.sub_account_for`)."""
    # Touch last_used_at at most once a minute so that hot keys do not write on every call.
    row = await conn.fetchrow(
        f"""WITH k AS (
               SELECT id, agency_id, sub_account_id, last_used_at FROM api_keys
               WHERE key_hash = $1 AND revoked_at IS NULL),
           touch AS (
               UPDATE api_keys SET last_used_at = now() FROM k
               WHERE api_keys.id = k.id
                 AND (k.last_used_at IS NULL OR k.last_used_at < now() - interval '1 minute'))
           SELECT k.id, k.agency_id, k.sub_account_id,
                  {", ".join(f"sa.{c} AS sa_{c}" for c in _SA_COLS)}
           FROM k LEFT JOIN sub_accounts sa ON sa.id = $2""",
        key_hash, sub_account_id,
    )
    if row is None:
        return None
    sub_account = {c: row[f"sa_{c}"] for c in _SA_COLS} if row["sa_id"] is not None else None
    return {"id": row["id"], "agency_id": row["agency_id"],
            "sub_account_id": row["sub_account_id"], "sub_account": sub_account}


async def list_api_keys(conn: Conn, agency_id: UUID, sub_account_id: UUID | None,
                        cursor: Cursor | None, limit: int) -> list[Row]:
    """The keys of one sub-account, or the agency's own keys when `sub_account_id` is None."""
    cond, args = keyset_clause(cursor, 3)
    rows = await conn.fetch(
        f"""SELECT {API_KEY_COLS} FROM api_keys
            WHERE agency_id = $1 AND sub_account_id IS NOT DISTINCT FROM $2 AND {cond}
            ORDER BY created_at DESC, id DESC LIMIT {limit + 1}""",
        agency_id, sub_account_id, *args,
    )
    return [dict(r) for r in rows]


async def lock_live_agency_keys(conn: asyncpg.Connection, agency_id: UUID) -> list[UUID]:
    """The agency's live agency keys, locked until the transaction ends, so that two
    revocations racing each other see each other's outcome."""
    rows = await conn.fetch(
        """SELECT id FROM api_keys
           WHERE agency_id = $1 AND sub_account_id IS NULL AND revoked_at IS NULL
           ORDER BY id FOR UPDATE""",
        agency_id,
    )
    return [r["id"] for r in rows]


async def revoke_api_key(conn: Conn, agency_id: UUID, sub_account_id: UUID | None,
                         key_id: UUID) -> Row | None:
    row = await conn.fetchrow(
        f"""UPDATE api_keys SET revoked_at = coalesce(revoked_at, now())
            WHERE id = $1 AND agency_id = $2 AND sub_account_id IS NOT DISTINCT FROM $3
            RETURNING {API_KEY_COLS}""",
        key_id, agency_id, sub_account_id,
    )
    return dict(row) if row else None


async def insert_sub_account(conn: Conn, agency_id: UUID, fields: Row) -> Row:
    query, args = sql.insert("sub_accounts", {"agency_id": agency_id}, fields, SUB_ACCOUNT_COLS)
    return dict(await conn.fetchrow(query, *args))


async def get_sub_account(conn: Conn, sub_account_id: UUID) -> Row | None:
    row = await conn.fetchrow(
        f"SELECT {SUB_ACCOUNT_COLS} FROM sub_accounts WHERE id = $1", sub_account_id
    )
    return dict(row) if row else None


async def list_sub_accounts(conn: Conn, agency_id: UUID, only: UUID | None,
                            cursor: Cursor | None, limit: int) -> list[Row]:
    cond, args = keyset_clause(cursor, 3)
    rows = await conn.fetch(
        f"""SELECT {SUB_ACCOUNT_COLS} FROM sub_accounts
            WHERE agency_id = $1 AND ($2::uuid IS NULL OR id = $2) AND {cond}
            ORDER BY created_at DESC, id DESC LIMIT {limit + 1}""",
        agency_id, only, *args,
    )
    return [dict(r) for r in rows]


async def update_sub_account(conn: Conn, sub_account_id: UUID, fields: Row) -> Row | None:
    if not fields:
        return await get_sub_account(conn, sub_account_id)
    query, args = sql.update("sub_accounts", {"id": sub_account_id}, fields, SUB_ACCOUNT_COLS)
    row = await conn.fetchrow(query, *args)
    return dict(row) if row else None


async def insert_provider_account(conn: Conn, sub_account_id: UUID, fields: Row) -> Row:
    query, args = sql.insert("provider_accounts", {"sub_account_id": sub_account_id}, fields,
                             PROVIDER_COLS)
    return dict(await conn.fetchrow(query, *args))


async def get_provider_account(conn: Conn, sub_account_id: UUID, id_: UUID) -> Row | None:
    row = await conn.fetchrow(
        f"SELECT {PROVIDER_COLS} FROM provider_accounts WHERE id = $1 AND sub_account_id = $2",
        id_, sub_account_id,
    )
    return dict(row) if row else None


async def get_provider_secret(conn: Conn, sub_account_id: UUID, id_: UUID) -> bytes | None:
    value = await conn.fetchval(
        "SELECT secret_encrypted FROM provider_accounts WHERE id = $1 AND sub_account_id = $2",
        id_, sub_account_id,
    )
    return bytes(value) if value is not None else None


async def list_provider_accounts(conn: Conn, sub_account_id: UUID, cursor: Cursor | None,
                                 limit: int) -> list[Row]:
    cond, args = keyset_clause(cursor, 2)
    rows = await conn.fetch(
        f"""SELECT {PROVIDER_COLS} FROM provider_accounts WHERE sub_account_id = $1 AND {cond}
            ORDER BY created_at DESC, id DESC LIMIT {limit + 1}""",
        sub_account_id, *args,
    )
    return [dict(r) for r in rows]


async def update_provider_account(conn: Conn, sub_account_id: UUID, id_: UUID,
                                  fields: Row) -> Row | None:
    if not fields:
        return await get_provider_account(conn, sub_account_id, id_)
    query, args = sql.update("provider_accounts", {"id": id_, "sub_account_id": sub_account_id},
                             fields, PROVIDER_COLS)
    row = await conn.fetchrow(query, *args)
    return dict(row) if row else None


async def delete_provider_account(conn: Conn, sub_account_id: UUID, id_: UUID) -> bool:
    status = await conn.execute(
        "DELETE FROM provider_accounts WHERE id = $1 AND sub_account_id = $2", id_, sub_account_id
    )
    return status.endswith(" 1")


async def provider_in_use(conn: Conn, id_: UUID) -> bool:
    return bool(await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM senders WHERE provider_account_id = $1)", id_
    ))


async def insert_sender(conn: Conn, sub_account_id: UUID, fields: Row) -> Row | None:
    query, args = sql.insert("senders", {"sub_account_id": sub_account_id}, fields, SENDER_COLS,
                             "ON CONFLICT (sub_account_id, channel, address) DO NOTHING")
    row = await conn.fetchrow(query, *args)
    return dict(row) if row else None


async def number_holders(conn: Conn, address: str, other_than: UUID, provider: str,
                         account_id: str) -> list[Row]:
    """The provider accounts of sub-accounts other than `other_than` that send SMS or
    voice from `address` under this provider's `account_id`, with their encrypted
    secrets."""
    rows = await conn.fetch(
        """SELECT DISTINCT p.id, p.secret_encrypted FROM senders s
           JOIN provider_accounts p ON p.id = s.provider_account_id
           WHERE s.channel IN ('sms', 'voice') AND s.address = $1
             AND s.sub_account_id <> $2 AND p.provider = $3 AND p.account_id = $4""",
        address, other_than, provider, account_id)
    return [dict(r) for r in rows]


async def get_sender(conn: Conn, sub_account_id: UUID, id_: UUID) -> Row | None:
    row = await conn.fetchrow(
        f"SELECT {SENDER_COLS} FROM senders WHERE id = $1 AND sub_account_id = $2",
        id_, sub_account_id,
    )
    return dict(row) if row else None


async def list_senders(conn: Conn, sub_account_id: UUID, channel: str | None,
                       cursor: Cursor | None, limit: int) -> list[Row]:
    cond, args = keyset_clause(cursor, 3)
    rows = await conn.fetch(
        f"""SELECT {SENDER_COLS} FROM senders
            WHERE sub_account_id = $1 AND ($2::text IS NULL OR channel = $2) AND {cond}
            ORDER BY created_at DESC, id DESC LIMIT {limit + 1}""",
        sub_account_id, channel, *args,
    )
    return [dict(r) for r in rows]


async def delete_sender(conn: Conn, sub_account_id: UUID, id_: UUID) -> bool:
    status = await conn.execute(
        "DELETE FROM senders WHERE id = $1 AND sub_account_id = $2", id_, sub_account_id
    )
    return status.endswith(" 1")
