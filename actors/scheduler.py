"""A Scheduler shard: runs the campaign state machines of every sub-account whose slot it
owns. Plain asyncio state; `actors/ray_api.py` makes it a Ray actor.

Each tick keeps, for every running campaign, a bounded window of messages ahead of the
senders (so memory and the database's queue stay flat whatever the audience size): it claims
due recipients (row locks, no write), defers those whose local sending window is closed, or
closes before the senders could reach them, to the moment it opens, renders their bodies,
picks a sticky sender, and creates their messages in one transaction, each with the instant
its window closes: the Sender shard gives back what has not left by then, and it comes here
again to wait for the next opening.
A tick is set-based: a few statements for all the shard's campaigns together (read them with
their backlogs, fill, count, complete, report), not a few per campaign, so ten thousand
small campaigns cost about what one large one does; campaigns that only wait for their
recipients' windows are read every `full_every_s`, not every tick.
With a `HandOff` (the Ray shell gives one), each message is created already leased to the
Sender shard that sends it, and its id is handed to that shard once the transaction commits:
the shard adopts it without another write. Without one, messages are created unleased and
the Sender shards claim them. Either way PostgreSQL holds the truth: a hand-off that never
arrives costs time (the lease expires and the shard claims the message), never a message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections import Counter, defaultdict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import redis.asyncio as aioredis

from actors.loops import round_failed
from hub import events
from hub.campaigns import (
    EMPTY_MESSAGE,
    UNANSWERED_CALLS,
    FailureWindow,
    empty_part,
    transition,
    window_closes,
)
from hub.errors import ValidationFailed
from hub.segments import count_segments
from hub.sender_pool import choose_weighted
from hub.store import campaigns as store
from hub.store import sending as send_store
from hub.templates import merge_variables, parse
from hub.timezones import SendWindow, contact_timezone

log = logging.getLogger(__name__)
NAMESPACE = uuid.UUID("6f1c7a52-5b0e-4d5e-9a57-1c2f9e1d3b10")
#: Recipients a campaign's counts may cover per second of the scheduler's time.
COUNT_ROWS_PER_S = 100_000
#: A campaign pauses itself when its failure threshold is reached among the last this many
#: messages its run sent or tried.
FAILURE_WINDOW = 200


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


def nominal_rate(c: dict[str, Any], senders: list[dict[str, Any]]) -> float:
    """Messages a second the campaign's senders may send at most: their MPS, capped by the
    campaign's rate cap."""
    nominal = sum(s["mps"] for s in senders) if senders else 1.0
    return min(nominal, c["rate_cap"]) if c["rate_cap"] else nominal


