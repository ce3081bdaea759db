"""The provider webhook inbox: verify a callback against the credentials of the account it
claims to come from, store it durably (deduplicated), then apply it, now or later.

Receiving (the request's hot path) never applies anything; it answers who may have sent
the callback and writes one inbox row per provider event, in one short transaction.
Applying claims a row (FOR UPDATE SKIP LOCKED, so the request's own job, the sweepers of
every gateway replica and a retry never apply it twice), runs the do_* writer and marks
the row in the same transaction.

Orphans: a receipt for a message we do not have may be for a message whose row commits a
moment later (the provider can answer faster than our commit), so it is kept as `orphan`
and retried with back-off (1 s, 2 s, 4 s … at most 5 min apart) for ORPHAN_RETRY_FOR; after
that it stays in the inbox for inspection and is no longer retried.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlsplit
from uuid import UUID

import asyncpg

from channels import sendgrid
from channels.base import StatusUpdate, SuppressionEvent
from channels.twilio_sms import (
    InvalidCallback,
    parse_inbound,
    parse_status_callback,
    verify_signature,
)
from channels.twilio_voice import parse_call_status
from hub.compliance_actions import do_opt_out
from hub.context import Hub
from hub.errors import Forbidden, HubError, ValidationFailed
from hub.phones import normalize_phone
from hub.store import tenants
from hub.store import webhooks as store
from hub.webhook_actions import do_apply_status, do_receive_message

log = logging.getLogger(__name__)
Row = dict[str, Any]

TWILIO_KINDS = ("sms_status", "sms_inbound", "voice_status")
#: The request's own job applies a row at once; the sweeper only steps in after this.
REQUEST_GRACE_S = 10.0
ORPHAN_RETRY_FOR = timedelta(hours=24)
MAX_RETRY_DELAY_S = 300.0
#: An event whose apply raised this many times stops being retried (kept, with its error).
MAX_FAILURES = 30
#: SendGrid signs each POST attempt with its time; older than this is a replay.
SENDGRID_MAX_AGE_S = 600
PUBLIC_KEY = "event_webhook_public_key"  # provider_accounts.config key for SendGrid


class Rejected(Forbidden):
    """A callback that is not provably from the account it names: 403, nothing written."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail, code="webhook_signature_invalid")


def _uuid(value: str | None) -> UUID | None:
    try:
        return UUID(value) if value else None
    except ValueError:
        return None


def _token(hub: Hub, account: Mapping[str, Any]) -> str:
    return hub.box.decrypt(account["secret_encrypted"])


# --- receiving ---------------------------------------------------------------------------


async def receive_twilio(hub: Hub, kind: str, url: str, pairs: Sequence[tuple[str, str]],
                         signature: str | None) -> int | None:
    """Verify and store one Twilio callback; its inbox id, or None for a duplicate.
    Raises Rejected (403) or InvalidCallback (400); neither writes anything."""
    form = dict(pairs)
    account_sid = form.get("AccountSid") or None
    if kind == "sms_inbound":
        sub_account_id, account_id = await _verify_inbound(hub, form, url, pairs, signature)
        key = form.get("MessageSid") or form.get("SmsMessageSid") or form.get("SmsSid") or ""
        parse_inbound(form)
    else:
        sid = form.get("CallSid") if kind == "voice_status" else (
            form.get("MessageSid") or form.get("SmsSid"))
        query = dict(parse_qsl(urlsplit(url).query))
        message = await store.callback_message(hub.pool, _uuid(query.get("message_id")),
                                               "twilio", sid)
        if message is not None:
            # The message's own account must have signed it: another tenant's valid
            # signature on our message id is a forgery.
            if message["provider"] != "twilio" or (
                    account_sid and message["account_id"] != account_sid):
                raise Rejected("the callback's account did not send this message")
            if not verify_signature(_token(hub, message), url, pairs, signature):
                raise Rejected("X-Twilio-Signature does not match")
            sub_account_id, account_id = message["sub_account_id"], message["provider_account_id"]
        else:
            account_id = await _verify_any(hub, account_sid, url, pairs, signature)
            sub_account_id = None  # resolved when the message turns up
        update = (parse_call_status(form, query) if kind == "voice_status"
                  else parse_status_callback(form, query))
        key = update.event_key
    payload = {"url": url, "form": form, "signature": signature}
    ids = await store.insert_events(hub.pool, [{
        "provider": "twilio", "kind": kind, "sub_account_id": sub_account_id,
        "provider_account_id": account_id, "event_key": f"{account_id}:{key}",
        "payload": payload}], REQUEST_GRACE_S)
    return ids[0] if ids else None


