"""Writers for what providers report: a delivery receipt merged into a message's status, and
an inbound SMS/MMS stored in its contact's conversation, with the compliance keywords
(STOP, START, HELP) acted on in the same transaction."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from channels.base import ErrorKind, InboundMessage, StatusUpdate
from channels.twilio_sms import callback_error
from hub import compliance
from hub.compliance_actions import cancel_waiting, do_opt_in, lock_address, queue_reply
from hub.context import Hub
from hub.phones import normalize_phone
from hub.segments import count_segments
from hub.store import contacts as contact_store
from hub.store import suppressions as suppression_store
from hub.store import webhooks as store
from hub.store.messaging import CONVERSATION_COLS, MESSAGE_COLS

log = logging.getLogger(__name__)
Row = dict[str, Any]


async def do_apply_status(hub: Hub, message: Row, update: StatusUpdate) -> bool:
    """Record a provider receipt and move the message forward if it is news. Returns
    whether the status moved. Idempotent: an event key seen before changes nothing."""
    async with hub.transaction() as tx:
        fresh = await store.record_status_event(
            tx.conn, message, update.status.value, update.provider_status, update.error_code,
            update.event_key, update.occurred_at)
        if not fresh:
            return False
        # SendGrid's id names a whole request (up to 1,000 messages): never stored from here.
        provider_id = update.provider_message_id if update.provider == "twilio" else None
        row = await store.merge_status(tx.conn, message["id"], update.status.value,
                                       update.error_code, provider_id)
        if row is not None and row["priority"] != "bulk":  # campaign progress reports bulk
            tx.emit(row["sub_account_id"], "message.status_updated", row,
                    f"conversation:{row['conversation_id']}")
        error = callback_error(update) if update.provider == "twilio" else None
        if error is not None and error.kind == ErrorKind.OPTED_OUT:
            await _provider_opt_out(tx, message)
    return row is not None


async def _provider_opt_out(tx: Any, message: Row) -> None:
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
