"""SQL for what the contacts pages show beside a contact's own fields, for a page of
contacts at once: where each is opted out, and its conversations."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg

Conn = asyncpg.Connection | asyncpg.Pool
Row = dict[str, Any]


async def opt_outs(conn: Conn, sub_account_id: UUID, contact_ids: list[UUID]) -> list[Row]:
    """The active suppressions of these contacts' addresses: SMS and voice by phone, email
    by the lower-cased address (as suppressions keep them)."""
    rows = await conn.fetch(
        """SELECT c.id AS contact_id, s.channel, s.reason, s.source, s.created_at
           FROM contacts c
           CROSS JOIN LATERAL (VALUES ('sms', c.phone), ('voice', c.phone),
                                      ('email', c.email_key)) AS a (channel, address)
           JOIN suppressions s ON s.sub_account_id = c.sub_account_id
                AND s.channel = a.channel AND s.address = a.address AND s.removed_at IS NULL
           WHERE c.sub_account_id = $1 AND c.id = ANY($2::uuid[])""",
        sub_account_id, contact_ids,
    )
    return [dict(r) for r in rows]


async def conversations(conn: Conn, sub_account_id: UUID,
                        contact_ids: list[UUID]) -> list[Row]:
    """These contacts' conversations (one per channel at most), latest activity first."""
    rows = await conn.fetch(
        """SELECT id, contact_id, channel, unread_count, last_message_at,
                  last_message_preview, assignee
           FROM conversations WHERE sub_account_id = $1 AND contact_id = ANY($2::uuid[])
           ORDER BY last_message_at DESC NULLS LAST, created_at DESC""",
        sub_account_id, contact_ids,
    )
    return [dict(r) for r in rows]
