"""Nested token buckets under a fake clock: what the carrier would see from a Sender shard."""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
import random

import pytest

from actors.limiter import LimitKey, NestedLimiter, TokenBucket
from hub.retry import backoff

PROVIDER: LimitKey = ("provider", "pa-1")
SA: LimitKey = ("sub_account", "sa-1")
S1: LimitKey = ("sender", "+15550000001")
S2: LimitKey = ("sender", "+15550000002")


def _max_in_window(times: list[float], width: float = 1.0) -> int:
    """Most grants in any closed window [t, t + width] (the worst window starts at a grant)."""
    return max((bisect.bisect_right(times, t + width + 1e-9) - i for i, t in enumerate(times)),
               default=0)


def _drain(limiter: NestedLimiter, paths: dict[str, tuple[LimitKey, ...]], seconds: float,
           cost: int = 1) -> dict[str, list[float]]:
    """Each path has an endless backlog and retries exactly after the wait it was given."""
    sent: dict[str, list[float]] = {name: [] for name in paths}
    due = [(0.0, name) for name in paths]
    while due:
        now, name = heapq.heappop(due)
        if now > seconds:
            break
        wait = limiter.try_acquire(paths[name], now, cost)
        if wait == 0.0:
            sent[name].append(now)
        heapq.heappush(due, (now + wait, name))
    return sent


def test_nested_grant_is_all_or_nothing() -> None:
    lim = NestedLimiter()
    lim.configure(PROVIDER, rate=10, burst=10)
    lim.configure(SA, rate=1, burst=1)
    lim.configure(S1, rate=5, burst=5)
    path = (PROVIDER, SA, S1)

    assert lim.try_acquire(path, 0.0) == 0.0
    before = {k: lim.available(k, 0.0) for k in path}
    wait = lim.try_acquire(path, 0.0)

    assert wait == pytest.approx(1.0)  # the sub-account is the level that lacks a token
    assert {k: lim.available(k, 0.0) for k in path} == before  # nobody else was charged
    assert lim.acquire(path, 0.0)[1] == SA


def test_wait_is_the_longest_of_the_lacking_levels() -> None:
    lim = NestedLimiter()
    lim.configure(SA, rate=2, burst=1)  # refills in 0.5 s
    lim.configure(S1, rate=0.25, burst=1)  # refills in 4 s
    assert lim.try_acquire((SA, S1), 0.0) == 0.0
    assert lim.acquire((SA, S1), 0.0) == (pytest.approx(4.0), S1)


def test_unconfigured_levels_are_unlimited() -> None:
    lim = NestedLimiter()
    lim.configure(S1, rate=1, burst=1)
    assert lim.try_acquire((PROVIDER, SA, ("campaign", "c-1")), 0.0) == 0.0
    assert all(lim.try_acquire((PROVIDER, SA), 0.0) == 0.0 for _ in range(1000))
    assert lim.available(("domain", "gmail.com"), 0.0) == math.inf


@pytest.mark.parametrize("rate", [1.0, 3.0, 4.5, 100.0, 0.5])
def test_backlog_never_exceeds_rate_plus_burst_and_uses_the_rate(rate: float) -> None:
    lim = NestedLimiter()
    lim.configure(PROVIDER, rate=1000, burst=50)
    lim.configure(SA, rate=rate * 2, burst=2)
    lim.configure(S1, rate=rate, burst=1)

    times = _drain(lim, {"s1": (PROVIDER, SA, S1)}, seconds=60.0)["s1"]

    assert _max_in_window(times) <= math.floor(rate + 1 + 1e-9)
    assert len(times) >= 0.9 * rate * 60


def test_siblings_share_the_sub_account_rate_without_wasting_it() -> None:
    lim = NestedLimiter()
    lim.configure(SA, rate=4.5, burst=1)
    for sender in (S1, S2):
        lim.configure(sender, rate=3, burst=1)

    sent = _drain(lim, {"a": (SA, S1), "b": (SA, S2)}, seconds=60.0)
    both = sorted(sent["a"] + sent["b"])

    assert _max_in_window(both) <= 5  # the sub-account's 4.5/s + burst 1
    assert all(_max_in_window(sent[s]) <= 4 for s in sent)  # each number's 3/s + burst 1
    assert len(both) >= 0.9 * 4.5 * 60


