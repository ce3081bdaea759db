"""A Sender shard: hosts the send lanes of every sub-account whose slot it owns, for its
channels. Plain asyncio state; `actors/ray_api.py` makes it a Ray actor.

Work arrives two ways: `submit` (the hand-off of messages just created, most of them already
leased to this shard: the gateway's sends and the scheduler's campaign messages) and `claim`
(leasing queued messages from PostgreSQL: what was created unleased or given back, and
anything whose lease expired, such as a hand-off that never arrived). Either way a message
is sent only after `begin_sending` moved it from `queued` to `sending` under this shard's
lease, so duplicates are impossible by construction.

A campaign message leaves only inside its contact's sending window: one still waiting when
the window closes (`send_until`), in the lanes or at its departure time, is given back to its
campaign (`store.give_back`), whose scheduler sends it when the window opens again. One the
provider refuses for the account's setup (credentials, sender) is given back the same way and
pauses its campaign, saying what to fix: its recipient waits for the resume instead of
failing with every other one of the campaign. A provider account that cannot be reached
backs off as a whole (`_back_off_unreachable`): its messages wait, queued, saying why, and
leave once it answers. A relay's hard bounce (SMTP 5.1.1) suppresses the address.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import redis.asyncio as aioredis

from actors.lanes import Lanes, Outbound
from actors.limiter import LimitKey, NestedLimiter
from actors.loops import round_failed
from actors.metrics import Metrics
from channels.base import (
    ChannelAdapter,
    ErrorKind,
    OutboundMessage,
    ProviderCredentials,
    SendResult,
    VoiceScript,
)
from channels.error_hints import endpoint, hint_for
from channels.smtp import unknown_mailbox
from hub import events
from hub.campaigns import transition
from hub.compliance import unsubscribe_url
from hub.compliance_actions import suppress_bounced
from hub.context import Tx
from hub.crypto import SecretBox
from hub.retry import backoff
from hub.status import Status, rank
from hub.store import campaigns as campaign_store
from hub.store import sending as store

log = logging.getLogger(__name__)


#: Refusals the operator can act on (an account's setup, a provider's policy or outage);
#: a bad or opted-out recipient is recorded on its message and is its sender's business.
_OPERATOR_KINDS = (ErrorKind.CONFIG_INVALID, ErrorKind.REJECTED, ErrorKind.IN_DOUBT)


def _log_refused(results: list[tuple[Mapping[str, Any], SendResult]]) -> None:
    """One warning per sub-account, campaign, provider and error code of a batch, with
    what to do where the code says it. No addresses, bodies or credentials."""
    groups: dict[tuple[Any, ...], list[str]] = defaultdict(list)
    for row, res in results:
        err = res.error
        if err is not None and err.kind in _OPERATOR_KINDS:
            groups[(row["sub_account_id"], row["campaign_id"], row["provider"], err.kind,
                    err.provider_code, err.message[:200])].append(str(row["id"]))
    for (sa, campaign, provider, kind, code, message), ids in groups.items():
        given_back = kind == ErrorKind.CONFIG_INVALID and campaign is not None
        log.warning("the provider refused sends", extra={
            "sub_account_id": str(sa),
            **({"campaign_id": str(campaign)} if campaign is not None else {}),
            **({"message_id": ids[0]} if len(ids) == 1 else {}), "count": len(ids),
            "provider": provider, "code": code or kind.value, "kind": kind.value,
            "error": message,
            "outcome": "given back to the paused campaign" if given_back else (
                "in doubt; the reconciler asks the provider" if kind == ErrorKind.IN_DOUBT
                else "failed"),
            **({"hint": h} if (h := hint_for(provider, code, kind)) else {})})


@dataclass(frozen=True)
class SenderConfig:
    owner: str  # the shard's lease owner (`actors.ring.sender_owner`), kept across restarts
    channels: tuple[str, ...]  # message channels this shard sends ("sms", "mms", ...)
    slots: tuple[int, ...]  # sub-account slots this shard owns
    public_url: str  # where providers post callbacks
    lease_s: float = 60.0
    claim_batch: int = 1_000
    max_backlog: int = 5_000  # messages held in lanes at most (memory does not grow with N)
    send_batch: int = 200
    #: Messages taken from the lanes and not yet recorded: committed `sending`, waiting for
    #: their departure time, at the provider, or being recorded. It bounds the queue in front
    #: of the adapter's connection pool. Bulk never uses the last `urgent_reserve` of it, so
    #: a reply or a transactional message does not wait for a bulk batch to finish.
    max_in_flight: int = 512
    urgent_reserve: int = 64
    #: Provider requests bulk messages may have open at once. The adapters allow 64 (their
    #: connection pool); the rest stay free, so a reply never queues behind bulk requests.
    bulk_requests: int = 60
    #: Tokens that fall due within this horizon are taken now and each message leaves at its
    #: own time: full batches, and every sender's rate kept exactly (`Lanes.take_timed`). A
    #: message is taken at least `ahead_s - pump_every_s` before it is due, which is the time
    #: the `sending` commit has to finish in: a commit slower than that sends it late, and
    #: late messages bunch up at the carrier.
    ahead_s: float = 0.1
    #: ...and it grows to twice the recent `sending` commit time (up to `max_ahead_s`) on a
    #: busy database, so commits keep finishing before their messages are due.
    max_ahead_s: float = 0.5
    #: While the lanes wait for tokens, pump at most this often so that each pump fills a
    #: batch (below `ahead_s`, so no token goes unused); new work still wakes the loop at once.
    pump_every_s: float = 0.02
    claim_interval_s: float = 0.25


#: How late a send may start and still keep its sender's schedule: the event loop's usual
#: wake-up delay. It lets a sender catch up by at most this much of its rate (5 messages at
#: 1,000 MPS, a fraction of one below 200), which the headroom below absorbs.
PACE_SLACK_S = 0.005

#: A request takes time to reach the provider: a campaign message leaves only if its window
#: (`send_until`) stays open at least this long after its request starts.
WINDOW_MARGIN_S = 0.5

#: The longest a provider account that cannot be reached waits between attempts: also the
#: longest its sends wait once its base URL is fixed.
UNREACHABLE_CAP_S = 30.0

#: Share of a sender's MPS the hub aims at: network jitter bunches requests on their way to
#: the carrier, and this headroom keeps the carrier's own one-second windows within the limit.
SENDER_HEADROOM = 0.98


def sender_burst(mps: float) -> float:
    """Carriers meter a number as a steady queue, and requests bunch on their way there, so a
    sender gets no burst beyond one message: measured at the carrier, a burst of mps/5 gave
    one-second windows of limit + burst + 3, a burst of one stays within the limit. Batches
    are filled by the horizon instead (`SenderConfig.ahead_s`): several of a number's
    tokens are taken at once, and each message still leaves at the time its token is due."""
    return 1.0


class SenderCore:
    def __init__(self, config: SenderConfig, pool: asyncpg.Pool, redis: aioredis.Redis,
                 box: SecretBox, adapters: Mapping[str, ChannelAdapter],
                 metrics: Metrics | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.pool, self.redis, self.box = pool, redis, box
        self.adapters = adapters  # by channel
        self.metrics = metrics or Metrics()
        self.clock = clock
        self.lanes = Lanes(ahead=config.ahead_s)
        self.limiter = NestedLimiter()
        self._wake = asyncio.Event()
        self._in_flight: set[asyncio.Task[None]] = set()
        self._in_flight_n = 0  # messages in the batches of `_in_flight`
        self._starved = False  # the last pump stopped at `max_in_flight`
        self._claim_full = False  # the last claim got all it asked for: more is waiting
        self._next_free: dict[LimitKey, float] = {}  # per sender: when it may send again
        self._bulk_requests = asyncio.Semaphore(config.bulk_requests)
        self._commit_s = 0.0  # recent `sending` commit time
        #: Decrypted credentials by provider account, with the account's `updated_at`: an
        #: update (a fixed token) is used by the next batch.
        self._creds: dict[UUID, tuple[datetime, ProviderCredentials]] = {}
        #: Provider accounts that could not be reached: the failures in a row (the back-off
        #: grows with them) and the last one's result, which sends during the back-off get.
        self._unreachable: dict[UUID, tuple[int, SendResult]] = {}
        self.sent_total = 0

    # --- intake ------------------------------------------------------------------------

    async def submit(self, messages: Sequence[str] | Sequence[Mapping[str, Any]]) -> int:
        """The hand-off (the gateway's sends, the scheduler's new messages): queue these
        messages now. A message comes as its id or, from a creator that has them (the
        gateway), as its lane columns (`store.lane_row`), which are not read back. Ids
        created already leased to this shard are only read; others are leased here. Either
        way only `begin_sending`, under this shard's lease, lets one leave. Bulk ones beyond
        the backlog bound are given back at once, so claims take them in order later;
        replies and transactional ones are always kept. Idempotent."""
        rows = [dict(m) for m in messages
                if not isinstance(m, str) and str(m["id"]) not in self.lanes]
        ids = [UUID(m) for m in messages if isinstance(m, str) and m not in self.lanes]
        config = self.config
        if ids:
            rows += await store.adopt(self.pool, config.owner, ids, config.lease_s)
        if not rows:
            return 0
        room = max(0, config.max_backlog - len(self.lanes))
        bulk = [r for r in rows if r["priority"] == "bulk"]
        if len(bulk) > room:
            extra = {r["id"] for r in bulk[room:]}
            await store.release(self.pool, config.owner, list(extra))
            rows = [r for r in rows if r["id"] not in extra]
        return self._enqueue(rows)

    async def claim(self) -> int:
        """Lease queued messages of our slots up to the backlog bound."""
        room = self.config.max_backlog - len(self.lanes)
        if room <= 0:
            return 0
        want = min(room, self.config.claim_batch)
        rows = await store.lease_queued(
            self.pool, self.config.owner, list(self.config.channels), list(self.config.slots),
            want, self.config.lease_s)
        self._claim_full = len(rows) == want
        return self._enqueue(rows)

    async def release_stale(self, *, own: bool) -> int:
        """Hand back expired leases of our slots, and with `own` (at start-up) what a previous
        incarnation of this shard held, so that claims take them in priority order again."""
        return await store.release_stale(self.pool, self.config.owner,
                                         list(self.config.channels), list(self.config.slots),
                                         own=own)

    def _path(self, row: Mapping[str, Any]) -> tuple[LimitKey, ...]:
        now = self.clock()
        path: list[LimitKey] = []
        if row["provider_account_id"] is not None:
            path.append(("provider", str(row["provider_account_id"])))
        path.append(("sub_account", str(row["sub_account_id"])))
        if row["sender_id"] is not None:
            key = ("sender", str(row["sender_id"]))
            mps = float(row["sender_mps"] or 1.0)
            current = self.limiter.limit(key)
            if current is None or current.rate != mps * SENDER_HEADROOM:
                self.limiter.configure(key, mps * SENDER_HEADROOM, sender_burst(mps), now=now)
                self.lanes.wake_all()
            path.append(key)
        if row["campaign_id"] is not None and row["campaign_rate"]:
            key = ("campaign", str(row["campaign_id"]))
            rate = float(row["campaign_rate"])
            if self.limiter.limit(key) is None:
                self.limiter.configure(key, rate, max(1.0, rate), now=now)
            path.append(key)
        return tuple(path)

    def _enqueue(self, rows: list[dict[str, Any]]) -> int:
        now = self.clock()
        wall = datetime.now(UTC)
        items = []
        for r in rows:
            delay = (r["not_before"] - wall).total_seconds() if r["not_before"] else 0.0
            lease_left = ((r["lease_expires_at"] - wall).total_seconds()
                          if r["lease_expires_at"] else 0.0)
            until = (now + (r["send_until"] - wall).total_seconds() - WINDOW_MARGIN_S
                     if r["send_until"] else math.inf)
            items.append(Outbound(
                message_id=str(r["id"]), sub_account_id=str(r["sub_account_id"]),
                priority=r["priority"], path=self._path(r),
                cost=max(1, int(r["segments"] or 1)) if r["channel"] in ("sms", "mms") else 1,
                not_before=now + max(0.0, delay), attempt=int(r["attempts"] or 0),
                campaign_id=str(r["campaign_id"]) if r["campaign_id"] else None,
                leased_at=now - max(0.0, self.config.lease_s - lease_left),
                send_until=until))
        added = self.lanes.push(items, now)
        if added:
            self._wake.set()
        return added

    def cancel(self, message_ids: Sequence[str]) -> list[str]:
        return self.lanes.cancel(message_ids)

    # --- sending -----------------------------------------------------------------------

    async def pump(self) -> int:
        """Start every message the limiter lets go within the horizon, in batches, up to
        `max_in_flight`; returns messages started."""
        started = 0
        config = self.config
        while True:
            room = config.max_in_flight - self._in_flight_n
            if not self.lanes.urgent:
                room -= config.urgent_reserve
            if room <= 0:
                self._starved = True
                break
            batch = self.lanes.take_timed(self.clock(), self.limiter,
                                          min(config.send_batch, room))
            if self.lanes.expired:
                expired, self.lanes.expired = self.lanes.expired, []
                self._track(self._give_back([i.message_id for i in expired]))
            if not batch:
                break
            started += len(batch)
            self._in_flight_n += len(batch)
            self._track(self._send(batch))
        return started

    def _track(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _give_back(self, ids: list[str]) -> None:
        """Messages whose window closed before their turn came: back to their campaigns.
        If that fails they stay queued under this shard's lease, which expires, and a claim
        brings them here again."""
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                await store.give_back(conn, self.config.owner, [UUID(i) for i in ids])
        except Exception as exc:
            log.warning("giving back messages past their window failed", extra={
                "owner": self.config.owner, "error": f"{type(exc).__name__}: {exc}"})
        finally:
            self.lanes.complete(ids)

    async def _credentials(self, row: Mapping[str, Any]) -> ProviderCredentials:
        pa_id: UUID = row["provider_account_id"]
        cached = self._creds.get(pa_id)
        if cached is not None and cached[0] == row["account_updated_at"]:
            return cached[1]
        creds = ProviderCredentials(
            provider=row["provider"], account_id=row["account_id"],
            secret=self.box.decrypt(row["secret_encrypted"]), base_url=row["base_url"],
            config=dict(row["config"] or {}))
        self._creds[pa_id] = (row["account_updated_at"], creds)
        return creds

    def _outbound(self, row: Mapping[str, Any]) -> OutboundMessage:
        channel = row["channel"]
        provider = row["provider"]
        callback = None
        if provider == "twilio":
            kind = "voice" if channel == "voice" else "sms"
            callback = f"{self.config.public_url}/v1/providers/twilio/{kind}/status"
        voice = row["voice"] or None
        return OutboundMessage(
            message_id=str(row["id"]), channel=channel, to=row["to_address"],
            from_=row["from_address"], from_name=row.get("from_name"),
            body=row["body"] or "", subject=row["subject"],
            html=row["html"],
            media_urls=tuple(row["media_urls"] or ()), status_callback_url=callback,
            voice=VoiceScript(**voice) if voice else None,
            unsubscribe_url=(unsubscribe_url(self.config.public_url, str(row["id"]), self.box)
                             if channel == "email" and row["priority"] == "bulk" else None),
            custom_args={"message_id": str(row["id"])})

    async def _send(self, batch: list[tuple[Outbound, float]]) -> None:
        try:
            await self._send_batch(batch)
        except Exception:
            log.error("send batch failed", exc_info=True, extra={"owner": self.config.owner})
            # Whatever was committed `sending` is the reconciler's now; the lanes let go.
            self.lanes.complete([item.message_id for item, _ in batch])
        finally:
            self._in_flight_n -= len(batch)
            if self._starved:
                self._starved = False
                self._wake.set()

    async def _send_batch(self, batch: list[tuple[Outbound, float]]) -> None:
        by_id = {item.message_id: item for item, _ in batch}
        departs = {item.message_id: at for item, at in batch}
        try:
            started = self.clock()
            rows = await store.begin_sending(self.pool, self.config.owner,
                                             [UUID(i) for i in by_id], self.config.lease_s)
            self._commit_took(self.clock() - started)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            # Nothing was committed: still queued and leased by us, so try again shortly.
            log.warning("begin_sending failed; retrying the batch", extra={
                "owner": self.config.owner, "error": f"{type(exc).__name__}: {exc}"})
            now = self.clock()
            for item in by_id.values():
                self.lanes.retry(item, 1.0, now)
            return
        gone = set(by_id) - {str(r["id"]) for r in rows}
        if gone:  # canceled, paused or taken over since it was queued: never sent
            self.lanes.complete(gone)
        groups: dict[tuple[UUID, str], list[Mapping[str, Any]]] = defaultdict(list)
        for r in rows:
            groups[(r["provider_account_id"], r["channel"])].append(r)
        results: list[tuple[Mapping[str, Any], SendResult]] = []
        closed: list[Mapping[str, Any]] = []
        await asyncio.gather(*(self._send_group(k[1], g, by_id, departs, results, closed)
                               for k, g in groups.items()))
        await self._record(by_id, results, closed)

    def _commit_took(self, seconds: float) -> None:
        """Size the horizon on how long `sending` commits take (a slow average, quick to
        grow): a message whose commit ends after its departure time leaves late, and the
        time is lost (see `_send_group`)."""
        weight = 0.5 if seconds > self._commit_s else 0.05
        self._commit_s += weight * (seconds - self._commit_s)
        config = self.config
        self.lanes.ahead = min(config.max_ahead_s, max(config.ahead_s, 2.0 * self._commit_s))

    def _pace(self, item: Outbound) -> tuple[LimitKey | None, float]:
        """The sender key a message is paced on, and the gap it needs after the previous
        message of that sender: its cost over the sender's rate."""
        key = item.path[-1] if item.path and item.path[-1][0] == "sender" else None
        limit = self.limiter.limit(key) if key is not None else None
        if key is None or limit is None:
            return None, 0.0
        return key, self.limiter.units(key, item.cost) / limit.rate

    async def _send_group(self, channel: str, group: list[Mapping[str, Any]],
                          items: Mapping[str, Outbound], departs: Mapping[str, float],
                          results: list[tuple[Mapping[str, Any], SendResult]],
                          closed: list[Mapping[str, Any]]) -> None:
        """Send one provider account's messages, each at its departure time: replies and
        transactional ones due together in one adapter call, bulk ones through the
        `bulk_requests` bound (an SMS or a call per request; emails due together in one,
        since SendGrid takes many recipients a request). A message also waits until its
        sender's previous message left a token's worth of time ago, so a batch that starts
        late (a slow `sending` commit, a busy event loop) goes out spread at the sender's
        rate instead of all at once: lateness costs time, never a burst at the carrier. A
        message whose window has closed when its request would start goes to `closed`,
        unsent."""
        adapter = self.adapters[channel]
        creds = await self._credentials(group[0])
        waves: list[asyncio.Task[None]] = []

        async def send(rows: list[Mapping[str, Any]]) -> None:
            now = self.clock()
            closed.extend(r for r in rows if items[str(r["id"])].send_until <= now)
            rows = [r for r in rows if items[str(r["id"])].send_until > now]
            if not rows:
                return
            down = self._unreachable_now(rows[0], now)
            if down is not None:  # backing off: not dialled, it waits with the others
                results.extend((r, replace(down, message_id=str(r["id"]))) for r in rows)
                return
            started = time.perf_counter()
            out = await adapter.send_batch(creds, [self._outbound(r) for r in rows])
            self.metrics.provider_latency(rows[0]["provider"], time.perf_counter() - started)
            results.extend(zip(rows, out, strict=True))
            failed = [r for r in out
                      if r.error is not None and r.error.kind == ErrorKind.CONNECTION_FAILED]
            if failed:
                self._back_off_unreachable(rows[0], failed[0], self.clock())

        async def send_bulk(rows: list[Mapping[str, Any]]) -> None:
            async with self._bulk_requests:
                await send(rows)

        def start(rows: list[Mapping[str, Any]]) -> None:
            urgent = [r for r in rows if r["priority"] != "bulk"]
            if urgent:  # straight to the adapter, past any bulk waiting for a connection
                waves.append(asyncio.create_task(send(urgent)))
            bulk = [r for r in rows if r["priority"] == "bulk"]
            # Email: one request carries many, the wave is one request. Twilio: a request
            # per message. Either way no rows, no request.
            requests = [bulk] if channel == "email" else [[r] for r in bulk]
            waves.extend(asyncio.create_task(send_bulk(req)) for req in requests if req)

        due = [(departs[str(r["id"])], i, r) for i, r in enumerate(group)]
        heapq.heapify(due)
        next_free = self._next_free
        while due:
            now = self.clock()
            ready: list[Mapping[str, Any]] = []
            while due and due[0][0] <= now:
                _, i, row = heapq.heappop(due)
                key, gap = self._pace(items[str(row["id"])])
                if key is not None:
                    free = next_free.get(key, now)
                    if free > now:  # its sender sent too recently: later, not bunched
                        heapq.heappush(due, (free, i, row))
                        continue
                    # On schedule despite a wake-up a little late; later than that, the
                    # schedule moves (the time is lost, as a full bucket loses it).
                    next_free[key] = max(free, now - PACE_SLACK_S) + gap
                ready.append(row)
            if ready:
                start(ready)
            if due:
                await asyncio.sleep(max(0.0, due[0][0] - self.clock()))
        await asyncio.gather(*waves)

    async def _record(self, by_id: Mapping[str, Outbound],
                      results: list[tuple[Mapping[str, Any], SendResult]],
                      closed: list[Mapping[str, Any]]) -> None:
        """Write the outcomes of a batch in one transaction. Campaign messages the provider
        refused for the account's setup, and those `closed` (their window closed before
        they left), are given back to their campaigns (`store.give_back`); the former pause
        their campaigns first, saying what to fix."""
        back = [r["id"] for r in closed]
        refused: dict[UUID, str] = {}  # campaign -> why it pauses
        accepted: list[tuple[UUID, str, str]] = []
        failed: list[tuple[UUID, str | None, str]] = []
        bounced: list[tuple[UUID, str, str, str]] = []  # sub-account, address, reason, provider
        retry: list[tuple[UUID, datetime, str, str]] = []
        in_doubt: list[tuple[UUID, str]] = []
        done: list[str] = []
        retries: list[tuple[Outbound, float]] = []
        now, wall = self.clock(), datetime.now(UTC)
        for row, res in results:
            item = by_id[str(row["id"])]
            err = res.error
            if err is None:
                status = res.status if res.status and rank(res.status) > rank(Status.SENT) \
                    else Status.SENT
                accepted.append((row["id"], res.provider_message_id or "", status.value))
                done.append(item.message_id)
                self._unreachable.pop(row["provider_account_id"], None)
            elif err.kind in (ErrorKind.THROTTLED, ErrorKind.CONNECTION_FAILED):
                delay = err.retry_after or backoff(item.attempt + 1)
                if err.kind == ErrorKind.CONNECTION_FAILED:  # at least the account's back-off
                    until = self.limiter.blocked_until(
                        ("provider", str(row["provider_account_id"])), now)
                    delay = max(delay, until - now if until is not None else 0.0)
                else:
                    # The provider said slow down: the whole sender waits, not one message.
                    for key in item.path:
                        if key[0] in ("sender", "provider"):
                            self.limiter.penalize(key, delay, now)
                            break
                    self.metrics.throttled(row["provider"])
                again = wall + timedelta(seconds=delay)
                retry.append((row["id"], again, err.provider_code or err.kind.value,
                              f"{err.message[:400]}; trying again at {again:%H:%M:%S} UTC"))
                retries.append((item, delay))
            elif err.kind == ErrorKind.CONFIG_INVALID and row["campaign_id"] is not None:
                refused.setdefault(row["campaign_id"], (
                    f"paused automatically: the provider refused the account's credentials "
                    f"or setup ({err.message[:300]}); update the provider account, then "
                    f"resume"))
                back.append(row["id"])
            elif err.kind == ErrorKind.IN_DOUBT:
                in_doubt.append((row["id"], err.message[:500]))
                done.append(item.message_id)
            else:
                failed.append((row["id"], err.provider_code or err.kind.value, err.message[:500]))
                done.append(item.message_id)
                if row["provider"] == "smtp" and (bounce := unknown_mailbox(err)):
                    bounced.append((row["sub_account_id"], row["to_address"],
                                    f"smtp bounce {bounce}", row["provider"]))
        visible = [r["id"] for r, res in results
                   if r["priority"] != "bulk" and (res.ok or not res.error or
                                                   not res.error.retryable)]
        async with self.pool.acquire() as conn, conn.transaction():
            # First: a pause locks its campaign, as a user's pause would, before any message.
            paused = await campaign_store.pause_running(
                conn, refused, str(transition("running", "auto_pause"))) if refused else []
            await store.give_back(conn, self.config.owner, back)
            await store.record_accepted(conn, self.config.owner, accepted)
            await store.record_failed(conn, self.config.owner, failed)
            await store.record_retry(conn, self.config.owner, retry)
            await store.record_in_doubt(conn, self.config.owner, in_doubt)
            written = await store.status_events(conn, visible)
            if paused:
                written += await events.append(conn, [events.PendingEvent(
                    c["sub_account_id"], "campaign.updated", c, f"campaign:{c['id']}")
                    for c in paused])
        await events.publish(self.redis, written)
        for c in paused:
            log.warning("campaign paused automatically", extra={
                "sub_account_id": str(c["sub_account_id"]), "campaign_id": str(c["id"]),
                "reason": c["paused_reason"]})
        _log_refused(results)
        if bounced:
            await self._suppress_bounced(bounced)
        self.lanes.complete(done + [str(i) for i in back])
        for item, delay in retries:
            self.lanes.retry(item, delay, now)
        self.sent_total += len(accepted)
        self.metrics.outcomes([(row["channel"], res) for row, res in results])

    async def _suppress_bounced(self, bounced: list[tuple[UUID, str, str, str]]) -> None:
        """Suppress the addresses a relay said have no mailbox, as a SendGrid bounce does.
        Its own transaction, after the failures are recorded: it locks the address's other
        messages and recipients as a STOP does, and a conflict there must not undo the
        batch's outcomes."""
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                tx = Tx(conn)
                for sa_id, address, reason, provider in bounced:
                    await suppress_bounced(tx, sa_id, address, reason=reason,
                                           provider=provider)
                written = await events.append(conn, tx.pending) if tx.pending else []
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("suppressing hard-bounced addresses failed", extra={
                "owner": self.config.owner, "count": len(bounced),
                "error": f"{type(exc).__name__}: {exc}"})
            return
        await events.publish(self.redis, written)

    def _back_off_unreachable(self, row: Mapping[str, Any], res: SendResult,
                              now: float) -> None:
        """A provider account that cannot be reached waits, all its sends at once, for a
        back-off that doubles with each failed attempt in a row (up to `UNREACHABLE_CAP_S`):
        one probe per step instead of one request per message at the campaign's rate.
        Failures of requests already under way when it began waiting add no step. A step
        is logged once, naming the account and where it dials, for the hub's log
        (actors/log_relay.py)."""
        pa = row["provider_account_id"]
        key: LimitKey = ("provider", str(pa))
        if self.limiter.blocked_until(key, now) is not None:
            return
        failures = self._unreachable.get(pa, (0, res))[0] + 1
        self._unreachable[pa] = (failures, res)
        delay = backoff(failures - 1, cap=UNREACHABLE_CAP_S)
        self.limiter.penalize(key, delay, now)
        err = res.error
        assert err is not None
        cached = self._creds.get(pa)
        log.warning("the provider could not be reached; its sends wait", extra={
            "sub_account_id": str(row["sub_account_id"]), "provider_account_id": str(pa),
            "provider": row["provider"],
            "target": endpoint(cached[1]) if cached is not None else "?",
            "code": ErrorKind.CONNECTION_FAILED.value, "error": err.message[:200],
            "failures_in_a_row": failures, "retry_in_s": round(delay, 1),
            "hint": hint_for(row["provider"], err.provider_code, err.kind)})

    def _unreachable_now(self, row: Mapping[str, Any], now: float) -> SendResult | None:
        """The failure a send of this account gets without dialling while the account
        backs off (`_back_off_unreachable`); None when it may dial."""
        down = self._unreachable.get(row["provider_account_id"])
        if down is None or self.limiter.blocked_until(
                ("provider", str(row["provider_account_id"])), now) is None:
            return None
        return down[1]

    # --- housekeeping ------------------------------------------------------------------

    async def renew_leases(self) -> None:
        """Extend the leases this shard holds in its lanes, every `lease_s / 3`. A lease
        taken since the previous renewal has two thirds of its time left and is renewed
        next time (a claim of thousands would otherwise be rewritten within seconds)."""
        held = [UUID(i) for i in self.lanes.queued_ids(
            leased_before=self.clock() - self.config.lease_s / 3)]
        if not held:
            return
        kept = await store.renew(self.pool, self.config.owner, held, self.config.lease_s)
        lost = [str(i) for i in held if i not in kept]
        if lost:  # canceled or paused in the database: drop them here too
            self.lanes.cancel(lost)

    async def run(self, stop: asyncio.Event) -> None:
        """The shard's loop: claim, send, renew, until `stop` is set."""
        config = self.config
        last_claim = last_renew = 0.0
        started = False
        while not stop.is_set():
            self._wake.clear()  # anything that arrives from here on wakes the wait below
            now = self.clock()
            try:
                if not started:  # what a previous incarnation held goes back in the queue
                    await self.release_stale(own=True)
                    started = True
                if now - last_claim >= config.claim_interval_s or (
                        self._claim_full and len(self.lanes) < config.claim_batch):
                    last_claim = now
                    await self.claim()
                if now - last_renew >= config.lease_s / 3:
                    last_renew = now
                    await self.renew_leases()
                    await self.release_stale(own=False)
                    for key in [k for k, t in self._next_free.items() if t <= now]:
                        del self._next_free[key]  # in place: sends in flight share it
                await self.pump()
            except Exception as exc:
                await round_failed(log, "sender shard round", config.owner, exc)
            self.metrics.lane_depth(config.owner, len(self.lanes))
            timeout = config.claim_interval_s
            wake = None if self._starved else self.lanes.next_wakeup(self.clock())
            if wake is not None:  # lanes waiting for tokens: not more often than pump_every_s
                timeout = min(timeout, max(wake - self.clock(), config.pump_every_s))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
        await self.drain()

    async def drain(self) -> None:
        """Finish batches in flight and hand unsent leases back."""
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)
        held = [UUID(i) for i in self.lanes.queued_ids()]
        if held:
            with contextlib.suppress(Exception):
                await store.release(self.pool, self.config.owner, held)

    def stats(self) -> dict[str, Any]:
        return {"owner": self.config.owner, "queued": len(self.lanes),
                "in_flight_batches": len(self._in_flight), "in_flight": self._in_flight_n,
                "ahead_s": round(self.lanes.ahead, 3),
                "sent_total": self.sent_total,
                "buckets": self.limiter.bucket_count}