def record_counts(window: FailureWindow, ok: int, failed: int) -> None:
    """Outcomes known only as counts since the last look: spread evenly, so the window's
    tail holds the same share of failures as they came in."""
    total = ok + failed
    for i in range(max(0, total - window.size), total):
        window.record((i + 1) * failed // total == i * failed // total)


@dataclass(frozen=True)
class HandOff:
    """How new campaign messages reach their Sender shards."""

    #: (channel, slot) -> the lease owner of the Sender shard that sends it.
    owner: Callable[[str, int], str]
    #: {lease owner: lane rows (`store.sending.lane_row`)}: hand the messages to those shards
    #: (after the commit); returns the owners that could not be reached.
    send: Callable[[dict[str, list[dict[str, Any]]]], Awaitable[list[str]]]
    #: Messages a Sender shard's lanes hold at most: a campaign's window stays within it,
    #: so what is handed off fits (a shard gives back what does not).
    room: int


class _Plan:
    """What a fill needs of one campaign to turn its claimed recipients into messages: its
    sending window, parsed templates (body, subject, HTML, the voice script's words), sender
    pool and the rate they send at most."""

    #: The voice script's fields that are words to say: rendered as the body is.
    VOICE_TEXT = ("say", "voicemail_say")

    def __init__(self, c: dict[str, Any], senders: list[dict[str, Any]]) -> None:
        self.c = c
        self.window = SendWindow(c["window_start"], c["window_end"])
        self.template = parse(c["body"] or "", field="body")
        self.subject = parse(c["subject"], field="subject") if c["subject"] else None
        self.html = parse(c["html"], field="html") if c["html"] else None
        voice = c["voice"] or {}
        self.voice = {k: parse(voice[k], field=f"voice.{k}")
                      for k in self.VOICE_TEXT if voice.get(k)}
        self.senders = {str(s["id"]): s for s in senders}
        #: Each sender's share of the contacts is its share of the pool's throughput, so a
        #: long code beside a toll-free number does not hold half the audience back.
        self.weights = [(sid, float(s["mps"])) for sid, s in self.senders.items()]
        self.rate = nominal_rate(c, senders)
        self.conv_channel = "sms" if c["channel"] in ("sms", "mms") else c["channel"]

    def message(self, r: dict[str, Any], to: str) -> dict[str, Any]:
        c = self.c
        variables = merge_variables(r)
        body = self.template.render(variables).text
        subject = self.subject.render(variables).text if self.subject else c["subject"]
        html = self.html.render(variables).text if self.html else c["html"]
        voice = {**c["voice"], **{k: t.render(variables).text
                                  for k, t in self.voice.items()}} if c["voice"] else None
        seg = count_segments(body) if c["channel"] in ("sms", "mms") else None
        sender = self.senders[choose_weighted(str(r["contact_id"]), self.weights)]
        return {"id": message_id_for(c["id"], r["contact_id"]), "campaign_id": c["id"],
                "priority": "bulk",
                "sub_account_id": c["sub_account_id"], "contact_id": r["contact_id"],
                "conv_channel": self.conv_channel, "channel": c["channel"],
                "sender_id": sender["id"], "provider_account_id": sender["provider_account_id"],
                "provider": sender["provider"],
                "from_address": sender["address"], "to_address": to, "subject": subject,
                "html": html, "body": body, "voice": voice, "segments": seg.segments if seg else 1,
                "encoding": seg.encoding if seg else None, "slot": c["slot"]}


class SchedulerCore:
    def __init__(self, owner: str, slots: tuple[int, ...], pool: asyncpg.Pool,
                 redis: aioredis.Redis, *, window_s: float = 5.0, min_window: int = 2_000,
                 claim_batch: int = 1_000, fill_rows: int = 5_000, lease_s: float = 60.0,
                 progress_every_s: float = 1.0, full_every_s: float = 10.0,
                 hand_off: HandOff | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.owner, self.slots = owner, slots
        self.hand_off = hand_off
        self.pool, self.redis = pool, redis
        self.window_s, self.min_window = window_s, min_window
        #: Recipients claimed per campaign per tick, and per fill transaction in all.
        self.claim_batch, self.fill_rows = claim_batch, fill_rows
        self.lease_s = lease_s  # of the messages created leased to a Sender shard
        self.progress_every_s = progress_every_s
        #: Idle campaigns (running, with recipients deferred to later and nothing queued,
        #: sending or due) are read only this often: their counts can change only by
        #: receipts, and ten thousand of them waiting for their windows then cost little.
        self.full_every_s = full_every_s
        self._full_at = -math.inf
        self.clock = clock
        self._last_progress: dict[UUID, float] = {}
        self._reported: dict[UUID, dict[str, int]] = {}  # counts in the last progress event
        self._senders: dict[UUID, tuple[float, list[dict[str, Any]]]] = {}
        self._drain: dict[UUID, Drain] = {}
        self._created: dict[UUID, int] = {}  # created since the campaign's last backlog count
        #: No campaign had a message outstanding or a recipient due at the last tick.
        self.idle = True
        # One pass at a time: a kick (launch, resume) racing the loop's own tick could read a
        # backlog of 0 while the other pass fills, and complete a campaign still sending.
        self._tick_lock = asyncio.Lock()

    async def tick(self) -> int:
        """One pass over the hosted campaigns; returns messages created."""
        async with self._tick_lock:
            return await self._tick()

    async def _tick(self) -> int:
        """A few statements for every campaign of the shard together, whatever their number:
        read them with their backlogs, start those whose time came, fill the windows of
        those with room, count those whose progress is due, complete those with nothing
        left, and report progress."""
        now = datetime.now(UTC)
        full = self.clock() - self._full_at >= self.full_every_s
        campaigns = await store.active_for_slots(self.pool, list(self.slots),
                                                 self.claim_batch, idle_too=full)
        if full:  # every live campaign, idle ones too: count them, forget the others
            self._full_at = self.clock()
            for gone in set(self._drain) - {c["id"] for c in campaigns}:
                self._forget(gone)  # paused, canceled or finished: a resume starts afresh
        await self._start([c for c in campaigns if c["status"] == "scheduled"
                           and not (c["start_at"] and c["start_at"] > now)])
        running = [c for c in campaigns if c["status"] == "running"]
        await self._load_senders(running)
        wants: list[tuple[dict[str, Any], int]] = []
        for c in running:
            drain = self._drain.setdefault(c["id"], Drain())
            drain.observe(self.clock(), c["backlog"], self._created.pop(c["id"], 0))
            senders = self._senders[c["id"]][1]
            window = window_size(drain.rate(), nominal_rate(c, senders), self.window_s,
                                 self.min_window)
            if self.hand_off is not None:
                window = min(window, self.hand_off.room)
            if c["backlog"] < window and senders and c["due"]:
                wants.append((c, min(window - c["backlog"], c["due"], self.claim_batch)))
        created = await self._fill(wants, now)
        self._created.update(created)
        self.idle = not any(c["backlog"] or c["due"] for c in running)
        due = [c for c in running if self._counts_due(c)]
        counts = await store.counts_many(self.pool, [c["id"] for c in due]) if due else {}
        outcomes = await store.recent_outcomes(
            self.pool, [(c["id"], c["updated_at"]) for c in due], FAILURE_WINDOW) if due else {}
        paused = {c["id"] for c in due
                  if await self._failure_tripped(c, *outcomes.get(c["id"], (0, 0)))}
        finished = await self._complete([
            c for c in running if c["id"] not in paused and not created.get(c["id"])
            and c["backlog"] == 0 and not c["pending_left"]])
        if finished:  # the final figures, once
            counts.update(await store.counts_many(self.pool, [c["id"] for c in finished]))
        report = {c["id"]: c for c in due + finished if c["id"] not in paused}
        await self._progress([(c, counts.get(i, {})) for i, c in report.items()],
                             final={c["id"] for c in finished})
        return sum(created.values())

    def _counts_due(self, c: dict[str, Any]) -> bool:
        """Whether the campaign's counts are due: counting is a pass over the campaign's
        rows, so past `COUNT_ROWS_PER_S` recipients it happens less often than
        `progress_every_s` (every 10 s for a million): about constant work."""
        last = self._last_progress.get(c["id"], -math.inf)
        every = max(self.progress_every_s, c["recipients_total"] / COUNT_ROWS_PER_S)
        if self.clock() - last < every:
            return False
        self._last_progress[c["id"]] = self.clock()
        return True

    def _forget(self, campaign_id: UUID) -> None:
        """Drop what this shard tracks for a campaign that stopped (or left its slots)."""
        self._drain.pop(campaign_id, None)
        self._created.pop(campaign_id, None)
        self._last_progress.pop(campaign_id, None)
        self._reported.pop(campaign_id, None)
        self._senders.pop(campaign_id, None)

    async def _load_senders(self, campaigns: list[dict[str, Any]]) -> None:
        """Each campaign's sender pool, re-read every 10 s: one query for all that are due."""
        stale = [c for c in campaigns
                 if (cached := self._senders.get(c["id"])) is None or cached[0] <= self.clock()]
        if not stale:
            return
        rows = await self.pool.fetch(
            """SELECT s.id, s.provider_account_id, p.provider, s.address, s.mps
               FROM senders s JOIN provider_accounts p ON p.id = s.provider_account_id
               WHERE s.id = ANY($1::uuid[])""",
            list({s for c in stale for s in c["sender_ids"]}))
        by_id = {r["id"]: dict(r) for r in rows}
        for c in stale:
            self._senders[c["id"]] = (self.clock() + 10.0, [
                by_id[s] for s in sorted(set(c["sender_ids"])) if s in by_id])

    async def _fill(self, wants: list[tuple[dict[str, Any], int]],
                    now: datetime) -> dict[UUID, int]:
        """Create the messages of every campaign with room, up to `fill_rows` recipients a
        transaction; returns the messages created per campaign."""
        created: dict[UUID, int] = {}
        chunk: list[tuple[dict[str, Any], int]] = []
        rows = 0
        for i, (c, n) in enumerate(wants):
            chunk.append((c, n))
            rows += n
            if rows >= self.fill_rows or i == len(wants) - 1:
                created.update(await self._fill_chunk(chunk, now))
                chunk, rows = [], 0
        return created

    async def _fill_chunk(self, wants: list[tuple[dict[str, Any], int]],
                          now: datetime) -> dict[UUID, int]:
        """One transaction: claim the campaigns' due recipients, defer those whose local
        sending window is closed, or closes before the senders could reach them at their
        full rate behind what is queued already, skip those without an address or opted out
        since launch, render the rest and create their messages, each with the instant its
        window closes (the Sender shard gives back what has not left by then); then hand the
        messages created to their Sender shards."""
        plans: dict[UUID, _Plan] = {}
        for c, _ in wants:
            try:
                plans[c["id"]] = _Plan(c, self._senders[c["id"]][1])
            except ValidationFailed as exc:  # valid at its creation; a later parser disagrees
                await self._auto_pause(c, f"its template cannot be rendered ({exc.detail}); "
                                          "create the campaign again with a valid template")
        wants = [(c, n) for c, n in wants if c["id"] in plans]
        if not wants:
            return {}
        by_campaign = {c["id"]: c for c, _ in wants}
        hand_off = self.hand_off
        async with self.pool.acquire() as conn, conn.transaction():
            running = await store.lock_running(conn, list(by_campaign))
            due = await store.claim_due(conn, [
                (c["id"], n, _address_channel(c["channel"])) for c, n in wants
                if c["id"] in running])
            deferred: list[tuple[UUID, UUID, datetime]] = []
            skipped: list[tuple[UUID, UUID, str]] = []
            messages: list[dict[str, Any]] = []
            # What is queued before each campaign's next message, in rate-limit tokens: a
            # text costs its segments (a sender's MPS counts segments), anything else one.
            ahead = Counter({c["id"]: c["backlog_cost"] for c, _ in wants})
            for r in due:
                c = by_campaign[r["campaign_id"]]
                plan = plans[c["id"]]
                email = c["channel"] == "email"
                to = r["email"] if email else r["phone"]
                if not to:
                    skipped.append((c["id"], r["contact_id"], "no_email" if email else "no_phone"))
                    continue
                if r["suppressed"]:  # opted out since launch
                    skipped.append((c["id"], r["contact_id"], "suppressed"))
                    continue
                m = plan.message(r, to)
                # A call's audio is in its script already (voice_script at create).
                if empty_part(m["channel"], m["body"], m["html"], (), m["voice"]) is not None:
                    skipped.append((c["id"], r["contact_id"], EMPTY_MESSAGE))
                    continue
                closes = None
                if not email:
                    tz = contact_timezone(r["timezone"], r["phone"], c["sa_timezone"])
                    closes = (window_closes(plan.window, now, tz)
                              if plan.window.allows(now, tz) else now)
                    turn = now + timedelta(seconds=(ahead[c["id"]] + m["segments"]) / plan.rate)
                    if closes is not None and closes <= turn:  # closed now, or before its turn
                        deferred.append((c["id"], r["contact_id"],
                                         plan.window.next_open(closes, tz)))
                        continue
                ahead[c["id"]] += m["segments"]
                m["send_until"] = closes
                m["lease_owner"] = hand_off.owner(m["channel"], m["slot"]) if hand_off else None
                messages.append(m)
            await store.defer(conn, deferred)
            await store.skip(conn, skipped)
            created = await store.create_messages(conn, messages, self.lease_s)
        made = {m["id"]: m for m in messages}
        if hand_off is not None and created:
            # Each shard gets the lane columns of its messages, so it reads none back.
            by_owner: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for row in created:
                m = made[row["id"]]
                plan = plans[m["campaign_id"]]
                by_owner[row["lease_owner"]].append(send_store.lane_row(
                    m, plan.senders[str(m["sender_id"])], row["lease_expires_at"],
                    plan.c["rate_cap"]))
            try:
                # Leases of shards not reached go back, so claims take the messages at once.
                for owner in await hand_off.send(by_owner):
                    await send_store.release(self.pool, owner,
                                             [r["id"] for r in by_owner[owner]])
            except Exception as exc:  # the leases expire and the shards claim them
                log.warning("hand-off to sender shards failed", extra={
                    "owner": self.owner, "error": f"{type(exc).__name__}: {exc}"})
        return dict(Counter(made[row["id"]]["campaign_id"] for row in created))

    async def _failure_tripped(self, c: dict[str, Any], ok: int, failed: int) -> bool:
        """Pause the campaign, naming its top error, when too many of the last messages of
        its current run failed (`ok` and `failed` among them: `store.recent_outcomes`). A
        call nobody took did not count as failed, so it is not named as the top error."""
        window = FailureWindow(size=FAILURE_WINDOW, threshold=float(c["failure_threshold"]))
        record_counts(window, ok, failed)
        if not window.tripped():
            return False
        errors = {str(e["error_code"]): int(e["n"])
                  for e in await store.top_errors(self.pool, c["id"])
                  if e["error_code"] not in UNANSWERED_CALLS}
        await self._auto_pause(c, window.reason(errors))
        return True

    async def _auto_pause(self, c: dict[str, Any], reason: str) -> None:
        """Pause a running campaign on the scheduler's own judgement, saying why."""
        status = transition(c["status"], "auto_pause")
        async with self.pool.acquire() as conn, conn.transaction():
            await store.unqueue(conn, c["id"])
            row = await store.set_status(conn, c["id"], str(status), paused_reason=reason)
            written = await self._updated(conn, [row])
        await events.publish(self.redis, written)
        self._forget(c["id"])
        log.warning("campaign paused automatically", extra={
            "sub_account_id": str(c["sub_account_id"]), "campaign_id": str(c["id"]),
            "reason": reason})

    async def _start(self, campaigns: list[dict[str, Any]]) -> None:
        """Scheduled campaigns whose start time came begin running."""
        if not campaigns:
            return
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await store.start(conn, [c["id"] for c in campaigns],
                                     str(transition("scheduled", "start")))
            written = await self._updated(conn, rows)
        await events.publish(self.redis, written)
        started = {r["id"] for r in rows}
        for c in campaigns:
            if c["id"] in started:
                c["status"] = "running"

    async def _complete(self, campaigns: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Complete the campaigns with nothing pending, queued or sending (checked again by
        the update itself); returns those completed."""
        if not campaigns:
            return []
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await store.complete(conn, [c["id"] for c in campaigns],
                                        str(transition("running", "complete")))
            written = await self._updated(conn, rows)
        await events.publish(self.redis, written)
        done = {r["id"] for r in rows}
        finished = [c for c in campaigns if c["id"] in done]
        for c in finished:
            c["status"] = str(transition("running", "complete"))
        return finished

    @staticmethod
    async def _updated(conn: asyncpg.Connection,
                       rows: list[dict[str, Any]]) -> list[events.Event]:
        """`campaign.updated` for each campaign whose status changed, written in `conn`'s
        transaction; the caller publishes them once it commits."""
        return await events.append(conn, [events.PendingEvent(
            r["sub_account_id"], "campaign.updated", r, f"campaign:{r['id']}") for r in rows])

    async def _progress(self, items: list[tuple[dict[str, Any], dict[str, int]]],
                        final: set[UUID]) -> None:
        """A `campaign.progress` event with the counts, for each campaign whose counts
        changed since its last one (at most about one a second), and the final figures of
        each campaign just completed: one transaction for all."""
        pending = []
        for c, counts in items:
            if counts == self._reported.get(c["id"]) and c["id"] not in final:
                continue
            self._reported[c["id"]] = counts
            pending.append(events.PendingEvent(
                c["sub_account_id"], "campaign.progress",
                {"id": str(c["id"]), "status": c["status"], "counts": counts,
                 "recipients_total": c["recipients_total"]}, f"campaign:{c['id']}"))
        if not pending:
            return
        async with self.pool.acquire() as conn, conn.transaction():
            written = await events.append(conn, pending)
        await events.publish(self.redis, written)

    async def run(self, stop: asyncio.Event, interval_s: float = 0.2,
                  idle_interval_s: float = 1.0) -> None:
        """Tick until `stop`: at once again while ticks create messages, every `interval_s`
        while messages are outstanding (to refill windows and see campaigns finish), every
        `idle_interval_s` while nothing is (campaigns waiting for their recipients' windows
        or start time cost a tick a second; a launch or resume kicks a tick at once)."""
        while not stop.is_set():
            try:
                created = await self.tick()
            except Exception as exc:
                await round_failed(log, "scheduler tick", self.owner, exc)
                created = 0
            if created == 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(),
                                           idle_interval_s if self.idle else interval_s)
