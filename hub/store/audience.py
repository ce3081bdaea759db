"""SQL for sizing an audience before a campaign exists (the console's live count)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg

Conn = asyncpg.Connection | asyncpg.Pool

_ADDRESS = {"email": ("c.email_key", "email"), "voice": ("c.phone", "voice")}


async def count(conn: Conn, sub_account_id: UUID, channel: str, where: str,
                args: list[Any]) -> int:
    """Contacts the audience selects that have an address on `channel` and are not
    suppressed there. `where` is hub.campaigns.audience_sql(audience, 1)."""
    address, sup = _ADDRESS.get(channel, ("c.phone", "sms"))
    n = await conn.fetchval(
        f"""SELECT count(*) FROM contacts c
            WHERE c.sub_account_id = $1 AND {address} IS NOT NULL AND ({where})
              AND NOT EXISTS (SELECT 1 FROM suppressions s
                              WHERE s.sub_account_id = c.sub_account_id AND s.channel = '{sup}'
                                AND s.address = {address} AND s.removed_at IS NULL)""",
        sub_account_id, *args)
    return int(n or 0)


async def tags(conn: Conn, sub_account_id: UUID, limit: int = 200) -> list[str]:
    rows = await conn.fetch(
        """SELECT DISTINCT t FROM contacts, unnest(tags) AS t WHERE sub_account_id = $1
           ORDER BY t LIMIT $2""", sub_account_id, limit)
    return [r["t"] for r in rows]
