"""SQL for sizing an audience before a campaign exists (the console's live count)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg

Conn = asyncpg.Connection | asyncpg.Pool

_ADDRESS = {"email": ("c.email_key", "email"), "voice": ("c.phone", "voice")}


def _reachable(channel: str, where: str) -> str:
    address, sup = _ADDRESS.get(channel, ("c.phone", "sms"))
    return f"""FROM contacts c
            WHERE c.sub_account_id = $1 AND {address} IS NOT NULL AND ({where})
              AND NOT EXISTS (SELECT 1 FROM suppressions s
                              WHERE s.sub_account_id = c.sub_account_id AND s.channel = '{sup}'
                                AND s.address = {address} AND s.removed_at IS NULL)"""


async def count(conn: Conn, sub_account_id: UUID, channel: str, where: str,
                args: list[Any]) -> int:
    """Contacts the audience selects that have an address on `channel` and are not
    suppressed there. `where` is hub.campaigns.audience_sql(audience, 1)."""
    n = await conn.fetchval(f"SELECT count(*) {_reachable(channel, where)}",
                            sub_account_id, *args)
    return int(n or 0)


#: Contacts grouped by explicit zone and number prefix, with a sample number per group:
#: enough to apply the time-zone and region checks SQL cannot make, on a few hundred groups
#: instead of every contact.
_GROUPS = """SELECT c.timezone, left(c.phone, 7) AS prefix, min(c.phone) AS sample,
    count(*) AS n"""


async def groups(conn: Conn, where: str, args: list[Any]) -> list[asyncpg.Record]:
    """The contacts `where` selects (SQL over `contacts c`), grouped (see `_GROUPS`)."""
    return await conn.fetch(f"{_GROUPS} FROM contacts c WHERE {where} GROUP BY 1, 2", *args)


async def count_groups(conn: Conn, sub_account_id: UUID, channel: str, where: str,
                       args: list[Any]) -> list[asyncpg.Record]:
    """The contacts `count` counts, grouped (see `_GROUPS`)."""
    return await conn.fetch(f"{_GROUPS} {_reachable(channel, where)} GROUP BY 1, 2",
                            sub_account_id, *args)


async def tags(conn: Conn, sub_account_id: UUID, limit: int = 200) -> list[str]:
    rows = await conn.fetch(
        """SELECT DISTINCT t FROM contacts, unnest(tags) AS t WHERE sub_account_id = $1
           ORDER BY t LIMIT $2""", sub_account_id, limit)
    return [r["t"] for r in rows]


async def timezones(conn: Conn, sub_account_id: UUID, limit: int = 200) -> list[str]:
    """The explicit time zones the sub-account's contacts have (contacts without one take
    their number's zone, which the campaign works out when it launches)."""
    rows = await conn.fetch(
        """SELECT DISTINCT timezone FROM contacts
           WHERE sub_account_id = $1 AND timezone IS NOT NULL ORDER BY timezone LIMIT $2""",
        sub_account_id, limit)
    return [r["timezone"] for r in rows]
