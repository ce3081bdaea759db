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
    #: `data` as JSON, when the writer already has it (`append`): not serialized again
    data_json: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "seq": self.seq,
            "event": self.type,
            "topic": self.topic,
            "data": self.data,
            "created_at": iso(self.created_at),
        }

    def frame(self) -> str:
        """The feed's `event` frame (docs/realtime.md, section 4), serialized once per
        event: every replica and every client gets this same text."""
        data = self.data_json if self.data_json is not None else compact(self.data)
        return (f'{{"type":"event","id":"{self.id}","seq":{self.seq},'
                f'"event":{compact(self.type)},"topic":{compact(self.topic)},'
                f'"data":{data},"created_at":"{iso(self.created_at)}"}}')

    def wire(self) -> str:
        """What `publish` sends: a one-line JSON header with what the feed routes by, then
        the frame as clients get it (`gateway.feed.LiveEvent.from_wire` reads it)."""
        return (f'{{"seq":{self.seq},"event":{compact(self.type)},'
                f'"topic":{compact(self.topic)}}}\n{self.frame()}')


def compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=_json_value)


def iso(moment: datetime) -> str:
    """A time as the REST API writes it (pydantic's JSON): ISO 8601 with a `T`, UTC as `Z`.
    `str()` wrote '2026-12-03 22:47:24+00:00', which some clients (Safari's Date) refuse."""
    text = moment.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def _json_value(value: Any) -> Any:
    return iso(value) if isinstance(value, datetime) else str(value)


async def append(conn: asyncpg.Connection, pending: list[PendingEvent]) -> list[Event]:
    """Write `pending` to the log inside the caller's transaction; returns them with seqs,
    each sub-account's in order.

    One statement whatever the number of sub-accounts: it bumps every counter (locking the
    sub-account rows in id order, so multi-tenant writers never deadlock) and inserts every
    event with the seqs the bump made room for, in `pending` order per sub-account.

    The lock is FOR NO KEY UPDATE, not FOR UPDATE: the foreign-key checks of rows inserted
    meanwhile (the webhook inbox, contacts, messages …) take KEY SHARE on these same rows,
    which FOR UPDATE blocks. With FOR UPDATE, an inbox INSERT spanning several sub-accounts
    and an apply deadlocked, and PostgreSQL found it only after `deadlock_timeout` (1 s):
    the ~1 s ingest stalls of BENCHMARKS.md's webhook sections."""
    # Serialized once: the text goes to the log and, spliced into the frame, to the feed.
    by_sa: dict[UUID, list[tuple[PendingEvent, str]]] = {}
    for p in pending:
        by_sa.setdefault(p.sub_account_id, []).append((p, compact(p.data)))
    sas = list(by_sa)  # the statement locks them in id order
    items = [x for sa in sas for x in by_sa[sa]]  # grouped by sub-account, each in order
    rows = await conn.fetch(
        _APPEND, sas, [len(by_sa[sa]) for sa in sas], [p.sub_account_id for p, _ in items],
        [k for sa in sas for k in range(1, len(by_sa[sa]) + 1)], [p.type for p, _ in items],
        [p.topic for p, _ in items], [t for _, t in items])
    # In seq order, each sub-account's rows line up with its events (a sub-account deleted
    # in this transaction had no row to bump: none).
    queues = {sa: iter(group) for sa, group in by_sa.items()}
    written: list[Event] = []
    for row in rows:
        p, t = next(queues[row["sub_account_id"]])
        written.append(Event(row["id"], p.sub_account_id, row["seq"], p.type, p.topic, p.data,
                             row["created_at"], t))
    return written


#: Each sub-account's counter goes up by its number of events; its k-th event gets the
#: k-th seq above the old head.
_APPEND = """
    WITH locked AS (SELECT id FROM sub_accounts WHERE id = ANY($1::uuid[])
                    ORDER BY id FOR NO KEY UPDATE),
    bumped AS (
        UPDATE sub_accounts s SET event_seq = s.event_seq + u.n
        FROM locked JOIN unnest($1::uuid[], $2::int[]) AS u(id, n) ON u.id = locked.id
        WHERE s.id = locked.id
        RETURNING s.id, s.event_seq - u.n AS head),
    written AS (
        INSERT INTO events (sub_account_id, seq, type, topic, data)
        SELECT e.sa, b.head + e.k, e.type, e.topic, e.data::jsonb
        FROM unnest($3::uuid[], $4::int[], $5::text[], $6::text[], $7::text[])
            AS e(sa, k, type, topic, data)
        JOIN bumped b ON b.id = e.sa
        RETURNING id, sub_account_id, seq, created_at)
    SELECT * FROM written ORDER BY seq"""


async def publish(redis: aioredis.Redis, events: list[Event]) -> None:
    """Fan events out to every gateway replica. At-most-once: the log is the source of
    truth, and feed clients fill any gap from it with `since`."""
    if not events:
        return
    try:
        async with redis.pipeline(transaction=False) as pipe:
            for e in events:
                pipe.publish(channel_for(e.sub_account_id), e.wire())
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


async def log_bounds(pool: asyncpg.Pool, sub_account_id: UUID) -> tuple[int, int] | None:
    """(oldest seq still in the log, head seq) of a sub-account; oldest is head + 1 when
    the log is empty. None when the sub-account does not exist."""
    row = await pool.fetchrow(
        """SELECT s.event_seq AS head,
                  (SELECT min(seq) FROM events e WHERE e.sub_account_id = s.id) AS oldest
           FROM sub_accounts s WHERE s.id = $1""",
        sub_account_id,
    )
    if row is None:
        return None
    head: int = row["head"]
    return (row["oldest"] if row["oldest"] is not None else head + 1), head


async def heads(pool: asyncpg.Pool, sub_account_ids: list[UUID]) -> dict[UUID, int]:
    """The last seq of each sub-account's log (committed), for feed catch-up checks."""
    rows = await pool.fetch("SELECT id, event_seq FROM sub_accounts WHERE id = ANY($1::uuid[])",
                            sub_account_ids)
    return {r["id"]: r["event_seq"] for r in rows}


async def prune_events(pool: asyncpg.Pool, keep_days: int, batch: int = 10_000) -> int:
    """Delete events older than `keep_days`; returns how many.

    Pruning removes a prefix of each sub-account's log (everything up to its newest seq
    that is old enough), never a hole: `created_at` is the writer's transaction start, so
    it is not strictly ordered by seq, and a hole would break gapless replay."""
    cutoffs = await pool.fetch(
        """SELECT sub_account_id, max(seq) AS upto FROM events
           WHERE created_at < now() - make_interval(days => $1)
           GROUP BY sub_account_id""",
        keep_days,
    )
    deleted = 0
    for c in cutoffs:
        while True:
            status = await pool.execute(
                """DELETE FROM events WHERE sub_account_id = $1 AND seq IN (
                       SELECT seq FROM events WHERE sub_account_id = $1 AND seq <= $2
                       ORDER BY seq LIMIT $3)""",
                c["sub_account_id"], c["upto"], batch,
            )
            n = int(status.rsplit(" ", 1)[-1])
            deleted += n
            if n < batch:
                break
    if deleted:
        log.info("pruned the event log", extra={"deleted": deleted, "keep_days": keep_days})
    return deleted