async def _verify_inbound(hub: Hub, form: Mapping[str, str], url: str,
                          pairs: Sequence[tuple[str, str]],
                          signature: str | None) -> tuple[UUID, UUID]:
    """(sub-account, provider account) of the sender the message was addressed to: the
    number itself, or the messaging service the number belongs to."""
    to = form.get("To") or ""
    candidates = await store.inbound_senders(
        hub.pool, form.get("AccountSid") or "", [to, to.removeprefix("whatsapp:")],
        form.get("MessagingServiceSid") or None)
    tokens: dict[UUID, bool] = {}
    for sender in candidates:  # several only when sub-accounts share a Twilio account
        pa = sender["account_row_id"]
        if pa not in tokens:
            tokens[pa] = verify_signature(_token(hub, sender), url, pairs, signature)
        if tokens[pa]:
            return sender["sub_account_id"], pa
    raise Rejected("unknown account or sender, or X-Twilio-Signature does not match")


async def _verify_any(hub: Hub, account_sid: str | None, url: str,
                      pairs: Sequence[tuple[str, str]], signature: str | None) -> UUID:
    if account_sid:
        for account in await store.provider_accounts(hub.pool, "twilio", account_sid):
            if verify_signature(_token(hub, account), url, pairs, signature):
                return UUID(str(account["id"]))
    raise Rejected("unknown account, or X-Twilio-Signature does not match")


async def receive_sendgrid(hub: Hub, account: str | None, body: bytes, signature: str | None,
                           timestamp: str | None, now: float | None = None) -> list[int]:
    """Verify and store a SendGrid Event Webhook batch; the inbox ids of new events.

    The account is named by the `account` query parameter of the configured webhook URL
    (the provider account id): one lookup and one ECDSA check, and no guessing between
    tenants. Raises Rejected (403) or ValidationFailed (body not JSON)."""
    pa_id = _uuid(account)
    row = await store.provider_account(hub.pool, pa_id) if pa_id else None
    key = str((row or {}).get("config", {}).get(PUBLIC_KEY) or "")
    if row is None or row["provider"] != "sendgrid" or not key:
        raise Rejected("unknown SendGrid account, or it has no event webhook public key")
    now = time.time() if now is None else now
    try:
        age = now - int(timestamp or "")
    except ValueError:
        raise Rejected("missing or malformed signature timestamp") from None
    if abs(age) > SENDGRID_MAX_AGE_S:
        raise Rejected("the signature timestamp is more than 10 minutes away (replay?)")
    if not sendgrid.verify_event_signature(key, body, signature or "", timestamp or ""):
        raise Rejected("event webhook signature does not match")
    try:
        data = json.loads(body)
    except ValueError:
        raise ValidationFailed.field("body", "not JSON", "json_invalid") from None
    items = [e for e in (data if isinstance(data, list) else [data]) if isinstance(e, dict)]
    return await store.insert_events(hub.pool, [{
        "provider": "sendgrid", "kind": "sendgrid_events", "sub_account_id": row["sub_account_id"],
        "provider_account_id": row["id"], "event_key": f"{row['id']}:{sendgrid.event_key_of(e)}",
        "payload": e} for e in items], REQUEST_GRACE_S)


# --- applying ----------------------------------------------------------------------------


@dataclass
class Outcome:
    status: str  # applied | orphan | ignored
    error: str | None = None
    sub_account_id: UUID | None = None
    replies: list[Row] = field(default_factory=list)


def _retry_at(row: Row, *, orphan: bool) -> datetime | None:
    now = datetime.now(UTC)
    if orphan and now - row["received_at"] > ORPHAN_RETRY_FOR:
        return None
    delay = min(2.0 ** row["attempts"], MAX_RETRY_DELAY_S)
    return now + timedelta(seconds=delay)


async def apply_event(hub: Hub, event_id: int) -> list[Row]:
    """Apply one inbox row if nobody else is; returns messages queued by it (compliance
    replies) for the caller to hand to the sender shards."""
    try:
        async with hub.transaction() as tx:
            row = await store.claim(tx.conn, event_id)
            if row is None:
                return []
            outcome = await _dispatch(hub, tx.conn, row)
            retry = _retry_at(row, orphan=True) if outcome.status == "orphan" else None
            await store.finish(tx.conn, event_id, outcome.status, error=outcome.error,
                               sub_account_id=outcome.sub_account_id, next_attempt_at=retry)
    except Exception as exc:
        log.warning("webhook event not applied; will retry", extra={
            "event_id": event_id, "error": f"{type(exc).__name__}: {exc}"[:300]})
        await hub.pool.execute(  # kept pending; after MAX_FAILURES only a person retries it
            """UPDATE webhook_events SET attempts = attempts + 1, error = $2,
                      next_attempt_at = CASE WHEN attempts + 1 >= $4 THEN NULL ELSE
                          now() + make_interval(secs => least(2 ^ attempts, $3)) END
               WHERE id = $1 AND status IN ('pending', 'orphan')""",
            event_id, f"{type(exc).__name__}: {exc}"[:500], MAX_RETRY_DELAY_S, MAX_FAILURES)
        return []
    if outcome.status != "applied":  # an orphan is told once, not at every retry
        level = logging.DEBUG if outcome.status == "orphan" and row["attempts"] else logging.INFO
        log.log(level, "webhook event %s", outcome.status, extra={
            "event_id": event_id, "kind": row["kind"], "error": outcome.error})
    return outcome.replies


