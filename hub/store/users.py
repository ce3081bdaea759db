"""SQL for users, their grants and their login sessions."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

Conn = asyncpg.Connection | asyncpg.Pool
Row = dict[str, Any]

USER_COLS = "id, agency_id, email, name, created_at, disabled_at"


async def insert_user(conn: Conn, agency_id: UUID, email: str, name: str,
                      password_hash: str) -> Row | None:
    row = await conn.fetchrow(
        f"""INSERT INTO users (agency_id, email, name, password_hash) VALUES ($1, $2, $3, $4)
            ON CONFLICT (email) DO NOTHING RETURNING {USER_COLS}""",
        agency_id, email, name, password_hash)
    return dict(row) if row else None


async def find_user_by_email(conn: Conn, email: str) -> Row | None:
    row = await conn.fetchrow(
        f"SELECT {USER_COLS}, password_hash FROM users WHERE email = $1", email)
    return dict(row) if row else None


async def set_password(conn: Conn, user_id: UUID, password_hash: str) -> None:
    await conn.execute("UPDATE users SET password_hash = $2 WHERE id = $1", user_id,
                       password_hash)


async def grant(conn: Conn, user_id: UUID, sub_account_id: UUID, role: str) -> None:
    await conn.execute(
        """INSERT INTO user_grants (user_id, sub_account_id, role) VALUES ($1, $2, $3)
           ON CONFLICT (user_id, sub_account_id) DO UPDATE SET role = EXCLUDED.role""",
        user_id, sub_account_id, role)


async def grants_of(conn: Conn, user_id: UUID) -> list[Row]:
    rows = await conn.fetch(
        """SELECT g.sub_account_id, g.role, s.name FROM user_grants g
           JOIN sub_accounts s ON s.id = g.sub_account_id
           WHERE g.user_id = $1 ORDER BY s.name, s.id""", user_id)
    return [dict(r) for r in rows]


async def members(conn: Conn, sub_account_id: UUID, roles: list[str]) -> list[Row]:
    """Users granted this sub-account with one of `roles` (e.g. who can take a thread)."""
    rows = await conn.fetch(
        """SELECT u.id, u.email, u.name, g.role FROM user_grants g
           JOIN users u ON u.id = g.user_id
           WHERE g.sub_account_id = $1 AND g.role = ANY($2::text[]) AND u.disabled_at IS NULL
           ORDER BY u.name, u.email""", sub_account_id, roles)
    return [dict(r) for r in rows]


async def insert_session(conn: Conn, token_hash: bytes, user_id: UUID, csrf_token: str,
                         expires_at: datetime) -> None:
    await conn.execute(
        """INSERT INTO user_sessions (token_hash, user_id, csrf_token, expires_at)
           VALUES ($1, $2, $3, $4)""", token_hash, user_id, csrf_token, expires_at)


async def find_session(conn: Conn, token_hash: bytes) -> Row | None:
    # Touch last_seen_at at most once a minute, as for API keys.
    row = await conn.fetchrow(
        """WITH s AS (
               SELECT s.user_id, s.csrf_token, s.expires_at, s.last_seen_at, u.agency_id,
                      u.email, u.name
               FROM user_sessions s JOIN users u ON u.id = s.user_id
               WHERE s.token_hash = $1 AND s.expires_at > now() AND u.disabled_at IS NULL),
           touch AS (
               UPDATE user_sessions SET last_seen_at = now() FROM s
               WHERE user_sessions.token_hash = $1
                 AND s.last_seen_at < now() - interval '1 minute')
           SELECT user_id, csrf_token, expires_at, agency_id, email, name FROM s""",
        token_hash)
    return dict(row) if row else None


async def delete_session(conn: Conn, token_hash: bytes) -> None:
    await conn.execute("DELETE FROM user_sessions WHERE token_hash = $1", token_hash)


async def delete_expired_sessions(conn: Conn) -> int:
    status = await conn.execute("DELETE FROM user_sessions WHERE expires_at <= now()")
    return int(status.split()[-1])
