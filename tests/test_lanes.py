"""Priority lanes under a fake clock: who leaves when, as an agent or a marketer would see it."""

from __future__ import annotations

import bisect
import itertools
import math
import random
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest

from actors.lanes import Lanes, Outbound, Priority
from actors.limiter import LimitKey, NestedLimiter

PROVIDER: LimitKey = ("provider", "pa-1")
_ids = itertools.count()
_paths: dict[tuple[str, str], tuple[LimitKey, ...]] = {}


def path(sa: str, sender: str) -> tuple[LimitKey, ...]:
    # Shared tuples, as the actor will build them: one per (sub-account, sender).
    return _paths.setdefault((sa, sender), (PROVIDER, ("sub_account", sa), ("sender", sender)))


def msgs(sa: str, sender: str, n: int, priority: Priority = "bulk", **kw: Any) -> list[Outbound]:
    return [Outbound(f"m{next(_ids)}", sa, priority, path(sa, sender), **kw) for _ in range(n)]


def limiter(**senders: float) -> NestedLimiter:
    lim = NestedLimiter()
    for sender, rate in senders.items():
        lim.configure(("sender", sender), rate=rate, burst=1)
    return lim


def drain(lanes: Lanes, lim: NestedLimiter, until: float, now: float = 0.0,
          max_n: int = 100) -> list[tuple[float, Outbound]]:
    """The actor's loop: take, send (completing at once), sleep until `next_wakeup`."""
    sent: list[tuple[float, Outbound]] = []
    while now <= until:
        batch = lanes.take(now, lim, max_n)
        sent += [(now, item) for item in batch]
        lanes.complete(item.message_id for item in batch)
        wake = lanes.next_wakeup(now)
        if wake is None:
            break
        assert wake > now or batch, "the caller would spin"
        now = max(wake, now)
    return sent


def ids(items: Sequence[Outbound]) -> list[str]:
    return [i.message_id for i in items]


def test_reply_overtakes_10k_bulk_on_the_same_number() -> None:
    lanes, lim = Lanes(), limiter(n1=1.0)
    lanes.push(msgs("sa", "n1", 10_000), now=0.0)
    assert len(lanes.take(0.0, lim, 500)) == 1  # the number's one token this second

    reply = msgs("sa", "n1", 1, "reply")
    lanes.push(reply, now=0.2)
    assert lanes.take(0.2, lim, 500) == []
    assert lanes.next_wakeup(0.2) == pytest.approx(1.0)  # waits for its number, nothing else
    assert lanes.take(1.0, lim, 500) == reply
    assert lanes.depth() == {"sa": {"reply": 0, "transactional": 0, "bulk": 9_999}}


def test_transactional_goes_before_bulk_and_after_replies() -> None:
    lanes, lim = Lanes(), limiter(n1=1.0)
    bulk = msgs("sa", "n1", 3)
    otp = msgs("sa", "n1", 2, "transactional")
    reply = msgs("sa", "n1", 1, "reply")
    lanes.push(bulk + otp + reply, now=0.0)
    order = [item for _, item in drain(lanes, lim, until=10.0)]
    assert order == reply + otp + bulk


def test_bulk_on_sibling_numbers_cannot_drain_the_tokens_a_reply_needs() -> None:
    # Ten numbers share a sub-account allowance of 2.5 segments/s; a campaign saturates it.
    lim = limiter(**{f"n{i}": 1.0 for i in range(10)})
    lim.configure(("sub_account", "sa"), rate=2.5, burst=1)
    lanes = Lanes()
    for i in range(10):
        lanes.push(msgs("sa", f"n{i}", 1_000), now=0.0)
    now = 0.0
    while True:  # run the campaign until n3 has just sent: its bucket is now empty
        batch = lanes.take(now, lim, 100)
        lanes.complete(ids(batch))
        if any(item.path[-1] == ("sender", "n3") for item in batch):
            n3_last = now
            break
        now = lanes.next_wakeup(now) or now

    # The agent replies from n3 right then.
    now = n3_last + 0.01
    reply = msgs("sa", "n3", 1, "reply")
    lanes.push(reply, now)
    sent = drain(lanes, lim, until=now + 5.0, now=now)

    when_reply = next(t for t, item in sent if item == reply[0])
    assert when_reply == pytest.approx(n3_last + 1.0)  # n3's refill, not a turn behind bulk
    bulk_while_waiting = [t for t, item in sent if t < when_reply]
    assert len(bulk_while_waiting) >= 1  # siblings were not stopped to protect it
    assert len(sent) >= 0.9 * 2.5 * 5  # and the allowance stayed busy


