"""Nested token buckets: a message leaves only when every level of its path has a token.

A path lists limit keys from the outermost level to the innermost, e.g.
``(("provider", pa), ("sub_account", sa), ("campaign", c), ("sender", s))``. Keys nobody has
configured are unlimited. Pure state: time is always passed in as ``now`` (monotonic seconds).

Units (decided after Twilio's documentation): carrier throughput — a number's MPS, a 10DLC
campaign's or a sub-account's share — is counted in *message segments*; Twilio sizes each
number's queue in segments (a 1-MPS long code holds 36,000 segments, i.e. 10 hours). Twilio's
REST concurrency limit (HTTP 429 / 20429), by contrast, counts API *requests*. So
``try_acquire(path, now, n)`` charges ``n`` (an SMS's segment count, 1 for email and voice) to
every level, except levels configured ``per_request=True``, which are charged 1 per message.

Fidelity: a bucket starts full and refills continuously, so in any window of ``T`` seconds it
grants at most ``burst + rate * T`` units, and a caller that retries after the wait it was told
loses no time. A message costlier than the burst (a 3-segment SMS on a burst-1 number) leaves
when the bucket is full and puts the bucket into debt, which keeps the long-run rate exact.
The same debt lets a caller take tokens a little ahead of time (``acquire(..., ahead=)``) as
long as each message leaves when its token falls due.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

LimitKey = tuple[str, str]

#: Rounding slack: a caller who sleeps exactly the wait it was given must not be refused
#: because ``(now - stamp) * rate`` came out a hair short of a whole token.
_EPS = 1e-9
#: No wait shorter than this is returned: a wait below the clock's resolution (at large
#: monotonic values ``now + 1e-13 == now``) would make the caller spin.
MIN_WAIT = 1e-6


class TokenBucket:
    """``rate`` units per second, up to ``burst`` banked; refilled lazily on each access."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float = 0.0) -> None:
        _check(rate, burst)
        self.rate = float(rate)
        self.burst = float(burst)
        self.tokens = self.burst
        self.stamp = now

    def _refill(self, now: float) -> None:
        # A `now` older than the last access (callers on different clocks) adds nothing.
        if now > self.stamp:
            tokens = self.tokens + (now - self.stamp) * self.rate
            self.tokens = tokens if tokens < self.burst else self.burst
            self.stamp = now

    def available(self, now: float) -> float:
        self._refill(now)
        return self.tokens

    def wait_time(self, n: float, now: float) -> float:
        """Seconds until ``n`` units may be taken (0.0 if now)."""
        self._refill(now)
        need = n if n <= self.burst else self.burst  # costlier than burst: go when full
        deficit = need - self.tokens
        if deficit <= _EPS:
            return 0.0
        return max(deficit / self.rate, MIN_WAIT)

    def try_take(self, n: float, now: float) -> bool:
        if self.wait_time(n, now) > 0.0:
            return False
        self.tokens -= n
        return True

    def set_rate(self, rate: float, burst: float, now: float) -> None:
        """Reconfigure at runtime; tokens accrued so far (at the old rate) are kept, capped."""
        _check(rate, burst)
        self._refill(now)
        self.rate = float(rate)
        self.burst = float(burst)
        self.tokens = min(self.tokens, self.burst)

    def full_since(self) -> float:
        """When the bucket became (or will become) full if nothing is taken meanwhile."""
        return self.stamp + max(0.0, self.burst - self.tokens) / self.rate


def _check(rate: float, burst: float) -> None:
    if not (rate > 0 and math.isfinite(rate)):
        raise ValueError(f"rate must be positive and finite, got {rate!r}")
    if not (burst > 0 and math.isfinite(burst)):
        raise ValueError(f"burst must be positive and finite, got {burst!r}")


@dataclass(frozen=True, slots=True)
class Limit:
    rate: float
    burst: float
    per_request: bool = False


#: A reservation on one key: ``(units set aside, time by which they are needed)``.
Reservation = tuple[float, float]


