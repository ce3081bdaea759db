"""Compliance writers: opting an address out (STOP, Twilio 21610, SendGrid bounces and
unsubscribes, SMTP hard bounces, one-click email unsubscribe) and back in (START), and the
replies the keywords ask for. Each runs in one transaction, joining the caller's when there
is one.

Opting out suppresses the address for the sub-account and cancels everything still waiting
for it: pending campaign recipients of that channel in every campaign, then queued messages.
Recipients go first on purpose: a Scheduler shard holds its claimed recipients' row locks
until their messages are committed, so waiting on those rows and only then cancelling
messages (a fresh snapshot under READ COMMITTED) also catches messages created a moment
ago. What already left for the provider cannot be called back.
"""

from __future__ import annotations

import logging
from typing import Any
from uuid import UUID

from hub import compliance
from hub.actions import suppression_address
from hub.context import Hub, Tx
from hub.errors import HubError, NotFound
from hub.sending import do_send_message
from hub.status import CANCELABLE
from hub.store import suppressions as suppression_store
from hub.store.messaging import MESSAGE_COLS

log = logging.getLogger(__name__)
Row = dict[str, Any]

MESSAGE_CHANNELS = {"sms": ["sms", "mms"], "email": ["email"], "voice": ["voice"]}
_CONTACT_KEY = {"sms": "phone", "voice": "phone", "email": "email_key"}


async def lock_address(tx: Tx, sub_account_id: UUID, channel: str, address: str) -> None:
    """Serialise writers of one address (two STOPs racing must confirm once)."""
    await tx.conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                          f"compliance:{sub_account_id}:{channel}:{address}")


async def cancel_waiting(tx: Tx, sub_account_id: UUID, channel: str, address: str) -> list[Row]:
    """Cancel what still waits for `address` on `channel`; returns the canceled messages.
    Messages queued no earlier than the address's active suppression are spared: only a
    compliance reply can be queued then (the STOP confirmation is queued in the same
    transaction as its suppression), and a second STOP must not cancel the first one's."""
    conn = tx.conn
    channels = MESSAGE_CHANNELS[channel]
    await conn.execute(
        f"""UPDATE campaign_recipients r SET status = 'canceled', skip_reason = 'opted_out'
            FROM campaigns c
            WHERE r.status = 'pending' AND c.id = r.campaign_id AND c.channel = ANY($3::text[])
              AND r.contact_id IN (SELECT id FROM contacts WHERE sub_account_id = $1
                                   AND {_CONTACT_KEY[channel]} = $2)""",
        sub_account_id, address, channels)
    to = "lower(to_address)" if channel == "email" else "to_address"
    rows = await conn.fetch(
        f"""UPDATE messages SET status = 'canceled', updated_at = now()
            WHERE sub_account_id = $1 AND {to} = $2 AND status = ANY($3::text[])
              AND direction = 'outbound' AND channel = ANY($4::text[])
              AND NOT EXISTS (SELECT 1 FROM suppressions s WHERE s.sub_account_id = $1
                              AND s.channel = $5 AND s.address = $2 AND s.removed_at IS NULL
                              AND s.created_at <= messages.created_at)
            RETURNING {MESSAGE_COLS}""",
        sub_account_id, address, [s.value for s in CANCELABLE], channels, channel)
    if rows:
        await conn.execute(
            """INSERT INTO message_events (message_id, sub_account_id, status)
               SELECT unnest($1::uuid[]), $2, 'canceled'""",
            [r["id"] for r in rows], sub_account_id)
    for r in rows:
        if r["priority"] != "bulk":  # campaign progress reports bulk
            tx.emit(sub_account_id, "message.status_updated", dict(r),
                    f"conversation:{r['conversation_id']}")
    if rows:
        log.info("opt-out canceled waiting messages", extra={
            "sub_account_id": str(sub_account_id), "channel": channel, "canceled": len(rows)})
    return [dict(r) for r in rows]