def test_every_number_in_a_pool_gets_its_turn_under_a_shared_allowance() -> None:
    lim = limiter(**{f"n{i}": 1.0 for i in range(10)})
    lim.configure(("sub_account", "sa"), rate=2, burst=1)  # the bottleneck, not the numbers
    lanes = Lanes()
    for i in range(10):
        lanes.push(msgs("sa", f"n{i}", 1_000), now=0.0)
    sent = drain(lanes, lim, until=20.0)
    per_number = Counter(item.path[-1][1] for _, item in sent)
    assert len(sent) >= 0.9 * 2 * 20
    assert len(per_number) == 10 and max(per_number.values()) - min(per_number.values()) <= 1


def test_one_sub_accounts_100k_campaign_does_not_starve_another() -> None:
    lanes, lim = Lanes(), NestedLimiter()
    lanes.push(msgs("A", "a1", 100_000), now=0.0)
    b = msgs("B", "b1", 10)
    lanes.push(b, now=0.0)

    taken = [item for _ in range(20) for item in lanes.take(0.0, lim, 1)]
    assert set(ids(b)) <= set(ids(taken))

    lanes.push(more_b := msgs("B", "b1", 10, "transactional"), now=0.0)
    assert set(ids(more_b)) <= set(ids(lanes.take(0.0, lim, 20)))


def test_a_throttled_number_does_not_block_its_siblings_or_other_sub_accounts() -> None:
    lanes, lim = Lanes(), limiter(n1=1.0, n2=1.0, m1=1.0)
    for _ in range(50):  # interleaved, as a campaign over a number pool would queue them
        lanes.push(msgs("sa", "n1", 1) + msgs("sa", "n2", 1) + msgs("sb", "m1", 1), now=0.0)
    lim.penalize(("sender", "n1"), 30.0, now=0.0)  # carrier said 30022 for n1

    sent = drain(lanes, lim, until=20.0)
    per_sender = Counter(item.path[-1][1] for _, item in sent)
    assert per_sender["n1"] == 0
    assert per_sender["n2"] >= 20 and per_sender["m1"] >= 20

    later = drain(lanes, lim, until=40.0, now=20.5)
    assert 9 <= Counter(item.path[-1][1] for _, item in later)["n1"] <= 11  # back, at 1/s


def test_fifo_within_each_lane_while_lanes_interleave() -> None:
    lanes, lim = Lanes(), limiter(n1=3.0, n2=4.5)
    n1, n2 = msgs("sa", "n1", 60), msgs("sa", "n2", 60)
    for a, b in zip(n1, n2, strict=True):
        lanes.push([a, b], now=0.0)
    sent = [item for _, item in drain(lanes, lim, until=60.0)]
    assert [i for i in sent if i in n1] == n1
    assert [i for i in sent if i in n2] == n2


def test_push_is_idempotent_while_queued_or_in_flight() -> None:
    lanes, lim = Lanes(), NestedLimiter()
    batch = msgs("sa", "n1", 5)
    assert lanes.push(batch, 0.0) == 5
    assert lanes.push(batch, 0.0) == 0  # the scheduler re-sent its claim
    taken = lanes.take(0.0, lim, 2)
    assert lanes.push(batch, 0.0) == 0  # two are in flight, three still queued
    assert len(lanes) == 3 and set(lanes.in_flight) == set(ids(taken))
    assert lanes.queued_ids() == ids(batch[2:])  # what the shard still holds leases for
    rest = lanes.take(0.0, lim, 10)
    assert ids(taken + rest) == ids(batch)  # each went out exactly once


