"""Per-sub-account priority lanes: which queued messages may leave now, fairly, without
head-of-line blocking. Pure state wrapped by the Sender shard actor, which passes ``now``.

A *lane* holds one sub-account's messages of one priority on one limiter path (so, in practice,
one sender number or email domain), in FIFO order. The rules `take` applies:

* **Priority within a sub-account**: reply, then transactional, then bulk. Lanes of the same
  priority take turns, so one number's backlog does not hold up another's.
* **Fairness across sub-accounts**: round-robin, one message per sub-account per turn, so a
  100k campaign never starves another sub-account's single message.
* **No head-of-line blocking**: a lane whose head lacks tokens is parked until the limiter says
  it could go; the others carry on. A parked lane costs nothing until then: it waits in the
  wait list of the level that stopped it (priority first, then FIFO), which is woken as that
  level refills, one lane per expected token — thousands of lanes behind one shared key cost
  O(1) per token, not a herd. No barging: a lane that finds others of its priority (or better)
  already waiting for a level joins the back of that list, so numbers sharing a sub-account
  allowance take turns instead of the fastest-refilling ones taking every token.
* **Reservation** (how replies are protected from bulk): a reply or transactional head that is
  waiting for tokens sets its cost aside on every level of its path, due by the time it expects
  to go. A lower-priority message, of any sub-account, may take a level's tokens only if the
  level still refills to what is set aside by then; otherwise it waits until the higher-priority
  message has gone. So a reply on an empty sender bucket waits for that bucket alone: bulk on
  the same number cannot take the refill, and bulk on sibling numbers cannot drain the
  sub-account or provider tokens the reply will need. Bulk loses at most what the reply needs.
* **Closing windows**: a message with a ``send_until`` (a campaign message, whose contact's
  sending window closes then) that would not leave before it is taken out without tokens
  and put in ``expired``, for the owner to give back; its lane goes on with the next one.
* **Retries** go to the head of their lane but only once their ``not_before`` has passed; until
  then the lane's other messages go on (throttling pauses the whole key via the limiter, so a
  per-message delay never needs to stall the lane). Messages pushed with a future
  ``not_before`` are held the same way and, once due, go before the lane's FIFO.

Cost: `take` is O(messages taken + lanes that are examined and park), independent of how many
messages are queued. Cancelled messages are removed lazily and lanes compacted when more than
half of their entries are dead.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Literal

from actors.limiter import MIN_WAIT, LimitKey, NestedLimiter, Reservation

Priority = Literal["reply", "transactional", "bulk"]
PRIORITIES: tuple[Priority, ...] = ("reply", "transactional", "bulk")
_RANK: dict[str, int] = {p: i for i, p in enumerate(PRIORITIES)}
_BULK = 2

_IDLE, _READY, _PARKED, _GONE = 0, 1, 2, 3
_COMPACT_MIN = 64


@dataclass(frozen=True, slots=True)
class Outbound:
    """One queued send. The payload is looked up by ``message_id`` when it is sent, so this
    stays small; callers should share ``path`` tuples between messages of one sender."""

    message_id: str
    sub_account_id: str
    priority: Priority
    path: tuple[LimitKey, ...]
    cost: int = 1  # SMS segments; 1 for email and voice
    not_before: float = 0.0
    attempt: int = 0
    campaign_id: str | None = None
    contact_id: str | None = None
    leased_at: float = 0.0  # when the shard leased it (its clock): renewals skip fresh ones
    send_until: float = math.inf  # it may not leave at or after this time (its window closes)


class _Account:
    __slots__ = ("counts", "id", "in_ring", "lanes", "n_ready", "ready")

    def __init__(self, sub_account_id: str) -> None:
        self.id = sub_account_id
        self.ready: list[deque[_Lane] | None] = [None, None, None]  # lanes to try, by rank
        self.n_ready = 0  # entries in `ready`, including lanes dropped since
        self.in_ring = False
        self.counts = [0, 0, 0]  # queued messages by rank
        self.lanes = 0


class _Lane:
    __slots__ = ("account", "delayed", "dependents", "garbage", "hold_cost", "items", "live",
                 "need", "on_timer", "path", "rank", "state", "token", "wake", "woken_by")

    def __init__(self, account: _Account, rank: int, path: tuple[LimitKey, ...]) -> None:
        self.account = account
        self.rank = rank
        self.path = path
        self.items: deque[Outbound] = deque()
        self.delayed: list[tuple[float, int, Outbound]] | None = None  # heap by not_before
        self.live = 0  # queued messages (entries in items/delayed minus garbage)
        self.garbage = 0  # cancelled entries not yet removed
        self.state = _IDLE
        self.token = 0  # bumped on every park/unpark; stale wait-list entries show it
        self.wake = 0.0  # when this lane expects to go
        self.need = 0.0  # units it waits for on the key it is parked on
        self.on_timer = False  # parked until a delayed message is due (not for tokens)
        self.woken_by: LimitKey | None = None  # the key whose queue it was just let out of
        self.hold_cost = 0  # > 0 while it reserves tokens for its head
        self.dependents: list[tuple[int, _Lane]] | None = None  # lanes waiting for it to go


class Lanes:
    """Queued outbound messages of one Sender shard, and the rules for letting them out.

    ``ahead`` (seconds): `take_timed` also lets out messages whose tokens fall due within
    that horizon, each with the time it may leave, so one call fills a batch with several
    messages per sender number while every number's rate stays exact (see
    `NestedLimiter.acquire`). With 0, everything taken may leave at once. The owner may
    change it between calls.
    """

    def __init__(self, *, ahead: float = 0.0) -> None:
        if not (ahead >= 0.0 and math.isfinite(ahead)):
            raise ValueError(f"ahead must be a finite number >= 0, got {ahead!r}")
        self.ahead = ahead
        self._urgent = 0  # queued replies and transactional messages
        self._queued: dict[str, Outbound] = {}
        self._in_flight: dict[str, Outbound] = {}
        self._cancelled: set[str] = set()  # in flight when cancelled: a retry must drop them
        self._lanes: dict[tuple[str, int, tuple[LimitKey, ...]], _Lane] = {}
        self._accounts: dict[str, _Account] = {}
        self._ring: deque[_Account] = deque()  # accounts with lanes to try, round-robin
        self._timers: list[tuple[float, int, int, _Lane | LimitKey]] = []
        self._key_timer: dict[LimitKey, tuple[int, float]] = {}  # armed timer: (seq, when)
        self._waiters: dict[LimitKey, list[tuple[int, int, int, _Lane]]] = {}
        self._holds: dict[LimitKey, list[_Lane]] = {}
        self._seq = itertools.count()
        #: Messages taken out because their window closed before they could leave: in
        #: flight (no tokens spent) until the owner gives them back and calls `complete`.
        self.expired: list[Outbound] = []

    # --- queries ---------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._queued)

    def __contains__(self, message_id: object) -> bool:
        return message_id in self._queued or message_id in self._in_flight

    def queued_ids(self, leased_before: float = math.inf) -> list[str]:
        """Ids of queued (not in-flight) messages leased before ``leased_before`` (all by
        default), e.g. to renew their leases."""
        return [mid for mid, item in self._queued.items() if item.leased_at < leased_before]

    @property
    def in_flight(self) -> Mapping[str, Outbound]:
        """Messages taken and neither completed nor retried yet."""
        return MappingProxyType(self._in_flight)

    @property
    def urgent(self) -> int:
        """Queued replies and transactional messages (in-flight ones not included)."""
        return self._urgent

    def depth(self) -> dict[str, dict[Priority, int]]:
        """Queued messages per sub-account and priority (in-flight ones not included)."""
        return {a.id: dict(zip(PRIORITIES, a.counts, strict=True))
                for a in self._accounts.values() if any(a.counts)}

    def next_wakeup(self, now: float) -> float | None:
        """When `take` could next return something: ``now``, a later time, or None (empty).

        Parked lanes are woken by timers, so this needs no limiter: a limit raised at runtime
        is only noticed at the old wake time unless the caller calls `wake_all`.
        """
        if self._ring:
            return now
        timers = self._timers
        while timers:
            when, seq, token, obj = timers[0]
            if self._timer_valid(seq, token, obj):
                return max(when, now)
            heapq.heappop(timers)
        return None

    # --- commands --------------------------------------------------------------------

    def push(self, items: Iterable[Outbound], now: float) -> int:
        """Queue messages; ids already queued or in flight are ignored. Returns how many were
        added. (Completed ids are forgotten: the store's status prevents a second send.)"""
        added = 0
        queued, in_flight = self._queued, self._in_flight
        for item in items:
            mid = item.message_id
            if mid in queued or mid in in_flight:
                continue
            self._enqueue(item, now, at_head=False)
            added += 1
        return added

    def take(self, now: float, limiter: NestedLimiter, max_n: int) -> list[Outbound]:
        """Up to ``max_n`` messages whose tokens are taken (see `take_timed`), without their
        departure times: for callers with ``ahead == 0``, where every one may leave now."""
        return [item for item, _ in self.take_timed(now, limiter, max_n)]

    def take_timed(self, now: float, limiter: NestedLimiter, max_n: int,
                   ) -> list[tuple[Outbound, float]]:
        """Up to ``max_n`` messages, each with the time it may leave (between ``now`` and
        ``now + ahead``, in order for each lane); their tokens are taken, and they are in
        flight until `complete` or `retry`."""
        self._fire_timers(now, limiter)
        out: list[tuple[Outbound, float]] = []
        ring = self._ring
        while len(out) < max_n and ring:
            account = ring.popleft()
            account.in_ring = False
            taken = self._take_from(account, now, limiter)
            if account.n_ready and not account.in_ring:
                ring.append(account)
                account.in_ring = True
            if taken is not None:
                out.append(taken)
        return out

    def complete(self, message_ids: Iterable[str]) -> int:
        """Forget messages that were sent or failed for good. Returns how many were in flight."""
        done = 0
        for mid in list(message_ids):  # may be a view of `in_flight` itself
            if self._in_flight.pop(mid, None) is not None:
                done += 1
            self._cancelled.discard(mid)
        return done

    def retry(self, item: Outbound, delay: float, now: float) -> bool:
        """Re-queue an in-flight message at the head of its lane, not before ``now + delay``,
        with ``attempt + 1``. False (and forgotten) if it was cancelled while in flight — a
        STOP that arrived mid-send must not be undone by a throttled retry — or unknown."""
        mid = item.message_id
        if self._in_flight.pop(mid, None) is None:
            return False
        if mid in self._cancelled:
            self._cancelled.discard(mid)
            return False
        self._enqueue(replace(item, not_before=now + delay, attempt=item.attempt + 1), now,
                      at_head=True)
        return True

    def cancel(self, message_ids: Iterable[str]) -> list[str]:
        """Remove queued messages; returns the ids removed. In-flight ids are not returned
        but are marked so that a `retry` drops them."""
        removed: list[str] = []
        for mid in message_ids:
            item = self._queued.pop(mid, None)
            if item is None:
                if mid in self._in_flight:
                    self._cancelled.add(mid)
                continue
            lane = self._lanes[(item.sub_account_id, _RANK[item.priority], item.path)]
            lane.live -= 1
            lane.garbage += 1
            lane.account.counts[lane.rank] -= 1
            if lane.rank < _BULK:
                self._urgent -= 1
            removed.append(mid)
            if lane.live == 0:
                self._drop(lane)
            elif lane.garbage > _COMPACT_MIN and lane.garbage > lane.live:
                self._compact(lane)
        return removed

    def cancel_where(self, predicate: Callable[[Outbound], bool]) -> list[str]:
        """`cancel` every queued or in-flight message matching ``predicate`` (a campaign, a
        contact who sent STOP). O(queued); meant for rare, user-initiated events."""
        ids = [mid for mid, item in self._queued.items() if predicate(item)]
        ids += [mid for mid, item in self._in_flight.items() if predicate(item)]
        return self.cancel(ids)

    def wake_all(self) -> None:
        """Re-examine every parked lane at the next `take` (after raising a limit)."""
        for lane in self._lanes.values():
            if lane.state == _PARKED:
                self._make_ready(lane)
        self._timers.clear()
        self._key_timer.clear()
        self._waiters.clear()

    # --- queueing --------------------------------------------------------------------

    def _enqueue(self, item: Outbound, now: float, *, at_head: bool) -> None:
        rank = _RANK.get(item.priority)
        if rank is None:
            raise ValueError(f"unknown priority {item.priority!r}")
        if item.cost < 1:
            raise ValueError(f"cost must be at least 1, got {item.cost!r}")
        key = (item.sub_account_id, rank, item.path)
        lane = self._lanes.get(key)
        if lane is None:
            account = self._accounts.get(item.sub_account_id)
            if account is None:
                account = self._accounts[item.sub_account_id] = _Account(item.sub_account_id)
            lane = self._lanes[key] = _Lane(account, rank, item.path)
            account.lanes += 1
        if at_head or item.not_before > now:
            if lane.delayed is None:
                lane.delayed = []
            heapq.heappush(lane.delayed, (item.not_before, next(self._seq), item))
        else:
            lane.items.append(item)
        lane.live += 1
        lane.account.counts[rank] += 1
        if rank < _BULK:
            self._urgent += 1
        self._queued[item.message_id] = item
        # A lane waiting for tokens stays put (its head is unchanged); one that was idle or
        # waiting for a delayed message may have something due now.
        if lane.state == _IDLE or (lane.state == _PARKED and lane.on_timer):
            self._make_ready(lane)

    def _head(self, lane: _Lane, now: float) -> tuple[Outbound | None, bool]:
        """The message that goes next if due now, and whether it is a delayed one."""
        queued = self._queued
        delayed = lane.delayed
        if delayed:
            while delayed and queued.get(delayed[0][2].message_id) is not delayed[0][2]:
                heapq.heappop(delayed)
                lane.garbage -= 1
            if delayed and delayed[0][0] <= now:
                return delayed[0][2], True
        items = lane.items
        while items:
            item = items[0]
            if queued.get(item.message_id) is item:
                return item, False
            items.popleft()
            lane.garbage -= 1
        return None, False

    def _compact(self, lane: _Lane) -> None:
        queued = self._queued
        lane.items = deque(i for i in lane.items if queued.get(i.message_id) is i)
        if lane.delayed:
            lane.delayed = [e for e in lane.delayed if queued.get(e[2].message_id) is e[2]]
            heapq.heapify(lane.delayed)
        lane.garbage = 0

    # --- taking ----------------------------------------------------------------------

    def _take_from(self, account: _Account, now: float, limiter: NestedLimiter,
                   ) -> tuple[Outbound, float] | None:
        for rank in range(3):
            ready = account.ready[rank]
            while ready:
                lane = ready.popleft()
                account.n_ready -= 1
                if lane.state != _READY:
                    continue  # dropped while it sat in the ring
                taken = self._try_lane(lane, now, limiter)
                if taken is not None:
                    return taken
            if ready is not None:
                # Most accounts spend most of their time with every lane parked; an empty
                # deque still holds a 600-byte block, so let it go.
                account.ready[rank] = None
        if account.lanes == 0 and account.n_ready == 0:
            if self._accounts.get(account.id) is account:
                del self._accounts[account.id]
        return None

    def _try_lane(self, lane: _Lane, now: float, limiter: NestedLimiter,
                  ) -> tuple[Outbound, float] | None:
        if lane.hold_cost:
            self._release(lane)
        item, delayed = self._head(lane, now)
        while item is not None and item.send_until <= now + self.ahead:
            self._remove_head(lane, item, delayed)
            self.expired.append(item)
            item, delayed = self._head(lane, now)
        if item is None:
            if lane.delayed:
                self._park_until(lane, lane.delayed[0][0])
            else:
                self._drop(lane)
            return None
        woken_by, lane.woken_by = lane.woken_by, None
        queue = self._queue_ahead(lane, woken_by) if self._waiters else None
        if queue is not None:
            # Lanes already queue for this key: no barging, join them (fair turns).
            armed = self._key_timer.get(queue)
            self._park_on_key(lane, queue, limiter.units(queue, item.cost),
                              armed[1] if armed else now)
            if lane.rank < _BULK:
                self._hold(lane, item.cost)
            return None
        reserved = self._reserved(lane, limiter, now) if self._holds else None
        wait, key = limiter.acquire(item.path, now, item.cost, reserved, ahead=self.ahead)
        if key is not None:
            if math.isinf(wait):
                self._park_behind_holder(lane, key)
            else:  # back once its tokens fall within the horizon
                self._park_on_key(lane, key, limiter.units(key, item.cost),
                                  now + max(wait - self.ahead, MIN_WAIT))
            if lane.rank < _BULK:
                self._hold(lane, item.cost)
            return None
        self._remove_head(lane, item, delayed)
        if lane.live:
            self._make_ready(lane)  # back of its rank's turn: siblings go first
        else:
            self._drop(lane)
        return item, now + wait

    def _remove_head(self, lane: _Lane, item: Outbound, delayed: bool) -> None:
        """Move the lane's head (`_head`) in flight."""
        if delayed:
            assert lane.delayed is not None
            heapq.heappop(lane.delayed)
        else:
            lane.items.popleft()
        lane.live -= 1
        lane.account.counts[lane.rank] -= 1
        if lane.rank < _BULK:
            self._urgent -= 1
        del self._queued[item.message_id]
        self._in_flight[item.message_id] = item

    def _queue_ahead(self, lane: _Lane, woken_by: LimitKey | None) -> LimitKey | None:
        """A key on the lane's path that lanes of the same or better priority already queue
        for. Their turn comes first: the tokens that key will get are theirs."""
        for key in lane.path:
            if key == woken_by:
                continue
            waiters = self._waiters.get(key)
            while waiters:
                _, _, token, other = waiters[0]
                if other.state == _PARKED and other.token == token:
                    if waiters[0][0] <= lane.rank:
                        return key
                    break
                heapq.heappop(waiters)
        return None

    # --- parking and waking ----------------------------------------------------------

    def _make_ready(self, lane: _Lane) -> None:
        lane.state = _READY
        lane.token += 1
        account = lane.account
        ready = account.ready[lane.rank]
        if ready is None:
            ready = account.ready[lane.rank] = deque()
        ready.append(lane)
        account.n_ready += 1
        if not account.in_ring:
            account.in_ring = True
            self._ring.append(account)

    def _park(self, lane: _Lane, wake: float, *, on_timer: bool = False) -> int:
        lane.state = _PARKED
        lane.token += 1
        lane.wake = wake
        lane.on_timer = on_timer
        return lane.token

    def _park_until(self, lane: _Lane, when: float) -> None:
        token = self._park(lane, when, on_timer=True)
        self._push_timer(when, token, lane)

    def _park_on_key(self, lane: _Lane, key: LimitKey, need: float, wake: float) -> None:
        token = self._park(lane, wake)
        lane.need = need
        waiters = self._waiters.get(key)
        if waiters is None:
            waiters = self._waiters[key] = []
        heapq.heappush(waiters, (lane.rank, next(self._seq), token, lane))
        armed = self._key_timer.get(key)
        if armed is None or wake < armed[1]:
            self._arm(key, wake)

    def _park_behind_holder(self, lane: _Lane, key: LimitKey) -> None:
        holder = min((h for h in self._holds[key] if h.rank < lane.rank), key=lambda h: h.wake)
        token = self._park(lane, holder.wake)
        if holder.dependents is None:
            holder.dependents = []
        holder.dependents.append((token, lane))

    def _arm(self, key: LimitKey, when: float) -> None:
        seq = self._push_timer(when, 0, key)
        self._key_timer[key] = (seq, when)

    def _push_timer(self, when: float, token: int, obj: _Lane | LimitKey) -> int:
        seq = next(self._seq)
        heapq.heappush(self._timers, (when, seq, token, obj))
        if len(self._timers) > 4 * len(self._lanes) + 1024:
            # In place: `_fire_timers` may be iterating over this very list.
            self._timers[:] = [t for t in self._timers if self._timer_valid(t[1], t[2], t[3])]
            heapq.heapify(self._timers)
        return seq

    def _timer_valid(self, seq: int, token: int, obj: _Lane | LimitKey) -> bool:
        if isinstance(obj, _Lane):
            return obj.state == _PARKED and obj.token == token
        armed = self._key_timer.get(obj)
        return armed is not None and armed[0] == seq

    def _fire_timers(self, now: float, limiter: NestedLimiter) -> None:
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, seq, token, obj = heapq.heappop(timers)
            if isinstance(obj, _Lane):
                if obj.state == _PARKED and obj.token == token:
                    self._make_ready(obj)
            elif self._timer_valid(seq, token, obj):
                del self._key_timer[obj]
                if obj in self._waiters:
                    self._wake_waiters(obj, now, limiter)

    def _wake_waiters(self, key: LimitKey, now: float, limiter: NestedLimiter) -> None:
        """Wake as many of ``key``'s waiters, best priority first, as its tokens cover; re-arm
        for the rest. Each woken lane is expected to spend what it waited for."""
        waiters = self._waiters[key]
        spent = 0.0
        while waiters:
            _, _, token, lane = waiters[0]
            if lane.state != _PARKED or lane.token != token:
                heapq.heappop(waiters)
                continue
            wait = limiter.key_wait(key, lane.need, now, spent=spent)
            if wait > self.ahead:
                self._arm(key, now + max(wait - self.ahead, MIN_WAIT))
                return
            heapq.heappop(waiters)
            spent += lane.need
            self._make_ready(lane)
            lane.woken_by = key
        del self._waiters[key]

    # --- reservations ----------------------------------------------------------------

    def _hold(self, lane: _Lane, cost: int) -> None:
        lane.hold_cost = cost
        for key in lane.path:
            holders = self._holds.get(key)
            if holders is None:
                holders = self._holds[key] = []
            holders.append(lane)

    def _release(self, lane: _Lane) -> None:
        lane.hold_cost = 0
        for key in lane.path:
            holders = self._holds[key]
            holders.remove(lane)
            if not holders:
                del self._holds[key]
        dependents, lane.dependents = lane.dependents, None
        for token, waiting in dependents or ():
            if waiting.state == _PARKED and waiting.token == token:
                self._make_ready(waiting)

    def _reserved(self, lane: _Lane, limiter: NestedLimiter, now: float,
                  ) -> dict[LimitKey, Reservation] | None:
        reserved: dict[LimitKey, Reservation] | None = None
        for key in lane.path:
            holders = self._holds.get(key)
            if not holders:
                continue
            need, deadline = 0.0, math.inf
            for holder in holders:
                if holder.rank < lane.rank:
                    need += limiter.units(key, holder.hold_cost)
                    deadline = min(deadline, holder.wake)
            if need:
                if reserved is None:
                    reserved = {}
                reserved[key] = (need, deadline)
        return reserved

    def _drop(self, lane: _Lane) -> None:
        if lane.hold_cost:
            self._release(lane)
        lane.state = _GONE
        lane.token += 1
        lane.items.clear()
        lane.delayed = None
        lane.garbage = 0
        account = lane.account
        del self._lanes[(account.id, lane.rank, lane.path)]
        account.lanes -= 1
        if account.lanes == 0 and account.n_ready == 0 and \
                self._accounts.get(account.id) is account:
            del self._accounts[account.id]
