"""How long a throttled send waits before its next attempt: the Sender shard uses it for a
provider's 429, the webhook applier for a throttled delivery receipt (hub/requeue.py)."""

from __future__ import annotations

import random


def backoff(attempt: int, base: float = 1.0, cap: float = 60.0, *,
            rng: random.Random | None = None) -> float:
    """Seconds to wait before retry ``attempt`` (0-based) after throttling.

    Exponential with "equal jitter": half the step is fixed, half random. Never close to
    zero — a throttled request retried a few milliseconds later is just another 429 — and the
    jitter spreads retries of a batch that was throttled together. A provider's Retry-After,
    when given, is a floor the caller applies on top: ``max(retry_after, backoff(...))``.
    Pure given ``rng``; without one it draws from the ``random`` module.
    """
    step = min(cap, base * 2.0 ** min(max(attempt, 0), 64))
    draw = rng.random() if rng is not None else random.random()
    return step / 2 + draw * step / 2