def test_queued_ids_can_leave_out_leases_taken_since_a_time() -> None:
    lanes = Lanes()
    old = msgs("sa", "n1", 2, leased_at=10.0)
    fresh = msgs("sa", "n2", 2, leased_at=30.0)
    lanes.push(old + fresh, 30.0)
    assert lanes.queued_ids(leased_before=20.0) == ids(old)  # renewed; fresh ones wait
    assert sorted(lanes.queued_ids()) == sorted(ids(old + fresh))


def test_cancel_removes_queued_and_a_stop_mid_send_is_not_undone_by_a_retry() -> None:
    lanes, lim = Lanes(), NestedLimiter()
    batch = msgs("sa", "n1", 4, campaign_id="c1")
    other = msgs("sa", "n1", 2, campaign_id="c2")
    lanes.push(batch + other, 0.0)
    first = lanes.take(0.0, lim, 1)[0]

    assert lanes.cancel([batch[1].message_id, "unknown", first.message_id]) == [batch[1].message_id]
    assert lanes.retry(first, 1.0, 0.0) is False  # throttled, but the contact said STOP
    assert first.message_id not in lanes

    assert sorted(lanes.cancel_where(lambda m: m.campaign_id == "c1")) == sorted(ids(batch[2:]))
    assert lanes.depth() == {"sa": {"reply": 0, "transactional": 0, "bulk": 2}}
    assert lanes.take(10.0, lim, 10) == other


def test_cancelling_a_100k_campaign_frees_its_lane() -> None:
    lanes, lim = Lanes(), limiter(n1=1.0)
    campaign = msgs("sa", "n1", 100_000, campaign_id="big")
    keep = msgs("sa", "n1", 3, campaign_id="small")
    lanes.push(campaign[:50_000] + keep + campaign[50_000:], 0.0)
    assert len(lanes.cancel_where(lambda m: m.campaign_id == "big")) == 100_000
    lane_items = sum(len(lane.items) for lane in lanes._lanes.values())
    assert lane_items <= 2 * len(keep) + 64  # dead entries compacted, not kept around
    assert [item for _, item in drain(lanes, lim, until=5.0)] == keep


def test_retry_goes_to_the_head_of_its_lane_after_its_delay() -> None:
    lanes, lim = Lanes(), limiter(n1=10.0)
    batch = msgs("sa", "n1", 50)
    lanes.push(batch, 0.0)
    first = lanes.take(0.0, lim, 1)[0]
    assert lanes.retry(first, delay=2.0, now=0.05)

    sent = drain(lanes, lim, until=3.0, now=0.05)
    when, again = next((t, item) for t, item in sent if item.message_id == first.message_id)
    assert when == pytest.approx(2.05, abs=0.1)  # not before its delay, and right after it
    assert again.attempt == 1 and again.not_before == pytest.approx(2.05)
    before = [item for t, item in sent if t < when]
    assert len(before) >= 15  # the rest of the lane kept going meanwhile
    assert sent[len(before)][1] is again  # then it went first
    assert ids(before) == ids(batch[1:len(before) + 1])  # and FIFO held for the others


def test_retry_of_a_throttled_batch_waits_out_the_penalty() -> None:
    lanes, lim = Lanes(), limiter(n1=100.0)
    lanes.push(msgs("sa", "n1", 10), 0.0)
    batch = lanes.take(0.0, lim, 10)
    assert len(batch) == 1  # burst 1
    lim.penalize(("sender", "n1"), 5.0, now=0.1)  # HTTP 429
    assert lanes.retry(batch[0], 5.0, 0.1)
    assert lanes.take(1.0, lim, 10) == []
    assert lanes.next_wakeup(1.0) == pytest.approx(5.1)
    assert lanes.take(5.1, lim, 10)[0].message_id == batch[0].message_id


