"""The durable event log behind the realtime feed, and publishing after commit.

Each sub-account's events get a gapless, monotonic `seq`: the counter lives on the
sub-account row and is bumped inside the writing transaction, so the row lock orders
commits and a reader that saw seq N never later finds a new event below N.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
import redis.asyncio as aioredis

log = logging.getLogger(__name__)


def channel_for(sub_account_id: UUID | str) -> str:
    return f"hub:events:{sub_account_id}"


@dataclass(frozen=True, slots=True)
class PendingEvent:
    sub_account_id: UUID
    type: str
    data: dict[str, Any]
    topic: str | None = None


@dataclass(frozen=True, slots=True)
class Event:
    id: UUID
    sub_account_id: UUID
    seq: int
    type: str
    topic: str | None
    data: dict[str, Any]
    created_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "seq": self.seq,
            "event": self.type,
            "topic": self.topic,
            "data": self.data,
            "created_at": self.created_at.isoformat(),
        }


def _jsonable(data: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(json.dumps(data, default=str))
    return result


async def append(conn: asyncpg.Connection, pending: list[PendingEvent]) -> list[Event]:
    """Write `pending` to the log inside the caller's transaction; returns them with seqs."""
    by_sa: dict[UUID, list[PendingEvent]] = {}
    for p in pending:
        by_sa.setdefault(p.sub_account_id, []).append(p)
    out: list[Event] = []
    # Fixed lock order across sub-accounts avoids deadlocks between multi-tenant writers.
    for sa in sorted(by_sa, key=str):
        items = by_sa[sa]
        last = await conn.fetchval(
            "UPDATE sub_accounts SET event_seq = event_seq + $2 WHERE id = $1 RETURNING event_seq",
            sa,
            len(items),
        )
        if last is None:
            continue  # the sub-account was deleted in this transaction
        first = last - len(items) + 1
        rows = await conn.fetch(
            """INSERT INTO events (sub_account_id, seq, type, topic, data)
               SELECT $1, s, t, tp, d
               FROM unnest($2::bigint[], $3::text[], $4::text[], $5::jsonb[]) AS u(s, t, tp, d)
               RETURNING id, seq, created_at""",
            sa,
            list(range(first, last + 1)),
            [i.type for i in items],
            [i.topic for i in items],
            [_jsonable(i.data) for i in items],
        )
        for row, item in zip(rows, items, strict=True):
            out.append(
                Event(row["id"], sa, row["seq"], item.type, item.topic, _jsonable(item.data),
                      row["created_at"])
            )
    return out


async def publish(redis: aioredis.Redis, events: list[Event]) -> None:
    """Fan events out to every gateway replica. At-most-once: the log is the source of
    truth, and feed clients fill any gap from it with `since`."""
    if not events:
        return
    try:
        async with redis.pipeline(transaction=False) as pipe:
            for e in events:
                pipe.publish(channel_for(e.sub_account_id), json.dumps(e.to_json()))
            await pipe.execute()
    except Exception:  # Redis down: clients resume from the durable log
        log.warning("event publish failed; feed clients will catch up from the log",
                    exc_info=True)


async def list_after(
    conn: asyncpg.Connection | asyncpg.Pool, sub_account_id: UUID, after_seq: int, limit: int
) -> list[Event]:
    rows = await conn.fetch(
        """SELECT id, sub_account_id, seq, type, topic, data, created_at FROM events
           WHERE sub_account_id = $1 AND seq > $2 ORDER BY seq LIMIT $3""",
        sub_account_id,
        after_seq,
        limit,
    )
    return [Event(r["id"], r["sub_account_id"], r["seq"], r["type"], r["topic"], r["data"],
                  r["created_at"]) for r in rows]