async def _dispatch(hub: Hub, conn: asyncpg.Connection, row: Row) -> Outcome:
    """Lookups run on the claiming transaction's connection; the writers join it."""
    if row["kind"] == "sms_inbound":
        return await _apply_inbound(hub, conn, row)
    if row["kind"] in ("sms_status", "voice_status"):
        return await _apply_twilio_status(hub, conn, row)
    return await _apply_sendgrid(hub, conn, row)


async def _apply_twilio_status(hub: Hub, conn: asyncpg.Connection, row: Row) -> Outcome:
    payload = row["payload"]
    form, url = payload["form"], payload["url"]
    query = dict(parse_qsl(urlsplit(url).query))
    update = (parse_call_status(form, query) if row["kind"] == "voice_status"
              else parse_status_callback(form, query))
    message = await store.callback_message(conn, _uuid(update.message_id), "twilio",
                                           update.provider_message_id)
    if message is None:
        return Outcome("orphan", "no message with this id yet")
    if row["sub_account_id"] is None:
        # Stored before the message existed: check now that its own account signed it.
        account_sid = form.get("AccountSid")
        signed = message["provider"] == "twilio" and (
            not account_sid or message["account_id"] == account_sid) and verify_signature(
            _token(hub, message), url, form, payload["signature"])
        if not signed:
            return Outcome("ignored", "not signed by the account that sent this message")
    elif row["sub_account_id"] != message["sub_account_id"]:
        return Outcome("ignored", "the message belongs to another sub-account")
    await do_apply_status(hub, message, update)
    return Outcome("applied", sub_account_id=message["sub_account_id"])


async def _apply_inbound(hub: Hub, conn: asyncpg.Connection, row: Row) -> Outcome:
    inbound = parse_inbound(row["payload"]["form"])
    if inbound.from_.startswith("whatsapp:") or inbound.to.startswith("whatsapp:"):
        return Outcome("ignored", "WhatsApp is not a channel of the hub")
    senders = await store.inbound_senders(conn, inbound.account_id or "", [inbound.to],
                                          inbound.messaging_service_id, row["sub_account_id"])
    sa = await tenants.get_sub_account(conn, row["sub_account_id"])
    if not senders or sa is None:
        return Outcome("ignored", "the sender is gone")
    try:
        phone = normalize_phone(inbound.from_, sa["default_region"], field="From")
    except ValidationFailed:
        return Outcome("ignored", "From is not a phone number the hub can answer")
    received = await do_receive_message(hub, sa, senders[0], inbound, phone)
    return Outcome("applied", None if received.message else "duplicate message", sa["id"],
                   received.replies)


async def _apply_sendgrid(hub: Hub, conn: asyncpg.Connection, row: Row) -> Outcome:
    account = await store.provider_account(conn, row["provider_account_id"]) \
        if row["provider_account_id"] else None
    if account is None:
        return Outcome("ignored", "the SendGrid account is gone")
    event = row["payload"]
    sa_id: UUID = row["sub_account_id"]
    status = "applied"
    error = None
    for item in sendgrid.parse_events(json.dumps(event).encode()):
        if isinstance(item, StatusUpdate):
            message = await store.callback_message(
                conn, _uuid(item.message_id), "sendgrid", item.provider_message_id or None,
                str(event.get("email") or "") or None)
            if message is None:
                named = item.message_id or item.provider_message_id
                status, error = ("orphan", "no message with this id yet") if named else (
                    "ignored", "the event names no message")
            elif not _same_signer(message, account):
                return Outcome("ignored", "the message belongs to another SendGrid account")
            else:
                sa_id = message["sub_account_id"]
                await do_apply_status(hub, message, item)
        elif isinstance(item, SuppressionEvent):
            await _suppress_email(hub, conn, sa_id, item)
    return Outcome(status, error, sa_id)


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
                                        _uuid(event.message_id))
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


# --- the sweeper -------------------------------------------------------------------------

HandOff = Callable[[list[Row]], Awaitable[None]]


async def apply_many(hub: Hub, ids: Sequence[int], hand_off: HandOff) -> None:
    replies: list[Row] = []
    for event_id in ids:
        replies.extend(await apply_event(hub, event_id))
    if replies:
        await hand_off(replies)


async def sweep(hub: Hub, hand_off: HandOff, *, every_s: float = 1.0, batch: int = 200,
                keep_days: int = 7) -> None:
    """Forever: apply pending rows the request's job did not (a crash, a restart), retry
    orphans that are due, and forget applied events after `keep_days`."""
    last_prune = 0.0
    while True:
        ids: list[int] = []
        try:
            ids = await store.due(hub.pool, batch)
            if ids:
                await apply_many(hub, ids, hand_off)
            if time.monotonic() - last_prune > 3600:
                last_prune = time.monotonic()
                await store.prune(hub.pool, keep_days)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning("webhook sweep failed; retrying", exc_info=True)
        if len(ids) < batch:
            await asyncio.sleep(every_s)


__all__ = ["InvalidCallback", "Rejected", "apply_event", "apply_many", "receive_sendgrid",
           "receive_twilio", "sweep"]