def test_next_wakeup_lets_the_actor_sleep() -> None:
    lanes, lim = Lanes(), limiter(n1=0.5)
    assert lanes.next_wakeup(0.0) is None
    lanes.push(msgs("sa", "n1", 3), 0.0)
    assert lanes.next_wakeup(0.0) == 0.0
    assert len(lanes.take(0.0, lim, 10)) == 1
    assert lanes.next_wakeup(0.0) == pytest.approx(2.0)
    assert lanes.take(1.0, lim, 10) == []  # woken early: nothing, and no tokens spent
    assert len(lanes.take(2.0, lim, 10)) == 1

    later = msgs("sb", "m1", 1, not_before=50.0)
    lanes.push(later, 2.0)
    drain(lanes, lim, until=10.0, now=2.0)
    assert lanes.next_wakeup(10.0) == pytest.approx(50.0)


@pytest.mark.parametrize("rate", [1.0, 3.0, 4.5, 100.0, 0.5])
def test_lanes_keep_every_number_at_its_rate(rate: float) -> None:
    lim = limiter(n1=rate, n2=rate)
    lim.configure(("sub_account", "sa"), rate=2 * rate + 1, burst=2)
    lanes = Lanes()
    lanes.push(msgs("sa", "n1", 10_000) + msgs("sa", "n2", 10_000, "transactional"), 0.0)
    sent = drain(lanes, lim, until=60.0)
    for sender in ("n1", "n2"):
        times = [t for t, item in sent if item.path[-1][1] == sender]
        worst = max(bisect.bisect_right(times, t + 1 + 1e-9) - i for i, t in enumerate(times))
        assert worst <= math.floor(rate + 1 + 1e-9)
        assert len(times) >= 0.9 * rate * 60


def test_raising_a_limit_takes_effect_at_once_after_wake_all() -> None:
    lanes, lim = Lanes(), limiter(n1=0.1)
    lanes.push(msgs("sa", "n1", 20), 0.0)
    assert len(lanes.take(0.0, lim, 20)) == 1
    assert lanes.next_wakeup(0.0) == pytest.approx(10.0)

    lim.configure(("sender", "n1"), rate=10, burst=1, now=1.0)  # number upgraded to 10 MPS
    lanes.wake_all()
    assert lanes.next_wakeup(1.0) == 1.0
    sent = drain(lanes, lim, until=3.0, now=1.0)
    assert len(sent) == 19 and sent[-1][0] <= 3.0


def test_a_lane_fed_in_many_small_batches_keeps_its_bookkeeping_bounded() -> None:
    lanes, lim = Lanes(), NestedLimiter()
    scheduled = msgs("sa", "n1", 1, not_before=1_000.0)  # e.g. a retry far in the future
    lanes.push(scheduled, 0.0)
    for i in range(3_000):  # the scheduler trickles in one message at a time
        now = i * 0.01
        lanes.push(msgs("sa", "n1", 1), now)
        assert len(lanes.take(now, lim, 10)) == 1
        lanes.complete(lanes.in_flight)
    assert len(lanes._timers) <= 4 * len(lanes._lanes) + 1_025
    assert lanes.next_wakeup(30.0) == pytest.approx(1_000.0)
    assert lanes.take(1_000.0, lim, 10) == scheduled


def test_thousands_of_sub_accounts_behind_one_provider_limit_cost_little() -> None:
    calls = Counter[str]()

    class CountingLimiter(NestedLimiter):
        def acquire(self, *args: Any, **kwargs: Any) -> Any:
            calls["acquire"] += 1
            return super().acquire(*args, **kwargs)

    lim = CountingLimiter()
    lim.configure(PROVIDER, rate=100, burst=1)
    lanes = Lanes()
    for i in range(2_000):
        lanes.push(msgs(f"sa{i}", f"n{i}", 5), 0.0)
    sent = drain(lanes, lim, until=10.0)

    assert len(sent) >= 0.9 * 100 * 10
    assert calls["acquire"] <= 2 * len(sent) + 2_000  # no thundering herd on each token
    assert len({item.sub_account_id for _, item in sent}) == len(sent)  # round-robin


