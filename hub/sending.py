"""Sending one message: an API send or an agent's reply is checked (suppressions, content,
sender), persisted as `queued` with its conversation, and recorded in the event log; the
caller then hands it to its Sender shard. Cancelling works until the send has begun."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from uuid import UUID

from hub.campaigns import NO_CALL_SCRIPT, NO_MMS_MEDIA, voice_script
from hub.context import Hub
from hub.emails import email_key, normalize_email
from hub.errors import Conflict, FieldError, NotFound, ValidationFailed
from hub.phones import normalize_phone
from hub.segments import MAX_BODY_CHARS, count_segments
from hub.sender_pool import choose_sender
from hub.status import CANCELABLE
from hub.store import contacts as contact_store
from hub.store import messaging
from hub.store import sending as send_store

Row = dict[str, Any]
SENDER_CHANNEL = {"sms": "sms", "mms": "sms", "email": "email", "voice": "voice"}
MAX_MEDIA = 10


def _check_content(channel: str, body: str, subject: str | None, media_urls: list[str],
                   voice: Row | None) -> tuple[int, str | None, Row | None]:
    """(segments, encoding, the call's script) of a message that fits its channel; the
    channel rules are those of campaigns (`hub.campaigns`), without merge fields."""
    errors: list[FieldError] = []
    segments, encoding, script = 1, None, None
    if channel in ("sms", "mms"):
        if channel == "sms" and not body:
            errors.append(FieldError("body", "an SMS needs a body", "required"))
        if channel == "mms" and not media_urls:
            errors.append(FieldError("media_urls", NO_MMS_MEDIA, "required"))
        if len(body) > MAX_BODY_CHARS:
            errors.append(FieldError("body", f"at most {MAX_BODY_CHARS} characters "
                                     f"(this is {len(body)})", "too_long"))
        if channel == "sms" and media_urls:
            errors.append(FieldError("media_urls", "media needs channel mms", "mms_required"))
        if len(media_urls) > MAX_MEDIA:
            errors.append(FieldError("media_urls", f"at most {MAX_MEDIA} media URLs",
                                     "too_many"))
        info = count_segments(body)
        segments, encoding = info.segments, info.encoding
    elif channel == "email":
        if not subject:
            errors.append(FieldError("subject", "an email needs a subject", "required"))
        if not body:
            errors.append(FieldError("body", "an email needs a body", "required"))
    elif channel == "voice":
        script = voice_script(body, media_urls, voice)
        if script is None:
            errors.append(FieldError("voice.say", NO_CALL_SCRIPT, "required"))
        if len(media_urls) > 1:
            errors.append(FieldError("media_urls", "a voice call plays at most one audio file",
                                     "too_many"))
    if errors:
        raise ValidationFailed("; ".join(f"{e.field}: {e.message}" for e in errors),
                               errors=errors)
    return segments, encoding, script


async def _resolve_contact(hub: Hub, conn: Any, sa: Row, channel: str,
                           contact_id: UUID | None, to: str | None) -> tuple[Row, str]:
    """The contact and its address on this channel; a new number or address makes a
    contact, as an inbound message would."""
    email = channel == "email"
    if contact_id is not None:
        contact = await contact_store.get(conn, sa["id"], contact_id)
        if contact is None:
            raise NotFound("no such contact", code="contact_not_found")
        address = contact["email"] if email else contact["phone"]
        if not address:
            raise ValidationFailed.field("contact_id", f"this contact has no "
                                         f"{'email' if email else 'phone'}", "no_address")
        return contact, address
    if not to:
        raise ValidationFailed.field("to", "give `to` or `contact_id`", "required")
    if email:
        address = normalize_email(to, field="to")
        key: dict[str, Any] = {"email": address, "email_key": email_key(address)}
        found = await contact_store.find_by_keys(conn, sa["id"], None, key["email_key"])
    else:
        address = normalize_phone(to, sa["default_region"], field="to")
        key = {"phone": address}
        found = await contact_store.find_by_keys(conn, sa["id"], address, None)
    if found:
        return found[0], address
    created = await contact_store.insert(conn, sa["id"], key)
    if created is None:  # raced with another insert of the same address
        found = await contact_store.find_by_keys(conn, sa["id"], key.get("phone"),
                                                 key.get("email_key"))
        return found[0], address
    return created, address


async def _sender_and_suppression(conn: Any, sa: Row, channel: str, address: str,
                                  contact_id: UUID) -> tuple[list[Row], bool, int, UUID | None]:
    """The sub-account's senders on this channel, whether the recipient is suppressed there,
    the sub-account's slot, and the sender of the latest message in the contact's thread
    on this channel (the number they texted, or last heard from), in one round trip (at
    least one row: a sub-account without senders gets nulls)."""
    rows = await conn.fetch(
        """SELECT s.id, s.address, s.provider_account_id, s.kind, s.mps, x.suppressed, x.slot,
                  x.thread_sender
           FROM (SELECT EXISTS (SELECT 1 FROM suppressions WHERE sub_account_id = $1
                     AND channel = $2 AND address = $3 AND removed_at IS NULL) AS suppressed,
                 (SELECT slot FROM sub_accounts WHERE id = $1) AS slot,
                 (SELECT m.sender_id FROM conversations c
                  JOIN messages m ON m.conversation_id = c.id
                  WHERE c.sub_account_id = $1 AND c.contact_id = $4 AND c.channel = $2
                    AND m.sender_id IS NOT NULL
                  ORDER BY m.created_at DESC, m.id DESC LIMIT 1) AS thread_sender) x
           LEFT JOIN senders s ON s.sub_account_id = $1 AND s.channel = $2
           ORDER BY s.id""",
        sa["id"], SENDER_CHANNEL[channel],
        email_key(address) if channel == "email" else address, contact_id)
    return ([dict(r) for r in rows if r["id"] is not None], rows[0]["suppressed"],
            rows[0]["slot"], rows[0]["thread_sender"])


def _pick_sender(senders: list[Row], channel: str, sender_id: UUID | None,
                 contact_id: UUID, thread_sender: UUID | None) -> Row:
    """The sender asked for; else the one the contact's thread is with, so that a reply
    comes from the number they texted; else the contact's sticky choice."""
    if sender_id is not None:
        for r in senders:
            if r["id"] == sender_id:
                return r
        raise ValidationFailed.field("sender_id", f"no {SENDER_CHANNEL[channel]} sender with "
                                     "this id in the sub-account", "not_found")
    if not senders:
        raise ValidationFailed.field("channel", f"this sub-account has no "
                                     f"{SENDER_CHANNEL[channel]} sender; add one under "
                                     "/senders", "no_sender")
    for r in senders:
        if r["id"] == thread_sender:
            return r
    chosen = choose_sender(str(contact_id), [str(r["id"]) for r in senders])
    return next(r for r in senders if str(r["id"]) == chosen)


#: The conversation's upsert, the message and its first history row: one statement.
_PERSIST = f"""
    WITH conv AS (
        INSERT INTO conversations (sub_account_id, contact_id, channel, last_message_at,
            last_message_preview)
        VALUES ($1, $2, $16, now(), left($17, 140))
        ON CONFLICT (sub_account_id, contact_id, channel) DO UPDATE
            SET last_message_at = now(), last_message_preview = left($17, 140),
                updated_at = now()
        RETURNING *),
    m AS (
        INSERT INTO messages (sub_account_id, conversation_id, contact_id, direction,
            channel, priority, sender_id, provider_account_id, from_address, to_address,
            subject, html, body, media_urls, voice, status, segments, encoding, slot,
            provider, compliance, lease_owner, lease_expires_at, sent_by)
        SELECT $1, conv.id, $2, 'outbound', $3, $4, $5, $6, $7, $8, $9, $20, $10, $11, $12,
               'queued', $13, $14, s.slot, p.provider, $15, $18,
               CASE WHEN $18::text IS NOT NULL THEN now() + make_interval(secs => $19) END,
               $21
        FROM conv, sub_accounts s, provider_accounts p WHERE s.id = $1 AND p.id = $6
        RETURNING {messaging.MESSAGE_COLS}, slot, lease_expires_at),
    h AS (
        INSERT INTO message_events (message_id, sub_account_id, status)
        SELECT id, sub_account_id, 'queued' FROM m)
    SELECT m.*, {", ".join(f"conv.{c} AS conv_{c}"
                           for c in messaging.CONVERSATION_COLS.split(", "))}
    FROM m, conv"""


def public(message: Row) -> Row:
    """A created message as the API and the event log show it: without the hand-off's
    `slot` and `lane` (its Sender shard's lane columns)."""
    return {k: v for k, v in message.items() if k not in ("slot", "lane")}


async def do_send_message(hub: Hub, sa: Row, req: Row, *, priority: str = "transactional",
                          conversation_id: UUID | None = None, compliance: bool = False,
                          lease_to: Callable[[str, int], str] | None = None,
                          sent_by: UUID | None = None) -> Row:
    """Persist one outbound message as queued. `req` holds channel, to or contact_id, body,
    subject, html, media_urls, voice, sender_id. `compliance` marks a carrier-required reply
    (STOP confirmation, HELP answer): the only kind sent to a suppressed recipient.
    `lease_to` names the Sender shard that sends a (channel, slot) when the caller hands the
    message to it: the message is created leased to that shard, which then adopts it
    without writing or reading it again. Without it (no actors) the message is created
    unleased. `sent_by`: the signed-in user who sent it (none for an API key). Returns the
    message with its `slot` and `lane` for the hand-off (`public` leaves them out)."""
    channel = req["channel"]
    body = req.get("body") or ""
    media = list(req.get("media_urls") or [])
    segments, encoding, voice = _check_content(channel, body, req.get("subject"), media,
                                               req.get("voice"))
    async with hub.transaction() as tx:
        conn = tx.conn
        contact, address = await _resolve_contact(hub, conn, sa, channel,
                                                  req.get("contact_id"), req.get("to"))
        senders, suppressed, slot, thread_sender = await _sender_and_suppression(
            conn, sa, channel, address, contact["id"])
        if suppressed and not compliance:
            raise Conflict(
                f"{'this address' if channel == 'email' else 'this number'} opted out or is "
                "suppressed; nothing was sent. Remove the suppression only with the "
                "contact's consent.", code="recipient_suppressed",
                errors=[FieldError("to", "suppressed", "recipient_suppressed")])
        sender = _pick_sender(senders, channel, req.get("sender_id"), contact["id"],
                              thread_sender)
        if channel != "email" and sender["address"] == address:
            # Carriers refuse a text or call whose To is its From (Twilio 21266).
            raise ValidationFailed.field(
                "sender_id" if req.get("sender_id") else "to" if req.get("to") else
                "contact_id", f"{address} is this sub-account's own sender; a message "
                "cannot be sent from a number to itself", "own_number")
        row = await conn.fetchrow(
            _PERSIST, sa["id"], contact["id"], channel, priority, sender["id"],
            sender["provider_account_id"], sender["address"], address, req.get("subject"),
            body, media, voice, segments, encoding, compliance,
            SENDER_CHANNEL[channel], body or req.get("subject") or "",
            lease_to(channel, slot) if lease_to else None, hub.settings.lease_s,
            req.get("html"), sent_by)
        message = {k: v for k, v in row.items() if not k.startswith("conv_")}
        message["lane"] = send_store.lane_row(message, sender,
                                              message.pop("lease_expires_at"))
        conversation = {k[5:]: v for k, v in row.items() if k.startswith("conv_")}
        if conversation_id is not None and conversation["id"] != conversation_id:
            raise ValidationFailed.field("channel", "this conversation is on another channel",
                                         "channel_mismatch")
        topic = f"conversation:{conversation['id']}"
        tx.emit(sa["id"], "message.created", public(message), topic)
        tx.emit(sa["id"], "conversation.updated", conversation, topic)
    return message


async def do_cancel_message(hub: Hub, sa_id: UUID, message_id: UUID) -> Row:
    async with hub.transaction() as tx:
        row = await tx.conn.fetchrow(
            f"""UPDATE messages SET status = 'canceled', updated_at = now()
                WHERE id = $1 AND sub_account_id = $2 AND status = ANY($3::text[])
                RETURNING {messaging.MESSAGE_COLS}""",
            message_id, sa_id, [s.value for s in CANCELABLE])
        if row is None:
            current = await messaging.get_message(tx.conn, sa_id, message_id)
            if current is None:
                raise NotFound("no such message", code="message_not_found")
            raise Conflict(f"the message is already {current['status']}; only queued or "
                           "scheduled messages can be canceled", code="not_cancelable")
        await tx.conn.execute(
            "INSERT INTO message_events (message_id, sub_account_id, status) "
            "VALUES ($1, $2, 'canceled')", message_id, sa_id)
        tx.emit(sa_id, "message.status_updated", dict(row),
                f"conversation:{row['conversation_id']}")
    return dict(row)
