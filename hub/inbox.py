"""The provider webhook inbox: verify a callback against the credentials of the account it
claims to come from, store it durably (deduplicated), then apply it in batches.

Receiving (the request's hot path) applies nothing: it checks the signature with the
account's token (accounts are cached briefly, see `Accounts`) and hands the event to the
`InboxWriter`, which group-commits the events of concurrent requests into one INSERT … ON
CONFLICT DO NOTHING; the request is answered only after that commit. The same statement
refuses a status callback for a message that none of its signers sent, so a forged or
cross-tenant callback writes nothing.

Applying (`Applier`) takes the rows that are due: a row is due as soon as it is stored,
and again when an orphan's retry time comes or after a failed apply's back-off. The applier
runs apart from the requests (hub/applier.py: one leader for all the gateway replicas,
woken by a NOTIFY sent once the inbox insert has committed, and looking every second
anyway). It claims rows with FOR UPDATE SKIP LOCKED, so no row is ever applied twice, and
applies status callbacks set-based, up to `APPLY_BATCH` at a time, in one transaction that
also marks the rows. A row a crash left pending is simply still due.

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
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit
from uuid import UUID

import asyncpg

from channels import sendgrid
from channels.base import StatusUpdate
from channels.twilio_sms import InvalidCallback, parse_inbound, parse_status_callback
from channels.twilio_voice import parse_call_status
from hub import twilio_signature
from hub.context import Hub, Tx
from hub.crypto import SecretBox
from hub.errors import Forbidden, ValidationFailed
from hub.store import webhooks as store
from hub.store.webhooks import Finished, Verified
from hub.webhook_actions import (
    PUBLIC_KEY,
    Receipt,
    apply_inbound,
    apply_receipts,
    apply_sendgrid,
    as_uuid,
)

log = logging.getLogger(__name__)
Row = dict[str, Any]
HandOff = Callable[[list[Row]], Awaitable[None]]

TWILIO_KINDS = ("sms_status", "sms_inbound", "voice_status")
KINDS = (*TWILIO_KINDS, "sendgrid_events")
STATUS_KINDS = frozenset({"sms_status", "voice_status"})
ORPHAN_RETRY_FOR = timedelta(hours=24)
MAX_RETRY_DELAY_S = 300.0
#: An event whose apply raised this many times stops being retried (kept, with its error).
MAX_FAILURES = 30
#: SendGrid signs each POST attempt with its time; older than this is a replay.
SENDGRID_MAX_AGE_S = 600
#: Status callbacks applied per transaction.
APPLY_BATCH = 200


class Rejected(Forbidden):
    """A callback that is not provably from the account it names: 403, nothing written."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail, code="webhook_signature_invalid")


def _signers(accounts: Iterable[Row]) -> tuple[tuple[UUID, datetime], ...]:
    return tuple((a["id"], a["updated_at"]) for a in accounts)


# --- the hot path's helpers ----------------------------------------------------------------


class Accounts:
    """Provider accounts by provider-side id (a Twilio Account SID) or by our id, read from
    PostgreSQL at most every `ttl_s`, and their tokens decrypted once per ciphertext.

    A stale entry can never let a callback in: the inbox insert checks that each signer
    still exists with the `updated_at` it was read with (a token rotated or an account
    deleted fails that check), and the caller then reads afresh and verifies again. A
    token that verifies nothing also makes the caller read afresh before refusing."""

    MAX_ENTRIES = 10_000

    def __init__(self, pool: asyncpg.Pool, box: SecretBox, ttl_s: float = 10.0) -> None:
        self.pool, self.box, self.ttl_s = pool, box, ttl_s
        self._rows: dict[tuple[str, str], tuple[float, asyncio.Future[list[Row]]]] = {}
        self._tokens: dict[bytes, str] = {}

    async def _get(self, key: tuple[str, str], fresh: bool,
                   load: Callable[[], Awaitable[list[Row]]]) -> tuple[list[Row], bool]:
        """(rows, whether they were just read). Concurrent misses share one read, which
        runs as its own task so that a caller going away does not cancel it for others."""
        now = time.monotonic()
        hit = self._rows.get(key)
        if hit is not None:
            expires, task = hit
            if not task.done():
                return await asyncio.shield(task), False
            if (expires > now and not fresh and not task.cancelled()
                    and task.exception() is None):
                return task.result(), False
        if len(self._rows) >= self.MAX_ENTRIES:
            self._rows.clear()
        task = asyncio.ensure_future(load())
        self._rows[key] = (now + self.ttl_s, task)
        return await asyncio.shield(task), True

    async def by_account_id(self, provider: str, account_id: str, *,
                            fresh: bool = False) -> tuple[list[Row], bool]:
        async def load() -> list[Row]:
            return await store.provider_accounts(self.pool, provider, account_id)
        return await self._get((provider, account_id), fresh, load)

    async def by_id(self, id_: UUID, *, fresh: bool = False) -> tuple[Row | None, bool]:
        async def load() -> list[Row]:
            row = await store.provider_account(self.pool, id_)
            return [row] if row else []
        rows, read = await self._get(("id", str(id_)), fresh, load)
        return (rows[0] if rows else None), read

    def token(self, account: Mapping[str, Any]) -> str:
        secret = bytes(account["secret_encrypted"])
        token = self._tokens.get(secret)
        if token is None:
            if len(self._tokens) >= self.MAX_ENTRIES:
                self._tokens.clear()
            token = self._tokens[secret] = self.box.decrypt(secret)
        return token


