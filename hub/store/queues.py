"""SQL for the operator's view of the send queue: how much waits in PostgreSQL and for how
long, per channel (served as gauges by the gateway's /metrics)."""

from __future__ import annotations

import asyncpg

Conn = asyncpg.Connection | asyncpg.Pool


async def queue_stats(conn: Conn) -> dict[str, tuple[int, float]]:
    """(messages queued, age in seconds of the oldest) per channel. Queued messages are
    either claimable or leased to a shard, and each half has its own partial index: asking
    for them as two halves lets each read its index, so the cost follows the queue, not the
    table."""
    rows = await conn.fetch(
        """SELECT channel, count(*) AS depth,
                  extract(epoch FROM now() - min(created_at))::float8 AS oldest_s
           FROM (SELECT channel, created_at FROM messages
                 WHERE status = 'queued' AND lease_owner IS NULL
                 UNION ALL
                 SELECT channel, created_at FROM messages
                 WHERE status = 'queued' AND lease_owner IS NOT NULL) AS queued
           GROUP BY channel""")
    return {r["channel"]: (int(r["depth"]), max(0.0, float(r["oldest_s"]))) for r in rows}