def test_depth_and_in_flight_are_reported_per_sub_account() -> None:
    lanes, lim = Lanes(), NestedLimiter()
    lanes.push(msgs("sa", "n1", 3) + msgs("sa", "n1", 1, "reply") + msgs("sb", "m1", 2), 0.0)
    taken = lanes.take(0.0, lim, 2)
    assert lanes.depth() == {"sa": {"reply": 0, "transactional": 0, "bulk": 3},
                             "sb": {"reply": 0, "transactional": 0, "bulk": 1}}
    assert set(lanes.in_flight) == set(ids(taken))
    assert lanes.complete(ids(taken)) == 2 and not lanes.in_flight


def test_outbound_items_are_small() -> None:
    item = msgs("sa", "n1", 1, campaign_id="c1")[0]
    assert not hasattr(item, "__dict__")
    with pytest.raises(ValueError):
        Lanes().push([Outbound("x", "sa", "urgent", path("sa", "n1"))], 0.0)  # type: ignore[arg-type]


@pytest.mark.parametrize(("seed", "ahead"), [(s, a) for s in range(6) for a in (0.0, 0.25)])
def test_random_traffic_never_stalls_duplicates_sends_early_or_breaks_limits(
        seed: int, ahead: float) -> None:
    # With `ahead`, messages are taken up to that long before they leave, at their own time.
    rng = random.Random(seed)
    lim, lanes = NestedLimiter(), Lanes(ahead=ahead)
    lim.configure(PROVIDER, rate=20, burst=5, per_request=True)
    numbers = {f"sa{i}": [f"sa{i}-n{j}" for j in range(3)] for i in range(4)}
    for sa, nums in numbers.items():
        lim.configure(("sub_account", sa), rate=rng.choice([2.0, 4.5, 8.0]),
                      burst=rng.choice([1, 2]))
        for n in nums:
            lim.configure(("sender", n), rate=rng.choice([0.5, 1.0, 3.0]), burst=1)
    must_send: set[str] = set()
    sent: list[tuple[float, Outbound]] = []
    penalties: list[tuple[str, float, float]] = []
    serial = itertools.count()
    now = 0.0

    def step(now: float, pushing: bool) -> float:
        if pushing and rng.random() < 0.3:
            sa = rng.choice(list(numbers))
            priority: Priority = rng.choice(["reply", "transactional", "bulk", "bulk"])
            where = path(sa, rng.choice(numbers[sa]))
            batch = [Outbound(f"r{next(serial)}", sa, priority, where,
                              cost=rng.choice([1, 1, 2, 3]),
                              not_before=now + rng.choice([0.0, 0.0, rng.uniform(0, 5)]))
                     for _ in range(rng.randint(1, 8))]
            lanes.push(batch, now)
            must_send.update(ids(batch))
        if pushing and rng.random() < 0.05 and must_send:
            victims = rng.sample(sorted(must_send), min(3, len(must_send)))
            must_send.difference_update(lanes.cancel(victims))
        if pushing and rng.random() < 0.02:
            number = rng.choice([n for nums in numbers.values() for n in nums])
            seconds = rng.uniform(0.5, 10)
            lim.penalize(("sender", number), seconds, now)
            penalties.append((number, now, now + seconds))
        batch = lanes.take_timed(now, lim, rng.randint(1, 40))
        for item, at in batch:
            assert item.not_before <= now <= at <= now + ahead
            if rng.random() < 0.05:
                assert lanes.retry(item, rng.uniform(0, 3), now)
            else:
                sent.append((at, item))
                lanes.complete([item.message_id])
        wake = lanes.next_wakeup(now)
        assert wake is None or wake > now or batch, "the actor would spin"
        if not pushing:
            return now if wake is None else max(wake, now)
        return min(wake if wake is not None else math.inf, now + rng.expovariate(4.0))

    while now < 120.0:
        now = step(now, pushing=True)
    while len(lanes) or lanes.in_flight:
        now = step(now, pushing=False)
        assert now < 2_000.0, "the backlog stalled"

    sent_ids = [item.message_id for _, item in sent]
    assert len(sent_ids) == len(set(sent_ids))  # nobody texted twice
    assert set(sent_ids) == must_send  # nothing stalled or lost, nothing cancelled went out
    assert lanes.next_wakeup(now) is None

    for number, start, end in penalties:  # a throttled number stayed quiet
        # (a send at the very instant of the 429 was the one throttled: it went just before;
        # and what was already taken, up to `ahead` before it leaves, still goes)
        assert not [t for t, item in sent
                    if item.path[-1][1] == number and start + ahead < t < end]
    for key in {k for _, item in sent for k in item.path}:
        limit = lim.limit(key)
        assert limit is not None
        charged = sorted((t, lim.units(key, item.cost)) for t, item in sent if key in item.path)
        times = [t for t, _ in charged]
        for i, (t, _) in enumerate(charged):
            j = bisect.bisect_right(times, t + 1.0 + 1e-9)
            # One message may go into debt when it costs more than the burst. A level that
            # did not set a message's departure may see it leave up to `ahead` after its grant.
            allowed = limit.rate * (1.0 + ahead) + max(limit.burst,
                                                       3 if not limit.per_request else 1)
            assert sum(u for _, u in charged[i:j]) <= allowed + 1e-6