def test_segments_count_against_carrier_levels_and_requests_against_the_api() -> None:
    lim = NestedLimiter()
    lim.configure(PROVIDER, rate=100, burst=1, per_request=True)  # Twilio's API concurrency
    lim.configure(S1, rate=1, burst=1)  # a long code: 1 segment per second

    assert lim.try_acquire((PROVIDER, S1), 0.0, n=3) == 0.0  # a 3-segment SMS may leave...
    assert lim.try_acquire((PROVIDER, S1), 0.5, n=1) == pytest.approx(2.5)  # ...and costs 3 s
    assert lim.available(PROVIDER, 0.01) == pytest.approx(1.0)  # but only one API request
    assert lim.units(PROVIDER, 3) == 1 and lim.units(S1, 3) == 3


def test_long_messages_keep_the_long_run_segment_rate() -> None:
    lim = NestedLimiter()
    lim.configure(S1, rate=4.5, burst=1)
    times = _drain(lim, {"s1": (S1,)}, seconds=60.0, cost=3)["s1"]
    assert 0.9 * 4.5 * 60 <= 3 * len(times) <= 4.5 * 60 + 3


def test_penalty_blocks_the_throttled_key_then_recovers() -> None:
    lim = NestedLimiter()
    lim.configure(S1, rate=1, burst=1)
    lim.configure(S2, rate=1, burst=1)
    lim.penalize(S1, 5.0, now=10.0)  # Twilio answered 30022 for this number

    assert lim.try_acquire((SA, S1), 10.0) == pytest.approx(5.0)
    assert lim.try_acquire((SA, S2), 10.0) == 0.0  # its sibling is not throttled
    assert lim.try_acquire((SA, S1), 14.9) == pytest.approx(0.1)
    assert lim.try_acquire((SA, S1), 15.0) == 0.0
    assert lim.try_acquire((SA, S1), 15.0) == pytest.approx(1.0)  # resumes at rate, no flood


def test_penalty_applies_to_unconfigured_keys_and_never_shortens() -> None:
    lim = NestedLimiter()
    lim.penalize(PROVIDER, 30.0, now=0.0)  # HTTP 429 from the provider account
    lim.penalize(PROVIDER, 1.0, now=1.0)
    assert lim.try_acquire((PROVIDER, SA), 20.0) == pytest.approx(10.0)
    assert lim.blocked_until(PROVIDER, 20.0) == pytest.approx(30.0)
    assert lim.try_acquire((PROVIDER, SA), 30.0) == 0.0


def test_backoff_grows_is_capped_and_never_near_zero() -> None:
    rng = random.Random(7)
    waits = [[backoff(a, rng=rng) for _ in range(200)] for a in range(10)]
    for attempt, samples in enumerate(waits):
        step = min(60.0, 2.0**attempt)
        assert all(step / 2 <= w <= step for w in samples)
        assert max(samples) - min(samples) > step / 4  # jitter spreads a throttled batch
    assert backoff(10_000, rng=rng) <= 60.0
    assert backoff(3, rng=random.Random(1)) == backoff(3, rng=random.Random(1))
    assert 4.0 <= backoff(3) <= 8.0  # without an rng it still honours the bounds


def test_reconfiguring_keeps_accrued_tokens_capped() -> None:
    bucket = TokenBucket(rate=1, burst=10, now=0.0)
    assert bucket.try_take(10, 0.0)
    bucket.set_rate(rate=100, burst=3, now=2.0)  # 2 tokens accrued at the old rate
    assert bucket.available(2.0) == pytest.approx(2.0)
    assert bucket.available(3.0) == pytest.approx(3.0)  # new rate, new cap
    assert bucket.wait_time(1, 3.0) == 0.0

    lim = NestedLimiter()
    lim.configure(S1, rate=1, burst=1)
    assert lim.try_acquire((S1,), 0.0) == 0.0
    lim.configure(S1, rate=10, burst=1, now=0.0)  # the number was upgraded
    assert lim.try_acquire((S1,), 0.0) == pytest.approx(0.1)


def test_a_lifted_cap_is_unlimited_again() -> None:
    lim = NestedLimiter()
    campaign: LimitKey = ("campaign", "c-1")
    lim.configure(campaign, rate=1, burst=1)
    assert lim.try_acquire((SA, campaign), 0.0) == 0.0
    assert lim.try_acquire((SA, campaign), 0.0) == pytest.approx(1.0)
    lim.unconfigure(campaign)  # the marketer removed the campaign's rate cap
    assert lim.try_acquire((SA, campaign), 0.0) == 0.0
    assert lim.key_wait(campaign, 5, 0.0) == 0.0


