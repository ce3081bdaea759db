"""SQL for provider webhooks: finding the account, message and sender a callback names, the
durable inbox (a verified batch inserted in one statement, claim, finish, the sweeper's
queue) and the set-based status merge."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from hub.status import Status, sql_rank_case
from hub.store.messaging import MESSAGE_COLS

Conn = asyncpg.Connection | asyncpg.Pool
Row = dict[str, Any]


def retired_key(sid: str) -> str:
    """The history key under which a re-queued message keeps the provider id of its
    throttled attempt (hub/requeue.py), so late callbacks of that attempt still find it."""
    return f"{sid}:requeued"


INBOX_COLS = ("id, provider, kind, sub_account_id, provider_account_id, event_key, payload, "
              "received_at, status, attempts, next_attempt_at, applied_at, error")
_ACCOUNT_COLS = ("p.id, p.sub_account_id, p.provider, p.account_id, p.secret_encrypted, "
                 "p.config, p.updated_at")
_CALLBACK_COLS = """m.id, m.sub_account_id, m.conversation_id, m.contact_id, m.channel,
                    m.priority, m.status, m.to_address, m.provider_message_id, m.attempts,
                    m.provider_account_id, p.provider, p.account_id, p.secret_encrypted,
                    p.config"""


# --- who a callback is for ---------------------------------------------------------------


async def provider_accounts(conn: Conn, provider: str, account_id: str) -> list[Row]:
    """Every sub-account's provider account with this provider-side id (a Twilio Account
    SID may be shared by several sub-accounts)."""
    rows = await conn.fetch(
        f"""SELECT {_ACCOUNT_COLS} FROM provider_accounts p
            WHERE p.provider = $1 AND p.account_id = $2 ORDER BY p.created_at, p.id""",
        provider, account_id)
    return [dict(r) for r in rows]


async def provider_account(conn: Conn, id_: UUID) -> Row | None:
    row = await conn.fetchrow(f"SELECT {_ACCOUNT_COLS} FROM provider_accounts p WHERE p.id = $1",
                              id_)
    return dict(row) if row else None


async def callback_message(conn: Conn, message_id: UUID | None, provider: str,
                           provider_message_id: str | None,
                           to_address: str | None = None) -> Row | None:
    """The message a status callback names (our id first, else the provider's, narrowed to
    a recipient when the provider id covers a batch), with the provider account that sent
    it. Two queries rather than one CASE, so that each is planned on its own index."""
    if message_id is not None:
        row = await conn.fetchrow(
            f"""SELECT {_CALLBACK_COLS} FROM messages m
                LEFT JOIN provider_accounts p ON p.id = m.provider_account_id
                WHERE m.id = $1""", message_id)
    elif provider_message_id:
        row = await conn.fetchrow(
            f"""SELECT {_CALLBACK_COLS} FROM messages m
                LEFT JOIN provider_accounts p ON p.id = m.provider_account_id
                WHERE m.provider = $1 AND m.provider_message_id = $2
                  AND ($3::text IS NULL OR lower(m.to_address) = lower($3))
                LIMIT 1""", provider, provider_message_id, to_address)
        if row is None:  # an attempt that was queued again since (hub/requeue.py)
            row = await conn.fetchrow(
                f"""SELECT {_CALLBACK_COLS} FROM message_events e
                    JOIN messages m ON m.id = e.message_id AND m.provider = $1
                    LEFT JOIN provider_accounts p ON p.id = m.provider_account_id
                    WHERE e.provider_status = 'requeued' AND e.event_key = $2
                    LIMIT 1""", provider, retired_key(provider_message_id))
    else:
        return None
    return dict(row) if row else None


async def callback_messages(conn: asyncpg.Connection, message_ids: Sequence[UUID],
                            provider: str, provider_message_ids: Sequence[str]) -> list[Row]:
    """The messages a batch of status callbacks names (by our id or the provider's), locked
    in id order so that concurrent batches never deadlock on each other (FOR NO KEY
    UPDATE: rows inserted meanwhile that reference a message only need KEY SHARE)."""
    rows = await conn.fetch(
        f"""SELECT {_CALLBACK_COLS} FROM messages m
            LEFT JOIN provider_accounts p ON p.id = m.provider_account_id
            WHERE m.id = ANY($1::uuid[])
               OR (m.provider = $2 AND m.provider_message_id = ANY($3::text[]))
            ORDER BY m.id FOR NO KEY UPDATE OF m""",
        list(message_ids), provider, list(provider_message_ids))
    return [dict(r) for r in rows]


async def inbound_senders(conn: Conn, account_sid: str, addresses: list[str],
                          service_sid: str | None, sub_account_id: UUID | None = None
                          ) -> list[Row]:
    """SMS senders an inbound message may be addressed to: the number it was sent to, or
    the messaging service the number belongs to, under a Twilio account with this SID.
    Direct number matches come first."""
    rows = await conn.fetch(
        f"""SELECT s.id, s.sub_account_id, s.provider_account_id, s.kind, s.address,
                   {_ACCOUNT_COLS.replace('p.id,', 'p.id AS account_row_id,')}
            FROM senders s JOIN provider_accounts p ON p.id = s.provider_account_id
            WHERE p.provider = 'twilio' AND p.account_id = $1 AND s.channel = 'sms'
              AND (s.address = ANY($2::text[])
                   OR (s.kind = 'messaging_service' AND s.address = $3))
              AND ($4::uuid IS NULL OR s.sub_account_id = $4)
            ORDER BY (s.address = ANY($2::text[])) DESC, s.created_at, s.id""",
        account_sid, addresses, service_sid, sub_account_id)
    return [dict(r) for r in rows]


# --- the inbox ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verified:
    """A provider event whose signature checked out with the token of each account in
    `signers` (as (id, updated_at) of the version that was used), in preference order."""

    provider: str
    kind: str
    key: str  # the provider's event key; stored prefixed with the signing account's id
    payload: Any
    signers: tuple[tuple[UUID, datetime], ...]
    sub_account_id: UUID | None = None
    message_id: UUID | None = None  # a status callback: the message it names, if any
    provider_message_id: str | None = None


#: `wake_applier` NOTIFYs this channel once an inbox insert that stored a new row has
#: committed: the applier (hub/applier.py) LISTENs on it.
INBOX_CHANNEL = "webhook_inbox"

_INSERT_VERIFIED = """
WITH u AS (
    SELECT * FROM unnest($1::int[], $2::text[], $3::text[], $4::uuid[], $5::text[],
                         $6::jsonb[], $7::uuid[], $8::text[])
        AS u(ord, provider, kind, sa, key, payload, mid, pmid)),
v AS (SELECT * FROM unnest($9::int[], $10::int[], $11::uuid[], $12::timestamptz[])
          AS v(ord, pos, pa, version)),
found AS (
    SELECT u.ord, m.sub_account_id AS sa, m.provider_account_id AS pa
    FROM u JOIN messages m ON m.id = u.mid
    UNION ALL
    (SELECT DISTINCT ON (u.ord) u.ord, m.sub_account_id, m.provider_account_id
     FROM u JOIN messages m ON m.provider = u.provider AND m.provider_message_id = u.pmid
     WHERE u.mid IS NULL ORDER BY u.ord, m.created_at, m.id)),
ok AS (
    SELECT u.ord, u.provider, u.kind, coalesce(f.sa, u.sa) AS sa, c.pa,
           c.pa::text || ':' || u.key AS key, u.payload
    FROM u LEFT JOIN found f ON f.ord = u.ord
    JOIN LATERAL (SELECT v.pa, v.version FROM v
                  WHERE v.ord = u.ord AND CASE WHEN f.ord IS NULL THEN v.pos = 0
                                               ELSE v.pa = f.pa END
                  LIMIT 1) c ON true
    JOIN provider_accounts p ON p.id = c.pa AND p.updated_at = c.version),
ins AS (
    INSERT INTO webhook_events (provider, kind, sub_account_id, provider_account_id,
                                event_key, payload, next_attempt_at)
    SELECT provider, kind, sa, pa, key, payload, now() FROM ok
    ON CONFLICT (provider, kind, event_key) DO NOTHING
    RETURNING id, provider, kind, event_key)
SELECT u.ord, ok.ord IS NOT NULL AS accepted, ins.id
FROM u LEFT JOIN ok ON ok.ord = u.ord
LEFT JOIN ins ON ins.provider = ok.provider AND ins.kind = ok.kind AND ins.event_key = ok.key
ORDER BY u.ord"""


async def insert_verified(conn: Conn, events: Sequence[Verified]
                          ) -> list[tuple[bool, int | None]]:
    """Store verified events in one statement, due at once; per event (accepted, inbox id),
    the id None for a duplicate (same provider, kind and key) of an event stored before.

    Not accepted: a status callback for a message that none of its signers sent (another
    tenant's signature on our message), or a signer that changed or was deleted since it
    was read (the caller re-reads its accounts and tries once more)."""
    if not events:
        return []
    v_ord, v_pos, v_pa, v_version = [], [], [], []
    for i, e in enumerate(events):
        for pos, (pa, version) in enumerate(e.signers):
            v_ord.append(i)
            v_pos.append(pos)
            v_pa.append(pa)
            v_version.append(version)
    rows = await conn.fetch(
        _INSERT_VERIFIED, list(range(len(events))), [e.provider for e in events],
        [e.kind for e in events], [e.sub_account_id for e in events],
        [e.key for e in events], [e.payload for e in events],
        [e.message_id for e in events], [e.provider_message_id for e in events],
        v_ord, v_pos, v_pa, v_version)
    return [(r["accepted"], r["id"]) for r in rows]


_CLAIM = f"""
WITH c AS (
    SELECT {INBOX_COLS} FROM webhook_events
    WHERE status IN ('pending', 'orphan') AND {{which}}
    ORDER BY {{order}} LIMIT $1 FOR UPDATE SKIP LOCKED),
marked AS (
    UPDATE webhook_events w SET status = 'applied', attempts = w.attempts + 1, error = NULL,
           next_attempt_at = NULL, applied_at = now()
    FROM c WHERE w.id = c.id AND c.kind = ANY($2::text[]))
SELECT * FROM c ORDER BY id"""
_CLAIM_IDS = _CLAIM.format(which="id = ANY($3::bigint[])", order="id")
# statement_timestamp(), not now(): rows committed since this transaction began are due too.
_CLAIM_DUE = _CLAIM.format(which="next_attempt_at <= statement_timestamp()",
                           order="next_attempt_at")


async def wake_applier(conn: Conn) -> None:
    """Tell the applier that new rows are due. A statement of its own, after the insert
    has committed: a transaction that NOTIFYs holds PostgreSQL's notify-queue lock from
    its pre-commit to its end, WAL flush included, so inserts that notified committed one
    at a time; this one writes no WAL and holds the lock only for a moment."""
    await conn.execute("SELECT pg_notify($1, '')", INBOX_CHANNEL)


async def claim(conn: asyncpg.Connection, ids: Sequence[int] | None, limit: int,
                kinds: Sequence[str]) -> list[Row]:
    """Lock unapplied inbox rows for this transaction (skipping those another worker
    holds): these `ids`, or (None) up to `limit` rows whose (re)try is due, oldest first.
    The rows of `kinds` are marked applied as they are claimed (attempts + 1), so that a
    batch that applies them needs no second statement; `finish_many` records any other
    outcome before the commit. Rows come back as they were before the claim, in id order.
    """
    args = (limit, list(kinds)) if ids is None else (limit, list(kinds), list(ids))
    rows = await conn.fetch(_CLAIM_DUE if ids is None else _CLAIM_IDS, *args)
    return [dict(r) for r in rows]


@dataclass(frozen=True, slots=True)
class Finished:
    id: int
    status: str  # applied | orphan | ignored
    error: str | None = None
    sub_account_id: UUID | None = None
    next_attempt_at: datetime | None = None


async def finish_many(conn: Conn, done: Sequence[Finished]) -> None:
    """Record the outcome of claimed rows (the claim counted the attempt)."""
    if not done:
        return
    await conn.execute(
        """UPDATE webhook_events w SET status = u.status, error = u.error,
                  sub_account_id = coalesce(u.sa, w.sub_account_id),
                  next_attempt_at = u.next_at,
                  applied_at = CASE WHEN u.status IN ('applied', 'ignored') THEN now() END
           FROM unnest($1::bigint[], $2::text[], $3::text[], $4::uuid[], $5::timestamptz[])
               AS u(id, status, error, sa, next_at)
           WHERE w.id = u.id""",
        [d.id for d in done], [d.status for d in done], [d.error for d in done],
        [d.sub_account_id for d in done], [d.next_attempt_at for d in done])


async def failed(conn: Conn, id_: int, error: str, max_delay_s: float,
                 max_failures: int) -> None:
    """An apply that raised: kept pending with back-off; after `max_failures` only a person
    retries it."""
    await conn.execute(
        """UPDATE webhook_events SET attempts = attempts + 1, error = $2,
                  next_attempt_at = CASE WHEN attempts + 1 >= $4 THEN NULL ELSE
                      now() + make_interval(secs => least(2 ^ attempts, $3)) END
           WHERE id = $1 AND status IN ('pending', 'orphan')""",
        id_, error, max_delay_s, max_failures)


async def prune(conn: Conn, keep_days: int) -> int:
    """Forget applied and ignored events older than `keep_days`; orphans stay."""
    status = await conn.execute(
        """DELETE FROM webhook_events WHERE status IN ('applied', 'ignored')
           AND received_at < now() - make_interval(days => $1)""", keep_days)
    return int(status.rsplit(" ", 1)[-1])


# --- the status merge ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StatusEvent:
    """A provider receipt for one message, as recorded in its history."""

    message_id: UUID
    sub_account_id: UUID
    status: str
    provider_status: str
    error_code: str | None
    event_key: str
    occurred_at: datetime | None


@dataclass(frozen=True, slots=True)
class Merge:
    """Where one message moves: its highest new status, that receipt's error code, the
    provider's id if we had none, and whether a receipt says it left (sets sent_at)."""

    message_id: UUID
    status: str
    error_code: str | None
    provider_message_id: str | None
    left: bool


async def record_status_events(conn: asyncpg.Connection, events: Sequence[StatusEvent]
                               ) -> set[tuple[UUID, str]]:
    """The receipts in their messages' history; returns the (message id, event key) of
    those not recorded before."""
    if not events:
        return set()
    rows = await conn.fetch(
        """INSERT INTO message_events (message_id, sub_account_id, status, provider_status,
                                       error_code, event_key, occurred_at)
           SELECT u.mid, u.sa, u.status, u.pstatus, u.code, u.key, coalesce(u.at, now())
           FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[],
                       $7::timestamptz[]) AS u(mid, sa, status, pstatus, code, key, at)
           ON CONFLICT (message_id, event_key) WHERE event_key IS NOT NULL DO NOTHING
           RETURNING message_id, event_key""",
        [e.message_id for e in events], [e.sub_account_id for e in events],
        [e.status for e in events], [e.provider_status for e in events],
        [e.error_code for e in events], [e.event_key for e in events],
        [e.occurred_at for e in events])
    return {(r["message_id"], r["event_key"]) for r in rows}


_NO_MOVE = [Status.CANCELED.value, Status.RECEIVED.value]


async def merge_statuses(conn: asyncpg.Connection, merges: Sequence[Merge]) -> list[Row]:
    """Move each message to its merge's status if that is forward (rank(new) >
    rank(current)); returns the messages that moved. Read implies delivered; a positive
    receipt clears an earlier failure; any callback settles an in-doubt send."""
    if not merges:
        return []
    cols = ", ".join(f"m.{c.strip()}" for c in MESSAGE_COLS.split(","))
    rows = await conn.fetch(
        f"""UPDATE messages m SET status = u.new_status,
                  sent_at = CASE WHEN u.left_ THEN coalesce(m.sent_at, now())
                                 ELSE m.sent_at END,
                  delivered_at = CASE WHEN u.new_status IN ('delivered', 'read')
                                      THEN coalesce(m.delivered_at, now())
                                      ELSE m.delivered_at END,
                  read_at = CASE WHEN u.new_status = 'read' THEN coalesce(m.read_at, now())
                                 ELSE m.read_at END,
                  failed_at = CASE WHEN u.new_status IN ('failed', 'undelivered')
                                   THEN coalesce(m.failed_at, now())
                                   WHEN u.new_status IN ('delivered', 'read') THEN NULL
                                   ELSE m.failed_at END,
                  error_code = u.new_code, in_doubt = false,
                  provider_message_id = coalesce(m.provider_message_id, u.new_pmid),
                  updated_at = now()
            FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bool[])
                AS u(mid, new_status, new_code, new_pmid, left_)
            WHERE m.id = u.mid AND {sql_rank_case('u.new_status')} > {sql_rank_case('m.status')}
              AND NOT (m.status = ANY($6::text[])) AND NOT (u.new_status = ANY($6::text[]))
            RETURNING {cols}""",
        [g.message_id for g in merges], [g.status for g in merges],
        [g.error_code for g in merges], [g.provider_message_id for g in merges],
        [g.left for g in merges], _NO_MOVE)
    return [dict(r) for r in rows]