def _storable(value: Any) -> Any:
    """`value` with each NUL character replaced by U+FFFD: PostgreSQL takes no NUL in text
    or JSON, and refusing a provider's event would lose it (an inbound message above all).
    Applied to what a callback says as soon as it is read, so that its lookups, its event
    key and the stored payload all see the same text."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_storable(k): _storable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_storable(v) for v in value]
    return value


class InboxWriter:
    """Group commit for the inbox: the events of concurrent requests are written by one
    INSERT (at most `max_in_flight` at a time, each of at most `max_rows` events); a
    request's `write` returns once the statement holding its events has committed. Then it
    wakes the applier (`store.wake_applier`)."""

    def __init__(self, pool: asyncpg.Pool, *, max_rows: int = 500,
                 max_in_flight: int = 2) -> None:
        self.pool = pool
        self.max_rows, self.max_in_flight = max_rows, max_in_flight
        self._queue: deque[tuple[list[Verified], asyncio.Future[list[Any]]]] = deque()
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def write(self, events: list[Verified]) -> list[tuple[bool, int | None]]:
        """Per event (accepted, new inbox id or None for a duplicate); see
        `store.insert_verified`."""
        if not events:
            return []
        fut: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._queue.append((events, fut))
        self._kick()
        return await fut

    def _kick(self) -> None:
        while self._queue and self._in_flight < self.max_in_flight:
            batch = [self._queue.popleft()]
            rows = len(batch[0][0])
            while self._queue and rows + len(self._queue[0][0]) <= self.max_rows:
                batch.append(self._queue.popleft())
                rows += len(batch[-1][0])
            self._in_flight += 1
            task = asyncio.create_task(self._flush(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _flush(self, batch: list[tuple[list[Verified], asyncio.Future[list[Any]]]]
                     ) -> None:
        try:
            try:
                await self._write(batch)
            except Exception:
                # One request's bad row must not fail the others: each on its own.
                for item in batch:
                    try:
                        await self._write([item])
                    except Exception as exc:
                        if not item[1].done():
                            item[1].set_exception(exc)
        finally:
            self._in_flight -= 1
            self._kick()

    async def _write(self, batch: list[tuple[list[Verified], asyncio.Future[list[Any]]]]
                     ) -> None:
        events = [e for group, _ in batch for e in group]
        results = await store.insert_verified(self.pool, events)
        i = 0
        for group, fut in batch:
            if not fut.done():
                fut.set_result(results[i:i + len(group)])
            i += len(group)
        if any(id_ is not None for _, id_ in results):
            try:
                await store.wake_applier(self.pool)
            except Exception:  # the applier also looks every second
                log.warning("could not wake the webhook applier", exc_info=True)


# --- receiving ---------------------------------------------------------------------------


class Inbox:
    """One per gateway process: verifies and stores callbacks (the `Applier` applies them)."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.accounts = Accounts(hub.pool, hub.box)
        self.writer = InboxWriter(hub.pool)

    async def _store(self, event: Verified) -> tuple[bool, int | None]:
        return (await self.writer.write([event]))[0]

    async def receive_twilio(self, kind: str, url: str, pairs: Sequence[tuple[str, str]],
                             signature: str | None) -> int | None:
        """Verify and store one Twilio callback; its inbox id, or None for a duplicate.
        Raises Rejected (403) or InvalidCallback (400); neither writes anything. The form
        is read and stored `_storable`; the signature is checked on the `pairs` as sent.
        If that changed the form, the form as signed is kept too (URL-encoded, which holds
        a NUL), so that a receipt that beat its message can still be checked later."""
        raw = dict(pairs)
        form = _storable(raw)
        payload = {"url": url, "form": form, "signature": signature}
        if form != raw:
            payload["signed"] = urlencode(pairs)
        if kind == "sms_inbound":
            event = await self._verify_inbound(form, url, pairs, signature, payload)
            accepted, id_ = await self._store(event)
            if not accepted:  # the account changed as we stored it
                raise Rejected("the sender's account changed; retry")
            return id_
        query = dict(parse_qsl(urlsplit(url).query))
        message_id = as_uuid(query.get("message_id"))
        sid = (form.get("CallSid") if kind == "voice_status"
               else form.get("MessageSid") or form.get("SmsSid")) or None
        fresh = False
        while True:
            accounts, fresh = await self._status_accounts(form, message_id, sid, fresh)
            signers = [a for a in accounts
                       if twilio_signature.valid(self.accounts.token(a), url, pairs, signature)]
            if signers:
                update = (parse_call_status(form, query) if kind == "voice_status"
                          else parse_status_callback(form, query))
                accepted, id_ = await self._store(Verified(
                    "twilio", kind, update.event_key, payload, _signers(signers),
                    message_id=message_id,
                    provider_message_id=None if message_id else update.provider_message_id))
                if accepted:
                    return id_
            if fresh:
                raise Rejected("X-Twilio-Signature does not match, or the callback's account "
                               "did not send this message")
            fresh = True  # cached accounts may be stale: read them again, once

    async def _status_accounts(self, form: Mapping[str, str], message_id: UUID | None,
                               sid: str | None, fresh: bool) -> tuple[list[Row], bool]:
        """The accounts that may have signed a status callback: those with its Account SID,
        or, if it names none, the account that sent the message it names."""
        account_sid = form.get("AccountSid")
        if account_sid:
            return await self.accounts.by_account_id("twilio", account_sid, fresh=fresh)
        message = await store.callback_message(self.hub.pool, message_id, "twilio", sid)
        if message is None or message["provider"] != "twilio":
            return [], True
        account, _ = await self.accounts.by_id(message["provider_account_id"], fresh=True)
        return ([account] if account else []), True

    async def _verify_inbound(self, form: Mapping[str, str], url: str,
                              pairs: Sequence[tuple[str, str]], signature: str | None,
                              payload: Row) -> Verified:
        """Signed by the account of the sender the message was addressed to: the number
        itself, or the messaging service the number belongs to."""
        to = form.get("To") or ""
        candidates = await store.inbound_senders(
            self.hub.pool, form.get("AccountSid") or "", [to, to.removeprefix("whatsapp:")],
            form.get("MessagingServiceSid") or None)
        tokens: dict[UUID, bool] = {}
        for sender in candidates:  # several only when sub-accounts share a Twilio account
            pa = sender["account_row_id"]
            if pa not in tokens:
                tokens[pa] = twilio_signature.valid(self.accounts.token(sender), url,
                                                    pairs, signature)
            if tokens[pa]:
                key = (form.get("MessageSid") or form.get("SmsMessageSid")
                       or form.get("SmsSid") or "")
                parse_inbound(form)
                return Verified("twilio", "sms_inbound", key, payload,
                                ((pa, sender["updated_at"]),), sender["sub_account_id"])
        raise Rejected("unknown account or sender, or X-Twilio-Signature does not match")

    async def receive_sendgrid(self, account: str | None, body: bytes, signature: str | None,
                               timestamp: str | None, now: float | None = None) -> list[int]:
        """Verify and store a SendGrid Event Webhook batch; the inbox ids of new events.

        The account is named by the `account` query parameter of the configured webhook
        URL (the provider account id): one lookup and one ECDSA check, and no guessing
        between tenants. Raises Rejected (403) or ValidationFailed (body not JSON)."""
        pa_id = as_uuid(account)
        fresh = False
        while True:
            row, fresh = await self.accounts.by_id(pa_id, fresh=fresh) if pa_id else (None,
                                                                                      True)
            try:
                items = self._verify_sendgrid(row, body, signature, timestamp, now)
            except Rejected:
                if fresh:
                    raise
                fresh = True
                continue
            assert row is not None
            results = await self.writer.write([Verified(
                "sendgrid", "sendgrid_events", sendgrid.event_key_of(e), e,
                _signers([row]), row["sub_account_id"]) for e in items])
            if all(accepted for accepted, _ in results):
                return [id_ for _, id_ in results if id_ is not None]
            if fresh:
                raise Rejected("the SendGrid account changed; retry")
            fresh = True

    @staticmethod
    def _verify_sendgrid(row: Row | None, body: bytes, signature: str | None,
                         timestamp: str | None, now: float | None) -> list[Row]:
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
        return [_storable(e) for e in (data if isinstance(data, list) else [data])
                if isinstance(e, dict)]


