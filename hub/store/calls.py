"""SQL for the voice TwiML route: what a call says, and which provider account placed it."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg


async def call_script(conn: asyncpg.Connection | asyncpg.Pool,
                      message_id: UUID) -> dict[str, Any] | None:
    """A message's channel, provider and provider account, and what its call says as
    stored: the voice JSON (rendered per recipient), else the body."""
    row = await conn.fetchrow(
        """SELECT m.channel, p.provider, m.provider_account_id, m.body, m.voice
           FROM messages m JOIN provider_accounts p ON p.id = m.provider_account_id
           WHERE m.id = $1""", message_id)
    return dict(row) if row else None
