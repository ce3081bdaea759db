"""SQL for reading conversations, messages and their status history."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg

from hub.pagination import BY_ACTIVITY, Cursor, keyset_clause
from hub.status import Status, can_transition

Conn = asyncpg.Connection | asyncpg.Pool
Row = dict[str, Any]

CONVERSATION_COLS = (
    "id, sub_account_id, contact_id, channel, unread_count, last_message_at, "
    "last_message_preview, assignee, created_at, updated_at"
)
MESSAGE_COLS = (
    "id, sub_account_id, conversation_id, contact_id, campaign_id, direction, channel, priority, "
    "sender_id, from_address, to_address, subject, body, media_urls, status, in_doubt, provider, "
    "provider_message_id, error_code, error_message, segments, encoding, created_at, updated_at, "
    "sent_at, delivered_at, read_at, failed_at, sent_by"
)
_FAILURES = (Status.FAILED.value, Status.UNDELIVERED.value)


async def get_conversation(conn: Conn, sub_account_id: UUID, id_: UUID) -> Row | None:
    row = await conn.fetchrow(
        f"SELECT {CONVERSATION_COLS} FROM conversations WHERE id = $1 AND sub_account_id = $2",
        id_, sub_account_id,
    )
    return dict(row) if row else None


async def list_conversations(conn: Conn, sub_account_id: UUID, *, contact_id: UUID | None,
                             unread: bool | None, cursor: Cursor | None, limit: int,
                             assignee: str | None = None,
                             unassigned: bool | None = None) -> list[Row]:
    """Threads by latest activity, newest first; those without a message yet last, newest
    first. The key moves with every message, so a thread that moves while a client pages
    may come twice or not at all (as in Chatwoot's and Front's lists)."""
    cond, args = keyset_clause(cursor, 6, by_activity=True)
    rows = await conn.fetch(
        f"""SELECT {CONVERSATION_COLS} FROM conversations
            WHERE sub_account_id = $1 AND ($2::uuid IS NULL OR contact_id = $2)
              AND ($3::bool IS NULL OR (unread_count > 0) = $3)
              AND ($4::text IS NULL OR assignee = $4)
              AND ($5::bool IS NULL OR (assignee IS NULL) = $5) AND {cond}
            ORDER BY {BY_ACTIVITY.format(p="")} LIMIT {limit + 1}""",
        sub_account_id, contact_id, unread, assignee, unassigned, *args,
    )
    return [dict(r) for r in rows]


async def get_message(conn: Conn, sub_account_id: UUID, id_: UUID) -> Row | None:
    row = await conn.fetchrow(
        f"SELECT {MESSAGE_COLS} FROM messages WHERE id = $1 AND sub_account_id = $2",
        id_, sub_account_id,
    )
    return dict(row) if row else None


async def list_messages(conn: Conn, sub_account_id: UUID, *, conversation_id: UUID | None,
                        status: str | None, direction: str | None, channel: str | None,
                        cursor: Cursor | None, limit: int) -> list[Row]:
    cond, args = keyset_clause(cursor, 6)
    rows = await conn.fetch(
        f"""SELECT {MESSAGE_COLS} FROM messages
            WHERE sub_account_id = $1 AND ($2::uuid IS NULL OR conversation_id = $2)
              AND ($3::text IS NULL OR status = $3) AND ($4::text IS NULL OR direction = $4)
              AND ($5::text IS NULL OR channel = $5) AND {cond}
            ORDER BY created_at DESC, id DESC LIMIT {limit + 1}""",
        sub_account_id, conversation_id, status, direction, channel, *args,
    )
    return [dict(r) for r in rows]


async def message_history(conn: Conn, message_id: UUID) -> list[Row]:
    """Each change of the message's status, oldest first (see `status_changes`)."""
    rows = await conn.fetch(
        """SELECT status, provider_status, error_code, event_key, occurred_at
           FROM message_events WHERE message_id = $1 ORDER BY id""",
        message_id,
    )
    return status_changes([dict(r) for r in rows])


def status_changes(events: list[Row]) -> list[Row]:
    """The message's history (its `message_events`, in the order recorded) as one entry per
    change of status, each with its `source`: `hub` or `provider`.

    The table is also the audit log, so it holds more than the changes: the hub records the
    status a message has when the provider answers the send, which a receipt may already
    have set; and every provider receipt is kept, moving the message or not (repeated,
    late or out of order; hub/status.py). A hub record is a change when the status differs;
    a receipt when it moves the status forward. A re-queue after a throttled attempt
    (hub/requeue.py records `<SID>:requeued`) is always one; that attempt's failure receipt,
    and its receipts that arrive later, moved nothing."""
    retired = {e["event_key"].removesuffix(":requeued"): i for i, e in enumerate(events)
               if e["provider_status"] == "requeued"}
    changes: list[Row] = []
    current: str | None = None
    for i, e in enumerate(events):
        requeue = e["provider_status"] == "requeued"
        receipt = e["event_key"] is not None and not requeue
        if receipt:
            cut = retired.get(e["event_key"].split(":", 1)[0])
            if cut is not None and (i > cut or e["status"] in _FAILURES):
                continue
            moved = current is None or can_transition(Status(current), Status(e["status"]))
        else:  # a re-queue ends an attempt even from `queued` (`sending` is not recorded)
            moved = e["status"] != current or requeue
        if moved:
            current = e["status"]
            changes.append({
                "status": e["status"], "source": "provider" if receipt else "hub",
                "provider_status": e["provider_status"],
                "error_code": e["error_code"], "occurred_at": e["occurred_at"]})
    return changes
