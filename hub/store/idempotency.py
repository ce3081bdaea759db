"""SQL for Idempotency-Key records, written in the same transaction as the effect."""

from __future__ import annotations

from typing import Any

import asyncpg


async def save(conn: asyncpg.Connection, scope: str, key: str, request_hash: bytes,
               status_code: int, response: Any) -> bool:
    """Record the key with its response inside the caller's transaction, after the work.
    False when the key is taken: a concurrent request with the same key blocks on the
    unique index until its transaction ends, so this sees the committed record."""
    return bool(await conn.fetchval(
        """INSERT INTO idempotency_keys (scope, key, request_hash, status_code, response)
           VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING RETURNING true""",
        scope, key, request_hash, status_code, response,
    ))


async def stored(conn: asyncpg.Connection | asyncpg.Pool, scope: str,
                 key: str) -> dict[str, Any] | None:
    row = await conn.fetchrow(
        """SELECT request_hash, status_code, response FROM idempotency_keys
           WHERE scope = $1 AND key = $2""",
        scope, key,
    )
    return dict(row) if row else None


async def expire(conn: asyncpg.Connection | asyncpg.Pool, ttl_hours: int) -> int:
    status = await conn.execute(
        "DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(hours => $1)",
        ttl_hours,
    )
    return int(status.split()[-1])