# --- applying ----------------------------------------------------------------------------


def _retry_at(row: Row, *, orphan: bool) -> datetime | None:
    now = datetime.now(UTC)
    if orphan and now - row["received_at"] > ORPHAN_RETRY_FOR:
        return None
    delay = min(2.0 ** row["attempts"], MAX_RETRY_DELAY_S)
    return now + timedelta(seconds=delay)


def _log_outcome(row: Row, done: Finished) -> None:
    if done.status == "applied":
        return
    # An orphan is told once, not at every retry.
    level = logging.DEBUG if done.status == "orphan" and row["attempts"] else logging.INFO
    log.log(level, "webhook event %s", done.status, extra={
        "event_id": row["id"], "kind": row["kind"], "error": done.error})


async def _failed(hub: Hub, event_id: int, exc: Exception) -> None:
    log.warning("webhook event not applied; will retry", extra={
        "event_id": event_id, "error": f"{type(exc).__name__}: {exc}"[:300]})
    await store.failed(hub.pool, event_id, f"{type(exc).__name__}: {exc}"[:500],
                       MAX_RETRY_DELAY_S, MAX_FAILURES)


async def apply_statuses(hub: Hub, ids: Sequence[int] | None = None) -> list[Row]:
    """Apply status-callback rows in one transaction: these `ids`, or (None) the rows that
    are due, up to APPLY_BATCH. If that fails, each status row on its own, so that one bad
    row is retried alone and holds up no other. Returns the rows claimed (as they were),
    those of other kinds untouched, for `apply_event` once this has committed."""
    rows: list[Row] = []
    try:
        async with hub.transaction() as tx:
            rows = await store.claim(tx.conn, ids, APPLY_BATCH, STATUS_KINDS)
            done = await _apply_statuses(hub, tx, [r for r in rows
                                                   if r["kind"] in STATUS_KINDS])
    except Exception as exc:
        failed = list(ids) if ids is not None else [r["id"] for r in rows
                                                    if r["kind"] in STATUS_KINDS]
        if len(failed) == 1:
            await _failed(hub, failed[0], exc)
        elif not failed:  # the claim itself failed
            raise
        else:
            log.warning("webhook status batch failed; applying its rows one by one",
                        extra={"events": len(failed),
                               "error": f"{type(exc).__name__}: {exc}"[:300]})
            for event_id in failed:
                await apply_statuses(hub, [event_id])
        return rows
    by_row = {r["id"]: r for r in rows}
    for d in done:
        _log_outcome(by_row[d.id], d)
    return rows