def test_invalid_limits_are_refused() -> None:
    lim = NestedLimiter()
    with pytest.raises(ValueError):
        lim.configure(S1, rate=0, burst=1)
    with pytest.raises(ValueError):
        lim.configure(S1, rate=1, burst=math.inf)


def test_idle_buckets_are_evicted_for_10k_sub_accounts() -> None:
    lim = NestedLimiter(idle_ttl=60.0)
    paths = []
    for i in range(10_000):
        sa: LimitKey = ("sub_account", f"sa-{i}")
        lim.configure(sa, rate=10, burst=10)
        senders = [("sender", f"sa-{i}-n{j}") for j in range(3)]
        for sender in senders:
            lim.configure(sender, rate=1, burst=1)
        paths += [(sa, s) for s in senders]
    for path in paths:
        assert lim.try_acquire(path, 0.0) == 0.0
    assert lim.bucket_count == 40_000

    assert lim.sweep(30.0) == 0  # full since t=1 (senders) but not for a minute yet
    assert lim.sweep(62.0) == 40_000
    assert lim.bucket_count == 0
    assert lim.try_acquire(paths[0], 62.0) == 0.0  # rebuilt from config on demand
    assert lim.try_acquire(paths[0], 62.0) == pytest.approx(1.0)


def test_eviction_changes_no_decision() -> None:
    rng = random.Random(3)
    keys = [("sender", f"n{i}") for i in range(20)] + [("sub_account", f"sa{i}") for i in range(4)]
    evicting, keeping = NestedLimiter(idle_ttl=0.5), NestedLimiter(idle_ttl=math.inf)
    for lim in (evicting, keeping):
        for i, key in enumerate(keys):
            lim.configure(key, rate=0.5 + i % 5, burst=1 + i % 3)
    now = 0.0
    for _ in range(5_000):
        now += rng.expovariate(2.0)
        path = (keys[20 + rng.randrange(4)], keys[rng.randrange(20)])
        cost = rng.choice((1, 1, 1, 2, 3))
        assert evicting.try_acquire(path, now, cost) == keeping.try_acquire(path, now, cost)
        evicting.sweep(now)
    assert evicting.bucket_count < keeping.bucket_count


def test_reservation_keeps_tokens_a_waiting_reply_will_need() -> None:
    lim = NestedLimiter()
    lim.configure(SA, rate=2, burst=1)
    reply_due = {SA: (1.0, 0.25)}  # a reply will need 1 sub-account token at t=0.25

    assert lim.acquire((SA, S2), 0.0, 1, reserved=reply_due) == (math.inf, SA)
    assert lim.available(SA, 0.0) == 1.0  # refused without taking anything
    # A reply due later leaves room: the bucket refills by then.
    assert lim.acquire((SA, S2), 0.0, 1, reserved={SA: (1.0, 0.5)}) == (0.0, None)


def test_ahead_grants_tokens_falling_due_soon_each_with_its_departure_time() -> None:
    lim = NestedLimiter()
    lim.configure(S1, rate=1000, burst=1)  # one token a millisecond
    grants = []
    while True:
        wait, key = lim.acquire((SA, S1), 0.0, ahead=0.02)
        if key is not None:
            break
        grants.append(wait)
    # 20 ms of tokens in one go (and the first one banked), each due 1 ms after the last.
    assert len(grants) == 21
    assert grants == pytest.approx([i / 1000 for i in range(21)])
    assert key == S1 and wait > 0.02
    # The bucket is in debt: nothing more until its tokens fall within the horizon again.
    assert lim.acquire((SA, S1), 0.001, ahead=0.02)[1] is None
    assert lim.acquire((SA, S1), 0.001, ahead=0.02)[1] == S1


def test_ahead_departure_is_the_latest_level_and_rates_stay_exact() -> None:
    lim = NestedLimiter()
    lim.configure(SA, rate=50, burst=1)
    lim.configure(S1, rate=200, burst=1)
    departures: list[float] = []
    now = 0.0
    while now < 10.0:  # a caller that asks every 10 ms for what falls due within 20 ms
        while (grant := lim.acquire((SA, S1), now, ahead=0.02))[1] is None:
            departures.append(now + grant[0])
        now += 0.01
    gaps = [b - a for a, b in itertools.pairwise(departures)]
    assert min(gaps) == pytest.approx(1 / 50)  # the sub-account's pace, never faster
    assert _max_in_window(departures) <= 50 + 1
    assert len(departures) >= 0.99 * 50 * 10  # and none of its tokens went unused