def paced(lanes: Lanes, lim: NestedLimiter, until: float, every: float = 0.01,
          max_n: int = 200, now: float = 0.0) -> tuple[list[tuple[float, Outbound]], list[int]]:
    """The Sender shard's loop with a horizon: take what falls due within it, start each
    message at its departure time, pump again after `every` (or when `next_wakeup` says)."""
    sent: list[tuple[float, Outbound]] = []
    batches: list[int] = []
    while now <= until:
        batch = lanes.take_timed(now, lim, max_n)
        if batch:
            batches.append(len(batch))
        sent += [(at, item) for item, at in batch]
        lanes.complete(item.message_id for item, _ in batch)
        wake = lanes.next_wakeup(now)
        if wake is None:
            break
        now = max(wake, now + every)
    return sorted(sent, key=lambda s: s[0]), batches


def test_a_horizon_fills_batches_while_each_number_keeps_its_exact_rate() -> None:
    rate = 1000 * 0.98
    lim = NestedLimiter()
    numbers = [f"n{i}" for i in range(10)]
    for n in numbers:
        lim.configure(("sender", n), rate=rate, burst=1)
    lanes = Lanes(ahead=0.02)
    for n in numbers:
        lanes.push(msgs("sa", n, 5_000), now=0.0)
    sent, batches = paced(lanes, lim, until=3.0)

    # Without a horizon each take got one message per number; with it, about 10 ms worth.
    assert sum(batches) / len(batches) >= 0.9 * 10 * rate * 0.01
    for n in numbers:
        times = [t for t, item in sent if item.path[-1] == ("sender", n)]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert min(gaps) >= 1 / rate - 1e-9  # paced at the number's rate, never bunched
        windows = [bisect.bisect_right(times, t + 1.0) - i for i, t in enumerate(times)]
        assert max(windows) <= rate + 1  # no one-second window above limit + burst
        assert len(times) >= 0.99 * rate * 3  # and the rate is used


def test_a_reply_overtakes_bulk_by_at_most_the_horizon() -> None:
    lim = limiter(n1=100.0)
    lanes = Lanes(ahead=0.02)
    lanes.push(msgs("sa", "n1", 10_000), now=0.0)
    sent, _ = paced(lanes, lim, until=0.5)
    now = 0.5
    reply = msgs("sa", "n1", 1, "reply")
    lanes.push(reply, now)
    later, _ = paced(lanes, lim, until=1.0, now=now)
    when = next(t for t, item in later if item == reply[0])
    # The bulk already taken (20 ms of the number's tokens) goes first; the reply is next.
    assert when - now <= 0.02 + 2 / 100 + 1e-9
    assert [t for t, item in later if t > when] and \
        all(item != reply[0] for t, item in later if t < when)
    times = sorted(t for t, _ in sent + later)
    assert max(b - a for a, b in itertools.pairwise(times)) < 0.05  # no stall
    assert min(b - a for a, b in itertools.pairwise(times)) >= 1 / 100 - 1e-9
