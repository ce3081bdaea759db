"""Writers for what providers report: delivery receipts merged into their messages' status
(set-based, a batch at a time), and an inbound SMS/MMS stored in its contact's
conversation, with the compliance keywords (STOP, START, HELP) acted on in the same
transaction."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
from prometheus_client import Counter

from channels import sendgrid
from channels.base import ErrorKind, InboundMessage, StatusUpdate, SuppressionEvent
from channels.twilio_sms import callback_error, parse_inbound
from hub import compliance, requeue
from hub.compliance_actions import (
    cancel_waiting,
    do_opt_in,
    do_opt_out,
    lock_address,
    queue_reply,
)
from hub.context import Hub, Tx
from hub.errors import HubError, ValidationFailed
from hub.phones import normalize_phone
from hub.provider_settings import PUBLIC_KEY
from hub.segments import count_segments
from hub.status import ACCEPTED, Status, can_transition, rank
from hub.store import contacts as contact_store
from hub.store import suppressions as suppression_store
from hub.store import tenants
from hub.store import webhooks as store
from hub.store.messaging import CONVERSATION_COLS, MESSAGE_COLS
from hub.store.webhooks import Finished, Merge

log = logging.getLogger(__name__)
Row = dict[str, Any]

#: Receipts seen for the first time (a provider's retry is not counted again), by provider
#: and the status they report: the dashboards' delivery rate and "no receipts" alert.
RECEIPTS = Counter("hub_receipts_total", "provider receipts applied, by provider and status",
                   ["provider", "status"])


@dataclass(frozen=True, slots=True)
class Receipt:
    """A verified provider receipt and the message it is for (a callback_message row)."""

    message: Row
    update: StatusUpdate


def plan_merges(receipts: Sequence[Receipt], fresh: set[tuple[UUID, str]]) -> list[Merge]:
    """Where each message moves, given the receipts not seen before (`fresh`): the
    receipts of one batch arrived together, so they are taken in lifecycle order, one at
    a time, from the message's current status (hub/status.py's forward-only rule; the
    final status is the same in any order). Canceled and received are never reached
    through a receipt. Messages that do not move are left out."""
    by_message: dict[UUID, list[Receipt]] = {}
    for r in receipts:
        if (r.message["id"], r.update.event_key) in fresh and r.update.status not in (
                Status.CANCELED, Status.RECEIVED):
            by_message.setdefault(r.message["id"], []).append(r)
    merges = []
    for mid, group in by_message.items():
        current = start = Status(group[0].message["status"])
        last: Receipt | None = None
        left = False
        for r in sorted(group, key=lambda x: rank(x.update.status)):
            if can_transition(current, r.update.status):
                current, last = r.update.status, r
                left = left or current in ACCEPTED  # it has left: sets sent_at
        if last is None or current == start:
            continue
        # SendGrid's id names a whole request (up to 1,000 messages): never stored here.
        pmid = last.update.provider_message_id if last.update.provider == "twilio" else None
        merges.append(Merge(mid, current.value, last.update.error_code, pmid, left))
    return merges


async def apply_receipts(tx: Tx, receipts: Sequence[Receipt]) -> list[Row]:
    """Record provider receipts and move their messages forward, set-based: one insert
    into the messages' history (duplicates by event key change nothing), one status merge,
    one event per message that moved. Returns the messages that moved."""
    events = [store.StatusEvent(r.message["id"], r.message["sub_account_id"],
                                r.update.status.value, r.update.provider_status,
                                r.update.error_code, r.update.event_key, r.update.occurred_at)
              for r in receipts]
    fresh = await store.record_status_events(tx.conn, events)
    if not fresh:
        return []
    for (mid, key), update in {(r.message["id"], r.update.event_key): r.update
                               for r in receipts}.items():
        if (mid, key) in fresh:
            RECEIPTS.labels(update.provider, update.status.value).inc()
    # Throttled after acceptance: queued again, not failed; an earlier attempt's receipts
    # move nothing.
    sifted = await requeue.sift(tx.conn, receipts, fresh)
    moved = [*sifted.requeued,
             *await store.merge_statuses(tx.conn, plan_merges(sifted.receipts, fresh))]
    for row in moved:
        if row["priority"] != "bulk":  # campaign progress reports bulk
            tx.emit(row["sub_account_id"], "message.status_updated", row,
                    f"conversation:{row['conversation_id']}")
    opted_out: set[UUID] = set()
    for r in sifted.receipts:
        error = callback_error(r.update) if r.update.provider == "twilio" else None
        mid = r.message["id"]
        if (error is not None and error.kind == ErrorKind.OPTED_OUT and mid not in opted_out
                and (mid, r.update.event_key) in fresh):
            opted_out.add(mid)
            await _provider_opt_out(tx, r.message)
    return moved


async def do_apply_status(hub: Hub, message: Row, update: StatusUpdate) -> bool:
    """Record one provider receipt and move the message forward if it is news. Returns
    whether the status moved. Idempotent: an event key seen before changes nothing."""
    async with hub.transaction() as tx:
        moved = await apply_receipts(tx, [Receipt(message, update)])
    return bool(moved)


async def _provider_opt_out(tx: Tx, message: Row) -> None:
    """Twilio 21610: the carrier has this number opted out of the sender; stop trying."""
    sa_id, address = message["sub_account_id"], message["to_address"]
    await lock_address(tx, sa_id, "sms", address)
    await cancel_waiting(tx, sa_id, "sms", address)
    row, created = await suppression_store.add(
        tx.conn, sa_id, "sms", address, compliance.PROVIDER_OPT_OUT_REASON, "provider",
        "twilio")
    if created:
        tx.emit(sa_id, "suppression.created", row)


@dataclass
class Received:
    message: Row | None  # None: a duplicate of a message already stored
    replies: list[Row] = field(default_factory=list)  # queued; hand them to the sender


async def do_receive_message(hub: Hub, sa: Row, sender: Row, inbound: InboundMessage,
                             phone: str | None = None) -> Received:
    """Store an inbound SMS/MMS (contact and conversation created as needed, unread raised)
    and act on a compliance keyword. Media URLs are stored as given, never fetched."""
    phone = phone or normalize_phone(inbound.from_, sa["default_region"], field="From")
    keyword = compliance.classify(inbound.body)
    sa_id = sa["id"]
    async with hub.transaction() as tx:
        conn = tx.conn
        exists = await conn.fetchval(
            "SELECT 1 FROM messages WHERE provider = $1 AND provider_message_id = $2",
            inbound.provider, inbound.provider_message_id)
        if exists:
            return Received(None)
        if keyword is not None:
            await lock_address(tx, sa_id, "sms", phone)
        if keyword == compliance.Keyword.STOP:
            # Before any conversation row: take the recipients' locks first, in the same
            # order as the Scheduler (see hub/compliance_actions.py).
            await cancel_waiting(tx, sa_id, "sms", phone)
        contact = await _contact(tx, sa_id, phone)
        conversation = await conn.fetchrow(
            f"""INSERT INTO conversations (sub_account_id, contact_id, channel, unread_count,
                    last_message_at, last_message_preview)
                VALUES ($1, $2, 'sms', 1, now(), left($3, 140))
                ON CONFLICT (sub_account_id, contact_id, channel) DO UPDATE
                    SET unread_count = conversations.unread_count + 1, last_message_at = now(),
                        last_message_preview = left($3, 140), updated_at = now()
                RETURNING {CONVERSATION_COLS}""",
            sa_id, contact["id"], _preview(inbound))
        seg = count_segments(inbound.body)
        message = await conn.fetchrow(
            f"""INSERT INTO messages (sub_account_id, conversation_id, contact_id, direction,
                    channel, sender_id, provider_account_id, from_address, to_address, body,
                    media_urls, status, provider, provider_message_id, segments, encoding)
                VALUES ($1, $2, $3, 'inbound', $4, $5, $6, $7, $8, $9, $10, 'received', $11,
                        $12, $13, $14)
                RETURNING {MESSAGE_COLS}""",
            sa_id, conversation["id"], contact["id"], inbound.channel, sender["id"],
            sender["provider_account_id"], phone, inbound.to, inbound.body,
            list(inbound.media_urls), inbound.provider, inbound.provider_message_id,
            seg.segments, seg.encoding)
        await conn.execute(
            "INSERT INTO message_events (message_id, sub_account_id, status) "
            "VALUES ($1, $2, 'received')", message["id"], sa_id)
        topic = f"conversation:{conversation['id']}"
        tx.emit(sa_id, "message.created", dict(message), topic)
        tx.emit(sa_id, "conversation.updated", dict(conversation), topic)
        replies = await _answer_keyword(hub, tx, sa, sender["id"], phone, keyword,
                                        inbound.body)
    log.info("inbound message stored", extra={
        "sub_account_id": str(sa_id), "message_id": str(message["id"]),
        "keyword": keyword.value if keyword else None})
    return Received(dict(message), replies)


async def _answer_keyword(hub: Hub, tx: Any, sa: Row, sender_id: UUID, phone: str,
                          keyword: compliance.Keyword | None, body: str) -> list[Row]:
    """STOP suppresses and confirms once (only the STOP that opted the number out; the
    confirmation is queued just before the suppression that would refuse it); START
    confirms only a real re-subscription, so a "Yes" to a survey gets no opt-in notice;
    HELP always answers, opted out or not (see queue_reply)."""
    reply: Row | None = None
    if keyword == compliance.Keyword.STOP:
        if not await suppression_store.is_suppressed(tx.conn, sa["id"], "sms", phone):
            reply = await queue_reply(hub, sa, phone, sender_id, compliance.STOP_CONFIRMATION)
        row, created = await suppression_store.add(
            tx.conn, sa["id"], "sms", phone,
            compliance.OPT_OUT_REASON.format(word=body.strip().upper()), "opt_out", "contact")
        if created:
            tx.emit(sa["id"], "suppression.created", row)
    elif keyword == compliance.Keyword.START:
        if await do_opt_in(hub, sa, "sms", phone, actor="contact") is not None:
            reply = await queue_reply(hub, sa, phone, sender_id, compliance.START_CONFIRMATION)
    elif keyword == compliance.Keyword.HELP:
        reply = await queue_reply(hub, sa, phone, sender_id, compliance.help_reply(
            sa.get("help_text") or "", sa.get("name") or ""))
    return [reply] if reply is not None else []


def _preview(inbound: InboundMessage) -> str:
    if inbound.body:
        return inbound.body
    n = len(inbound.media_urls)
    return f"[{n} attachment{'s' if n != 1 else ''}]"


async def _contact(tx: Any, sa_id: UUID, phone: str) -> Row:
    """The contact with this number, created (and announced) if new."""
    await tx.conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                          f"contact:{sa_id}:{phone}")
    found = await contact_store.find_by_keys(tx.conn, sa_id, phone, None)
    if found:
        return found[0]
    created = await contact_store.insert(tx.conn, sa_id, {"phone": phone})
    if created is None:  # taken by a writer that does not use the lock
        return (await contact_store.find_by_keys(tx.conn, sa_id, phone, None))[0]
    tx.emit(sa_id, "contact.created", created)
    return created


# --- inbox rows of the other kinds (hub/inbox.py applies status callbacks in batches) ------



def as_uuid(value: str | None) -> UUID | None:
    try:
        return UUID(value) if value else None
    except ValueError:
        return None


async def apply_inbound(hub: Hub, conn: asyncpg.Connection, row: Row
                         ) -> tuple[Finished, list[Row]]:
    inbound = parse_inbound(row["payload"]["form"])
    if inbound.from_.startswith("whatsapp:") or inbound.to.startswith("whatsapp:"):
        return Finished(row["id"], "ignored", "WhatsApp is not a channel of the hub"), []
    senders = await store.inbound_senders(conn, inbound.account_id or "", [inbound.to],
                                          inbound.messaging_service_id, row["sub_account_id"])
    sa = await tenants.get_sub_account(conn, row["sub_account_id"])
    if not senders or sa is None:
        return Finished(row["id"], "ignored", "the sender is gone"), []
    try:
        phone = normalize_phone(inbound.from_, sa["default_region"], field="From")
    except ValidationFailed:
        return Finished(row["id"], "ignored", "From is not a phone number the hub can answer"), []
    received = await do_receive_message(hub, sa, senders[0], inbound, phone)
    return Finished(row["id"], "applied", None if received.message else "duplicate message",
                    sa["id"]), received.replies


async def apply_sendgrid(hub: Hub, conn: asyncpg.Connection, row: Row,
                         orphan_retry_at: datetime | None) -> Finished:
    account = await store.provider_account(conn, row["provider_account_id"]) \
        if row["provider_account_id"] else None
    if account is None:
        return Finished(row["id"], "ignored", "the SendGrid account is gone")
    event = row["payload"]
    sa_id: UUID = row["sub_account_id"]
    status = "applied"
    error = None
    retry = None
    for item in sendgrid.parse_events(json.dumps(event).encode()):
        if isinstance(item, StatusUpdate):
            message = await store.callback_message(
                conn, as_uuid(item.message_id), "sendgrid", item.provider_message_id or None,
                str(event.get("email") or "") or None)
            if message is None:
                named = item.message_id or item.provider_message_id
                status, error = ("orphan", "no message with this id yet") if named else (
                    "ignored", "the event names no message")
                retry = orphan_retry_at if named else None
            elif not _same_signer(message, account):
                return Finished(row["id"], "ignored",
                                "the message belongs to another SendGrid account")
            else:
                sa_id = message["sub_account_id"]
                await do_apply_status(hub, message, item)
        elif isinstance(item, SuppressionEvent):
            await _suppress_email(hub, conn, sa_id, item)
    return Finished(row["id"], status, error, sa_id, retry)


def _same_signer(message: Row, account: Row) -> bool:
    if message["provider"] != "sendgrid":
        return False
    if message["provider_account_id"] == account["id"]:
        return True
    key = (message["config"] or {}).get(PUBLIC_KEY)
    return bool(key) and key == account["config"].get(PUBLIC_KEY)


_SUPPRESSION_SOURCE = {"bounce": "bounce", "dropped": "bounce", "spamreport": "spamreport"}


async def _suppress_email(hub: Hub, conn: asyncpg.Connection, sa_id: UUID,
                          event: SuppressionEvent) -> None:
    if event.message_id:  # the message's sub-account, if SendGrid is shared
        owner = await conn.fetchval("SELECT sub_account_id FROM messages WHERE id = $1",
                                    as_uuid(event.message_id))
        sa_id = owner or sa_id
    sa = await tenants.get_sub_account(conn, sa_id)
    if sa is None or not event.address:
        return
    try:
        await do_opt_out(hub, sa, "email", event.address, reason=f"sendgrid {event.reason}",
                         source=_SUPPRESSION_SOURCE.get(event.reason, "opt_out"),
                         actor="sendgrid")
    except HubError:
        log.info("sendgrid suppression for an address the hub cannot use; skipped",
                 extra={"sub_account_id": str(sa_id), "reason": event.reason})