def _parse_status(row: Row) -> StatusUpdate:
    payload = row["payload"]
    query = dict(parse_qsl(urlsplit(payload["url"]).query))
    return (parse_call_status(payload["form"], query) if row["kind"] == "voice_status"
            else parse_status_callback(payload["form"], query))


async def _apply_statuses(hub: Hub, tx: Tx, rows: Sequence[Row]) -> list[Finished]:
    """Apply claimed status-callback rows inside `tx` and record the outcomes the claim
    did not presume (anything but applied, or a sub-account learnt only now)."""
    if not rows:
        return []
    done: list[Finished] = []
    parsed: list[tuple[Row, StatusUpdate]] = []
    for row in rows:
        try:
            parsed.append((row, _parse_status(row)))
        except InvalidCallback as exc:
            done.append(Finished(row["id"], "ignored", str(exc)))
    named = [as_uuid(u.message_id) for _, u in parsed]
    messages = await store.callback_messages(
        tx.conn, [m for m in named if m is not None], "twilio",
        [u.provider_message_id for (_, u), m in zip(parsed, named, strict=True)
         if m is None and u.provider_message_id])
    by_id = {m["id"]: m for m in messages}
    by_sid: dict[str, Row] = {}
    for m in messages:
        by_sid.setdefault(m["provider_message_id"], m)
    receipts: list[Receipt] = []
    for (row, update), mid in zip(parsed, named, strict=True):
        message = by_id.get(mid) if mid else by_sid.get(update.provider_message_id)
        outcome = _judge(hub, row, message)
        done.append(outcome)
        if outcome.status == "applied":
            assert message is not None
            receipts.append(Receipt(message, update))
    await apply_receipts(tx, receipts)
    by_row = {r["id"]: r for r in rows}
    await store.finish_many(tx.conn, [
        d for d in done
        if d.status != "applied" or d.sub_account_id != by_row[d.id]["sub_account_id"]])
    return done