class NestedLimiter:
    """Token buckets keyed ``(level, id)``, granted all-or-nothing along a path.

    Configuration lives in a plain dict (cheap even for 10k sub-accounts); buckets are built
    from it on first use and evicted by `sweep` once they have sat full for ``idle_ttl``. A
    bucket that is full carries no state beyond its config, so eviction changes no decision.
    """

    def __init__(self, *, idle_ttl: float = 300.0) -> None:
        self.idle_ttl = idle_ttl
        self._limits: dict[LimitKey, Limit] = {}
        self._buckets: dict[LimitKey, TokenBucket] = {}
        self._penalties: dict[LimitKey, float] = {}

    # --- configuration ---------------------------------------------------------------

    def configure(self, key: LimitKey, rate: float, burst: float, *, per_request: bool = False,
                  now: float | None = None) -> None:
        """Set a key's limit. With ``now``, tokens already accrued at the old rate are kept."""
        _check(rate, burst)
        self._limits[key] = Limit(float(rate), float(burst), per_request)
        bucket = self._buckets.get(key)
        if bucket is not None:
            if now is None:
                bucket.rate, bucket.burst = float(rate), float(burst)
                bucket.tokens = min(bucket.tokens, bucket.burst)
            else:
                bucket.set_rate(rate, burst, now)

    def unconfigure(self, key: LimitKey) -> None:
        """Make a key unlimited again (a sender removed, a campaign cap lifted)."""
        self._limits.pop(key, None)
        self._buckets.pop(key, None)

    def limit(self, key: LimitKey) -> Limit | None:
        return self._limits.get(key)

    def units(self, key: LimitKey, n: float) -> float:
        """What a message of cost ``n`` is charged at ``key``."""
        limit = self._limits.get(key)
        return 1.0 if limit is not None and limit.per_request else n

    @property
    def bucket_count(self) -> int:
        return len(self._buckets)

    # --- granting --------------------------------------------------------------------

    def try_acquire(self, path: Sequence[LimitKey], now: float, n: float = 1) -> float:
        """Take ``n`` from every level and return 0.0, or take nothing and return the wait."""
        return self.acquire(path, now, n)[0]

    def acquire(self, path: Sequence[LimitKey], now: float, n: float = 1,
                reserved: Mapping[LimitKey, Reservation] | None = None, *,
                ahead: float = 0.0) -> tuple[float, LimitKey | None]:
        """`try_acquire` that also names the level that made it wait (the longest wait).

        ``reserved`` lets a scheduler protect a waiting higher-priority message: on a key
        reserved ``(need, deadline)`` this request is refused unless, after taking, the bucket
        still refills to ``need`` by ``deadline``. Waiting cannot fix that (refill and deadline
        advance together), so the refusal is ``math.inf``: retry once the reservation is gone.
        Keys in a path must be distinct.

        ``ahead`` grants, now, tokens that fall due within that many seconds: the buckets go
        into debt and the answer is ``(wait, None)`` with ``wait <= ahead``, the time the
        caller must wait before the message leaves. Callers that start each message at its
        time keep every level's rate exact while taking many tokens per call. A refusal is
        ``(wait, key)`` with ``wait > ahead``.
        """
        worst = 0.0
        worst_key: LimitKey | None = None
        penalties = self._penalties
        for key in path:
            wait = 0.0
            if penalties:
                until = penalties.get(key)
                if until is not None and until > now:
                    wait = until - now
            limit = self._limits.get(key)
            if limit is not None:
                bucket = self._bucket(key, limit, now)
                units = 1.0 if limit.per_request else n
                bucket_wait = bucket.wait_time(units, now)
                if bucket_wait > wait:
                    wait = bucket_wait
                if wait <= ahead and reserved:
                    held = reserved.get(key)
                    if held is not None and _breaks_reservation(bucket, units, held, now):
                        wait = math.inf
            if wait > worst:
                worst, worst_key = wait, key
        if worst > ahead:
            return worst, worst_key
        for key in path:
            limit = self._limits.get(key)
            if limit is not None:
                # wait_time above refilled every bucket to `now`, so a plain debit is exact.
                self._buckets[key].tokens -= 1.0 if limit.per_request else n
        return worst, None

    def key_wait(self, key: LimitKey, units: float, now: float, *, spent: float = 0.0) -> float:
        """Seconds until ``key`` alone could grant ``units`` if ``spent`` were taken now."""
        wait = 0.0
        until = self._penalties.get(key)
        if until is not None and until > now:
            wait = until - now
        limit = self._limits.get(key)
        if limit is None:
            return wait
        bucket = self._bucket(key, limit, now)
        need = units if units <= bucket.burst else bucket.burst
        deficit = need - (bucket.available(now) - spent)
        if deficit > _EPS:
            wait = max(wait, deficit / bucket.rate, MIN_WAIT)
        return wait

    def available(self, key: LimitKey, now: float) -> float:
        """Units ``key`` could grant now (``math.inf`` when unconfigured), ignoring penalties."""
        limit = self._limits.get(key)
        if limit is None:
            return math.inf
        return self._bucket(key, limit, now).available(now)

    def _bucket(self, key: LimitKey, limit: Limit, now: float) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(limit.rate, limit.burst, now)
        return bucket

    # --- throttling feedback and housekeeping ----------------------------------------

    def penalize(self, key: LimitKey, seconds: float, now: float) -> None:
        """The provider throttled this key (429, Twilio 20429/30022, SMTP 4xx): refuse it
        until ``now + seconds``. Works on unconfigured keys too. Tokens keep accruing during
        the pause, so the key resumes with at most its burst: a pause, not a rate change."""
        until = now + max(0.0, seconds)
        if until > self._penalties.get(key, -math.inf):
            self._penalties[key] = until

    def blocked_until(self, key: LimitKey, now: float) -> float | None:
        until = self._penalties.get(key)
        return until if until is not None and until > now else None

    def sweep(self, now: float) -> int:
        """Drop buckets that have sat full for ``idle_ttl`` and expired penalties.

        O(buckets); call it every minute or so, not per message. Returns buckets evicted.
        """
        ttl = self.idle_ttl
        idle = [k for k, b in self._buckets.items() if now - b.full_since() >= ttl]
        for key in idle:
            del self._buckets[key]
        for key in [k for k, until in self._penalties.items() if until <= now]:
            del self._penalties[key]
        return len(idle)


def _breaks_reservation(bucket: TokenBucket, units: float, held: Reservation,
                        now: float) -> bool:
    need, deadline = held
    if need > bucket.burst:
        need = bucket.burst
    # Below the burst cap tokens grow linearly, so this is what remains at the deadline.
    left_at_deadline = bucket.tokens - units + bucket.rate * max(0.0, deadline - now)
    return left_at_deadline + _EPS < need
