"""Throttling that Twilio reports after it accepted a message, and receipts from an earlier
attempt.

Twilio can accept a message (201, a SID) and fail it later because a rate limit was hit
downstream: 30022 (US A2P 10DLC rate limit), 63018 (channel rate limit) and the other codes
`channels.twilio_errors` classifies as THROTTLED. The design's rule is that provider
throttling re-queues with back-off and is never a failure, so such a receipt puts the
message back in the queue (a new attempt, a new SID) instead of failing it, up to
MAX_ATTEMPTS sends.

After a re-queue, callbacks of the earlier attempt may still arrive (a duplicate, or a
`sent` that was overtaken). They name our message id but the retired SID, and must not move
the new attempt: the re-queue records `<retired SID>:requeued` in the message's history, and
receipts for a retired SID, or for a message that is queued again, are left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from channels.base import ErrorKind
from channels.twilio_sms import callback_error
from hub.retry import backoff
from hub.status import Status
from hub.store import campaigns as campaign_store
from hub.store.messaging import MESSAGE_COLS
from hub.store.webhooks import retired_key

#: Sends (first one included) after which a throttled failure is recorded as failed.
MAX_ATTEMPTS = 8
_FAILURES = (Status.FAILED, Status.UNDELIVERED)


@dataclass(frozen=True, slots=True)
class Sifted:
    receipts: list[Any]  # what is left to apply as usual
    requeued: list[dict[str, Any]]  # messages put back in the queue


def throttled(update: Any) -> bool:
    """A Twilio failure receipt whose error code means "too fast", not "cannot deliver"."""
    if update.provider != "twilio" or update.status not in _FAILURES:
        return False
    error = callback_error(update)
    return error is not None and error.kind == ErrorKind.THROTTLED


async def sift(conn: Any, receipts: Sequence[Any], fresh: set[tuple[UUID, str]]) -> Sifted:
    """Leave out receipts of an earlier attempt, re-queue messages whose fresh receipt is a
    throttled failure, and return the receipts still to apply. `receipts` are
    webhook_actions.Receipt (message row, StatusUpdate); the messages are locked."""
    twilio = [r for r in receipts if r.update.provider == "twilio"]
    if not twilio:
        return Sifted(list(receipts), [])
    stale = await _stale(conn, twilio)
    candidates = {r.message["id"]: r for r in twilio
                  if id(r) not in stale and (r.message["id"], r.update.event_key) in fresh
                  and throttled(r.update)}
    requeued = await _requeue(conn, list(candidates.values())) if candidates else []
    retired = {(m["id"], candidates[m["id"]].update.provider_message_id) for m in requeued}
    left = [r for r in receipts if id(r) not in stale
            and (r.message["id"], r.update.provider_message_id) not in retired]
    return Sifted(left, requeued)


async def _stale(conn: Any, twilio: Sequence[Any]) -> set[int]:
    """Receipts (by id()) that belong to an earlier attempt of their message."""
    stale: set[int] = set()
    unsure = []
    for r in twilio:
        current = r.message["provider_message_id"]
        if r.message["status"] == Status.QUEUED.value or (
                current and current != r.update.provider_message_id):
            stale.add(id(r))
        elif not current and r.update.provider_message_id:
            unsure.append(r)  # the send's answer is not recorded yet: a retired SID?
    if unsure:
        rows = await conn.fetch(
            """SELECT e.message_id, e.event_key FROM message_events e
               JOIN unnest($1::uuid[], $2::text[]) AS u(mid, key)
                 ON e.message_id = u.mid AND e.event_key = u.key""",
            [r.message["id"] for r in unsure],
            [retired_key(r.update.provider_message_id) for r in unsure])
        seen = {(row["message_id"], row["event_key"]) for row in rows}
        stale |= {id(r) for r in unsure
                  if (r.message["id"], retired_key(r.update.provider_message_id)) in seen}
    return stale


async def _requeue(conn: Any, receipts: Sequence[Any]) -> list[dict[str, Any]]:
    """Back to `queued` after a back-off that grows with the attempts, the SID retired;
    messages out of attempts are left to fail as usual."""
    ids = [r.message["id"] for r in receipts]
    sids = [r.update.provider_message_id for r in receipts]
    codes = [r.update.error_code for r in receipts]
    rows = await conn.fetch(
        f"""UPDATE messages m SET status = 'queued', provider_message_id = NULL,
                  in_doubt = false, error_code = u.code, lease_owner = NULL,
                  lease_expires_at = NULL, sent_at = NULL, updated_at = now(),
                  not_before = now() + make_interval(secs => u.delay)
            FROM unnest($1::uuid[], $2::text[], $3::text[], $4::float8[])
                 AS u(mid, sid, code, delay)
            WHERE m.id = u.mid AND m.status IN ('sending', 'sent') AND m.attempts < $5
              AND (m.provider_message_id IS NULL OR m.provider_message_id = u.sid)
            RETURNING {", ".join(f"m.{c.strip()}" for c in MESSAGE_COLS.split(","))}""",
        ids, sids, codes, [_delay(r) for r in receipts], MAX_ATTEMPTS)
    if rows:
        by_id = {r.message["id"]: r for r in receipts}
        moved = [by_id[row["id"]] for row in rows]
        await conn.execute(
            """INSERT INTO message_events (message_id, sub_account_id, status,
                                           provider_status, error_code, event_key)
               SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[],
                                    $5::text[], $6::text[])
               ON CONFLICT (message_id, event_key) WHERE event_key IS NOT NULL DO NOTHING""",
            [r.message["id"] for r in moved], [r.message["sub_account_id"] for r in moved],
            [Status.QUEUED.value] * len(moved), ["requeued"] * len(moved),
            [r.update.error_code for r in moved],
            [retired_key(r.update.provider_message_id) for r in moved])
        await _follow_campaigns(conn, {row["campaign_id"] for row in rows} - {None})
    return [dict(row) for row in rows]


async def _follow_campaigns(conn: Any, campaign_ids: set[UUID]) -> None:
    """A campaign paused or canceled since the message was sent takes it back like its
    other queued messages: to a pending recipient (resume sends it), or canceled. The share
    lock orders this against a pause or cancel in flight, whichever commits first."""
    if not campaign_ids:
        return
    for c in await conn.fetch("SELECT id, status FROM campaigns WHERE id = ANY($1::uuid[]) "
                              "ORDER BY id FOR SHARE", list(campaign_ids)):
        if c["status"] == "paused":
            await campaign_store.unqueue(conn, c["id"])
        elif c["status"] == "canceled":
            await campaign_store.cancel_rest(conn, c["id"])


def _delay(receipt: Any) -> float:
    """Seconds before the next attempt: Twilio names no Retry-After in a callback, so the
    senders' own throttling back-off after the sends so far."""
    return backoff(int(receipt.message.get("attempts") or 1))