def _signed_form(payload: Row) -> Sequence[tuple[str, str]] | Mapping[str, str]:
    """The form of a stored Twilio callback as it was signed (see `receive_twilio`)."""
    signed = payload.get("signed")
    return parse_qsl(signed, keep_blank_values=True) if signed else payload["form"]


def _judge(hub: Hub, row: Row, message: Row | None) -> Finished:
    """Whether a status callback applies to the message it names."""
    if message is None:
        return Finished(row["id"], "orphan", "no message with this id yet",
                        next_attempt_at=_retry_at(row, orphan=True))
    if row["sub_account_id"] is None:
        # Stored before the message existed: check now that its own account signed it.
        payload = row["payload"]
        account_sid = payload["form"].get("AccountSid")
        signed = message["provider"] == "twilio" and (
            not account_sid or message["account_id"] == account_sid
        ) and twilio_signature.valid(hub.box.decrypt(message["secret_encrypted"]),
                                     payload["url"], _signed_form(payload),
                                     payload["signature"])
        if not signed:
            return Finished(row["id"], "ignored",
                            "not signed by the account that sent this message")
    elif row["sub_account_id"] != message["sub_account_id"]:
        return Finished(row["id"], "ignored", "the message belongs to another sub-account")
    return Finished(row["id"], "applied", sub_account_id=message["sub_account_id"])


async def apply_event(hub: Hub, event_id: int) -> list[Row]:
    """Apply one inbound-message or SendGrid row if nobody else is; returns messages
    queued by it (compliance replies) for the caller to hand to the sender shards."""
    try:
        async with hub.transaction() as tx:
            claimed = await store.claim(tx.conn, [event_id], 1, KINDS)
            if not claimed:
                return []
            row = claimed[0]
            if row["kind"] == "sms_inbound":
                done, replies = await apply_inbound(hub, tx.conn, row)
            else:
                retry = _retry_at(row, orphan=True)
                done, replies = await apply_sendgrid(hub, tx.conn, row, retry), []
            await store.finish_many(tx.conn, [done])
    except Exception as exc:
        await _failed(hub, event_id, exc)
        return []
    _log_outcome(row, done)
    return replies


class Applier:
    """Applies the rows that are due, whenever `wake` is called and every `every_s`;
    forgets applied events after `keep_days`. Status callbacks go in batches of up to
    APPLY_BATCH, the other kinds one by one."""

    def __init__(self, hub: Hub, hand_off: HandOff, *, every_s: float = 1.0,
                 keep_days: int = 7) -> None:
        self.hub, self.hand_off = hub, hand_off
        self.every_s, self.keep_days = every_s, keep_days
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        last_prune = 0.0
        while True:
            self._wake.clear()  # a wake during this round makes another round
            try:
                while True:
                    # One transaction claims the due rows and applies the status
                    # callbacks among them; the other kinds follow, one by one.
                    claimed = await apply_statuses(self.hub)
                    replies: list[Row] = []
                    for row in claimed:
                        if row["kind"] not in STATUS_KINDS:
                            replies.extend(await apply_event(self.hub, row["id"]))
                    if replies:
                        await self.hand_off(replies)
                    # A row another worker holds stays due: take it at the next wake.
                    if len(claimed) < APPLY_BATCH:
                        break
                if time.monotonic() - last_prune > 3600:
                    last_prune = time.monotonic()
                    await store.prune(self.hub.pool, self.keep_days)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("webhook apply loop failed; retrying", exc_info=True)
                await asyncio.sleep(self.every_s)
            try:
                await asyncio.wait_for(self._wake.wait(), self.every_s)
            except TimeoutError:
                pass


__all__ = ["Accounts", "Applier", "Inbox", "InboxWriter", "InvalidCallback", "Rejected",
           "apply_event", "apply_statuses"]
