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
import math
import time
import uuid
from collections import deque
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
#: Recipients a campaign's counts may cover per second of the scheduler's time.
COUNT_ROWS_PER_S = 100_000


def _address_channel(channel: str) -> str:
    return {"email": "email", "voice": "voice"}.get(channel, "sms")


def message_id_for(campaign_id: UUID, contact_id: UUID) -> UUID:
    """The one message a campaign may send a contact: derived, so retries collide."""
    return uuid.uuid5(NAMESPACE, f"{campaign_id}:{contact_id}")


class Drain:
    """How fast a campaign's queued messages leave (are sent, fail or are taken back), over
    the last `span_s` seconds: what the senders achieve, whatever their nominal MPS."""

    def __init__(self, span_s: float = 5.0) -> None:
        self.span_s = span_s
        self._created = 0  # messages this scheduler created for the campaign
        self._base: int | None = None  # backlog when first seen (created before a restart)
        self._samples: deque[tuple[float, int]] = deque()  # (time, drained so far)

    def observe(self, now: float, backlog: int, created: int) -> None:
        """The backlog just counted, and the messages created since the last call."""
        if self._base is None:
            self._base = backlog
        self._created += created
        self._samples.append((now, self._base + self._created - backlog))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.span_s:
            self._samples.popleft()

    def rate(self) -> float | None:
        """Messages per second, or None until a second of history exists."""
        if len(self._samples) < 2:
            return None
        (t0, d0), (t1, d1) = self._samples[0], self._samples[-1]
        return max(0.0, d1 - d0) / (t1 - t0) if t1 - t0 >= 1.0 else None


def window_size(achieved: float | None, nominal: float, window_s: float,
                min_window: int) -> int:
    """Messages to keep queued ahead of the senders: `window_s` seconds at the rate they
    achieve (twice that, so the window is never what holds them back), never below
    `min_window`, and not above `window_s` at their nominal rate. The queue, and so each
    message's wait in it and the work a pause undoes, stays a few seconds long. Until a rate
    is known it starts at `min_window`."""
    rate = 0.0 if achieved is None else min(nominal, 2.0 * achieved)
    return max(min_window, int(rate * window_s))


def record_counts(window: FailureWindow, ok: int, failed: int) -> None:
    """Outcomes known only as counts since the last look: spread evenly, so the window's
    tail holds the same share of failures as they came in."""
    total = ok + failed
    for i in range(max(0, total - window.size), total):
        window.record((i + 1) * failed // total == i * failed // total)


class SchedulerCore:
    def __init__(self, owner: str, slots: tuple[int, ...], pool: asyncpg.Pool,
                 redis: aioredis.Redis, *, window_s: float = 5.0, min_window: int = 2_000,
                 claim_batch: int = 1_000, lease_s: float = 60.0,
                 progress_every_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.owner, self.slots = owner, slots
        self.pool, self.redis = pool, redis
        self.window_s, self.min_window = window_s, min_window
        self.claim_batch, self.lease_s = claim_batch, lease_s
        self.progress_every_s = progress_every_s
        self.clock = clock
        self._last_progress: dict[UUID, float] = {}
        self._senders: dict[UUID, tuple[float, list[dict[str, Any]]]] = {}
        self._drain: dict[UUID, Drain] = {}
        self._created: dict[UUID, int] = {}  # created since the campaign's last backlog count
        self._failures: dict[UUID, tuple[FailureWindow, int, int]] = {}  # window, ok, failed
        # One pass at a time: a kick (launch, resume) racing the loop's own tick could read a
        # backlog of 0 while the other pass fills, and complete a campaign still sending.
        self._tick_lock = asyncio.Lock()

    async def tick(self) -> int:
        """One pass over the hosted campaigns; returns messages created."""
        async with self._tick_lock:
            return await self._tick()

    async def _tick(self) -> int:
        created = 0
        campaigns = await store.active_for_slots(self.pool, list(self.slots))
        for gone in set(self._drain) - {c["id"] for c in campaigns}:
            self._forget(gone)  # paused, canceled or finished: a resume starts afresh
        for campaign in campaigns:
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
        drain = self._drain.setdefault(c["id"], Drain())
        drain.observe(self.clock(), backlog, self._created.pop(c["id"], 0))
        senders = await self._sender_pool(c)
        nominal = sum(s["mps"] for s in senders) if senders else 1.0
        if c["rate_cap"]:
            nominal = min(nominal, c["rate_cap"])
        window = window_size(drain.rate(), nominal, self.window_s, self.min_window)
        if backlog < window and senders:
            created = await self._fill(c, senders, window - backlog, now)
            self._created[c["id"]] = created
        counts = await self._counts_due(c)
        if counts is not None and await self._failure_tripped(c, counts):
            return created
        if created == 0 and backlog == 0 and not await store.pending_left(self.pool, c["id"]):
            await self._set_status(c, transition(c["status"], "complete"),
                                   extra=", completed_at = now()")
            self._forget(c["id"])
            counts = await store.counts(self.pool, c["id"])  # the final figures, once
        if counts is not None:
            await self._progress(c, counts)
        return created

    async def _counts_due(self, c: dict[str, Any]) -> dict[str, int] | None:
        """The campaign's counts, else None if they were taken too recently. Counting is a
        pass over the campaign's rows, so past `COUNT_ROWS_PER_S` recipients it happens less
        often than `progress_every_s` (every 10 s for a million): about constant work."""
        last = self._last_progress.get(c["id"], -math.inf)
        every = max(self.progress_every_s, c["recipients_total"] / COUNT_ROWS_PER_S)
        if self.clock() - last < every:
            return None
        self._last_progress[c["id"]] = self.clock()
        return await store.counts(self.pool, c["id"])

    def _forget(self, campaign_id: UUID) -> None:
        """Drop what this shard tracks for a campaign that stopped (or left its slots)."""
        self._drain.pop(campaign_id, None)
        self._created.pop(campaign_id, None)
        self._failures.pop(campaign_id, None)
        self._last_progress.pop(campaign_id, None)
        self._senders.pop(campaign_id, None)

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

    async def _failure_tripped(self, c: dict[str, Any], counts: dict[str, int]) -> bool:
        """Feed the outcomes since the last look into the campaign's failure window; pause
        the campaign, naming its top error, once the window trips."""
        ok = sum(counts.get(s, 0) for s in ("sent", "delivered", "read"))
        failed = sum(counts.get(s, 0) for s in ("failed", "undelivered"))
        seen = self._failures.get(c["id"])
        if seen is None:  # first look (or after a restart): what came before is history
            window = FailureWindow(size=200, threshold=float(c["failure_threshold"]))
            self._failures[c["id"]] = (window, ok, failed)
            if ok + failed > window.size:
                return False
            seen = (window, 0, 0)
        window, ok_before, failed_before = seen
        new_failed = max(0, failed - failed_before)
        record_counts(window, max(0, (ok + failed) - (ok_before + failed_before) - new_failed),
                      new_failed)
        self._failures[c["id"]] = (window, ok, failed)
        if not window.tripped():
            return False
        errors = {str(e["error_code"]): int(e["n"])
                  for e in await store.top_errors(self.pool, c["id"])}
        reason = window.reason(errors)
        async with self.pool.acquire() as conn, conn.transaction():
            await store.unqueue(conn, c["id"])
        await self._set_status(c, transition(c["status"], "auto_pause"), paused_reason=reason)
        self._forget(c["id"])
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

    async def _progress(self, c: dict[str, Any], counts: dict[str, int]) -> None:
        """A `campaign.progress` event with the counts (about one a second per campaign)."""
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
