"""A Scheduler shard: runs the campaign state machines of every sub-account whose slot it
owns. Plain asyncio state; `actors/ray_api.py` makes it a Ray actor.

Each tick, for each running campaign, it keeps a bounded window of messages ahead of the
senders (so memory and the database's queue stay flat whatever the audience size): it leases
due recipients, defers those whose local sending window is closed to the moment it opens,
renders their bodies, picks a sticky sender, and creates their messages in one transaction.
Sender shards lease those messages from PostgreSQL; nothing is handed over in memory, so a
restart of either side loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg
import redis.asyncio as aioredis

from hub import events
from hub.campaigns import FailureWindow, transition
from hub.segments import count_segments
from hub.sender_pool import choose_sender
from hub.store import campaigns as store
from hub.templates import parse
from hub.timezones import SendWindow, contact_timezone

log = logging.getLogger(__name__)
NAMESPACE = uuid.UUID("6f1c7a52-5b0e-4d5e-9a57-1c2f9e1d3b10")


def _address_channel(channel: str) -> str:
    return {"email": "email", "voice": "voice"}.get(channel, "sms")


def message_id_for(campaign_id: UUID, contact_id: UUID) -> UUID:
    """The one message a campaign may send a contact: derived, so retries collide."""
    return uuid.uuid5(NAMESPACE, f"{campaign_id}:{contact_id}")


class SchedulerCore:
    def __init__(self, owner: str, slots: tuple[int, ...], pool: asyncpg.Pool,
                 redis: aioredis.Redis, *, window_s: float = 10.0, min_window: int = 500,
                 claim_batch: int = 500, lease_s: float = 60.0, progress_every_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.owner, self.slots = owner, slots
        self.pool, self.redis = pool, redis
        self.window_s, self.min_window = window_s, min_window
        self.claim_batch, self.lease_s = claim_batch, lease_s
        self.progress_every_s = progress_every_s
        self.clock = clock
        self._last_progress: dict[UUID, float] = {}
        self._senders: dict[UUID, tuple[float, list[dict[str, Any]]]] = {}

    async def tick(self) -> int:
        """One pass over the hosted campaigns; returns messages created."""
        created = 0
        for campaign in await store.active_for_slots(self.pool, list(self.slots)):
            try:
                created += await self._advance(campaign)
            except (asyncpg.PostgresError, OSError) as exc:
                log.warning("campaign tick failed; will retry", extra={
                    "campaign_id": str(campaign["id"]), "error": type(exc).__name__})
        return created

    async def _advance(self, c: dict[str, Any]) -> int:
        now = datetime.now(UTC)
        if c["status"] == "scheduled":
            if c["start_at"] and c["start_at"] > now:
                return 0
            await self._set_status(c, transition(c["status"], "start"))
            c["status"] = "running"
        created = 0
        backlog = await store.backlog(self.pool, c["id"])
        senders = await self._sender_pool(c)
        rate = sum(s["mps"] for s in senders) if senders else 1.0
        if c["rate_cap"]:
            rate = min(rate, c["rate_cap"])
        window = max(self.min_window, int(rate * self.window_s))
        if backlog < window and senders:
            created = await self._fill(c, senders, window - backlog, now)
        if await self._failure_tripped(c):
            return created
        if created == 0 and backlog == 0 and not await store.pending_left(self.pool, c["id"]):
            await self._set_status(c, transition(c["status"], "complete"),
                                   extra=", completed_at = now()")
        await self._progress(c)
        return created

    async def _sender_pool(self, c: dict[str, Any]) -> list[dict[str, Any]]:
        cached = self._senders.get(c["id"])
        if cached and cached[0] > self.clock():
            return cached[1]
        rows = await self.pool.fetch(
            "SELECT id, address, mps FROM senders WHERE id = ANY($1::uuid[]) ORDER BY id",
            c["sender_ids"])
        senders = [dict(r) for r in rows]
        self._senders[c["id"]] = (self.clock() + 10.0, senders)
        return senders

    async def _fill(self, c: dict[str, Any], senders: list[dict[str, Any]], room: int,
                    now: datetime) -> int:
        window = SendWindow(c["window_start"], c["window_end"])
        template = parse(c["body"] or "", field="body")
        by_id = {str(s["id"]): s for s in senders}
        sender_ids = list(by_id)
        email = c["channel"] == "email"
        async with self.pool.acquire() as conn, conn.transaction():
            # Share-lock the campaign: a pause or cancel (which lock it for update) waits for
            # this fill to commit and then takes its messages back, or this fill sees it.
            status = await conn.fetchval(
                "SELECT status FROM campaigns WHERE id = $1 FOR SHARE", c["id"])
            if status != "running":
                return 0
            due = await store.claim_due(conn, c["id"], self.owner, min(room, self.claim_batch),
                                        self.lease_s, _address_channel(c["channel"]))
            deferred: list[tuple[UUID, datetime]] = []
            skipped: list[tuple[UUID, str]] = []
            messages: list[dict[str, Any]] = []
            for r in due:
                to = r["email"] if email else r["phone"]
                if not to:
                    skipped.append((r["contact_id"], "no_email" if email else "no_phone"))
                    continue
                if r["suppressed"]:  # opted out since launch
                    skipped.append((r["contact_id"], "suppressed"))
                    continue
                if c["channel"] != "email":
                    tz = contact_timezone(r["timezone"], r["phone"], c["sa_timezone"])
                    if not window.allows(now, tz):
                        deferred.append((r["contact_id"], window.next_open(now, tz)))
                        continue
                variables = {"first_name": r["first_name"], "last_name": r["last_name"],
                             "phone": r["phone"], "email": r["email"],
                             "custom": r["custom_fields"] or {}}
                body = template.render(variables).text
                seg = count_segments(body) if c["channel"] in ("sms", "mms") else None
                sender = by_id[choose_sender(str(r["contact_id"]), sender_ids)]
                messages.append({
                    "id": message_id_for(c["id"], r["contact_id"]),
                    "contact_id": r["contact_id"], "sender_id": sender["id"], "to_address": to,
                    "body": body, "segments": seg.segments if seg else 1,
                    "encoding": seg.encoding if seg else None})
            await store.defer(conn, c["id"], self.owner, deferred)
            await store.skip(conn, c["id"], self.owner, skipped)
            slot = await conn.fetchval("SELECT slot FROM sub_accounts WHERE id = $1",
                                       c["sub_account_id"])
            return await store.create_messages(conn, c, self.owner, messages, slot)

    async def _failure_tripped(self, c: dict[str, Any]) -> bool:
        recent = await store.recent_outcomes(self.pool, c["id"], 200)
        window = FailureWindow(size=200, threshold=float(c["failure_threshold"]))
        errors: Counter[str] = Counter()
        for r in reversed(recent):
            ok = r["status"] not in ("failed", "undelivered")
            window.record(ok)
            if not ok and r["error_code"]:
                errors[r["error_code"]] += 1
        if not window.tripped():
            return False
        reason = window.reason(errors)
        async with self.pool.acquire() as conn, conn.transaction():
            await store.unqueue(conn, c["id"])
        await self._set_status(c, transition(c["status"], "auto_pause"), paused_reason=reason)
        log.warning("campaign paused automatically", extra={"campaign_id": str(c["id"]),
                                                             "reason": reason})
        return True

    async def _set_status(self, c: dict[str, Any], status: str, *, paused_reason: str | None = None,
                          extra: str = "") -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            row = await store.set_status(conn, c["id"], str(status), paused_reason=paused_reason,
                                         extra=extra)
            written = await events.append(conn, [events.PendingEvent(
                c["sub_account_id"], "campaign.updated", row, f"campaign:{c['id']}")])
        await events.publish(self.redis, written)
        c["status"] = str(status)

    async def _progress(self, c: dict[str, Any]) -> None:
        """About one `campaign.progress` event a second per campaign, with the counts."""
        last = self._last_progress.get(c["id"], 0.0)
        if self.clock() - last < self.progress_every_s:
            return
        self._last_progress[c["id"]] = self.clock()
        counts = await store.counts(self.pool, c["id"])
        async with self.pool.acquire() as conn, conn.transaction():
            written = await events.append(conn, [events.PendingEvent(
                c["sub_account_id"], "campaign.progress",
                {"id": str(c["id"]), "status": c["status"], "counts": counts,
                 "recipients_total": c["recipients_total"]},
                f"campaign:{c['id']}")])
        await events.publish(self.redis, written)

    async def run(self, stop: asyncio.Event, interval_s: float = 0.2) -> None:
        while not stop.is_set():
            try:
                created = await self.tick()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("scheduler tick error; retrying", extra={
                    "owner": self.owner, "error": f"{type(exc).__name__}: {exc}"})
                created = 0
                await asyncio.sleep(1.0)
            if created == 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), interval_s)