async def do_opt_out(hub: Hub, sa: Row, channel: str, address: str, *, reason: str,
                     source: str, actor: str) -> tuple[Row, bool]:
    """Suppress `address` and cancel what waits for it. Returns (the active suppression,
    whether this call created it). `address` is normalised here."""
    address = suppression_address(channel, address, sa["default_region"])
    async with hub.transaction() as tx:
        await lock_address(tx, sa["id"], channel, address)
        await cancel_waiting(tx, sa["id"], channel, address)
        row, created = await suppression_store.add(tx.conn, sa["id"], channel, address,
                                                   reason, source, actor)
        if created:
            tx.emit(sa["id"], "suppression.created", row)
    if created:
        log.info("address opted out", extra={"sub_account_id": str(sa["id"]),
                                              "channel": channel, "source": source})
    return row, created


async def suppress_bounced(tx: Tx, sub_account_id: UUID, address: str, *, reason: str,
                           provider: str) -> bool:
    """A relay said at send time that `address` has no mailbox (an SMTP 5.1.1): suppress it
    as a SendGrid bounce is (source bounce, the provider as actor) and cancel what waits for
    it, in the caller's transaction (the one recording the failure). False for an address
    the hub cannot normalise: nothing to suppress."""
    try:
        address = suppression_address("email", address, "")
    except HubError:
        return False
    await lock_address(tx, sub_account_id, "email", address)
    await cancel_waiting(tx, sub_account_id, "email", address)
    row, created = await suppression_store.add(tx.conn, sub_account_id, "email", address,
                                               reason, "bounce", provider)
    if created:
        tx.emit(sub_account_id, "suppression.created", row)
        log.info("address opted out", extra={"sub_account_id": str(sub_account_id),
                                              "channel": "email", "source": "bounce"})
    return True


async def do_opt_in(hub: Hub, sa: Row, channel: str, address: str, *,
                    actor: str) -> Row | None:
    """Lift the active suppression of `address` (START); the removed row, or None when it
    was not suppressed."""
    async with hub.transaction() as tx:
        await lock_address(tx, sa["id"], channel, address)
        active = await tx.conn.fetchval(
            """SELECT id FROM suppressions WHERE sub_account_id = $1 AND channel = $2
               AND address = $3 AND removed_at IS NULL""", sa["id"], channel, address)
        if active is None:
            return None
        row = await suppression_store.remove(tx.conn, sa["id"], active,
                                             compliance.OPT_IN_REASON, actor)
        if row is not None:
            tx.emit(sa["id"], "suppression.removed", row)
    return row


async def queue_reply(hub: Hub, sa: Row, phone: str, sender_id: UUID, body: str) -> Row | None:
    """Queue a compliance reply from the number the contact texted, ahead of bulk traffic.
    It reaches a suppressed number too (the STOP confirmation, HELP from an opted-out
    contact: CTIA requires both). None when it cannot be sent: the keyword's own effect
    must not be undone by a failed reply. None too when the number's provider account
    leaves keyword replies to the provider (`compliance.KEYWORD_REPLIES`)."""
    try:
        async with hub.transaction(savepoint=True) as tx:  # a failure leaves the caller's work
            config = await tx.conn.fetchval(
                """SELECT p.config FROM senders s
                   JOIN provider_accounts p ON p.id = s.provider_account_id
                   WHERE s.id = $1""", sender_id)
            if compliance.provider_answers_keywords(config):
                log.info("compliance reply left to the provider", extra={
                    "sub_account_id": str(sa["id"]), "sender_id": str(sender_id)})
                return None
            return await do_send_message(
                hub, sa, {"channel": "sms", "to": phone, "body": body, "sender_id": sender_id},
                priority="transactional", compliance=True)
    except HubError as exc:
        log.warning("compliance reply not sent", extra={
            "sub_account_id": str(sa["id"]), "code": exc.code})
        return None


async def do_unsubscribe_email(hub: Hub, message_id: UUID) -> Row:
    """One-click unsubscribe (RFC 8058): suppress the email recipient of `message_id` in its
    sub-account. The caller has checked the link's token."""
    message = await hub.pool.fetchrow(
        """SELECT m.to_address, m.channel, s.id, s.default_region FROM messages m
           JOIN sub_accounts s ON s.id = m.sub_account_id WHERE m.id = $1""", message_id)
    if message is None or message["channel"] != "email":
        raise NotFound("no such email message", code="message_not_found")
    sa = {"id": message["id"], "default_region": message["default_region"]}
    row, _ = await do_opt_out(hub, sa, "email", message["to_address"],
                              reason="one-click unsubscribe (List-Unsubscribe)",
                              source="opt_out", actor="recipient")
    return row
