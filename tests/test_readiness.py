"""`/readyz` answers within its probe timeout however a dependency behaves: a stalled (not
dead) PostgreSQL made asyncpg's clean-up of the cancelled probe hold the answer for a
minute (62 s, with the server SIGSTOPped), so a load balancer kept sending traffic."""

from __future__ import annotations

import asyncio

from gateway.routes.ops import check


async def test_a_probe_whose_clean_up_hangs_still_answers_down() -> None:
    release = asyncio.Event()
    cleaned = asyncio.Event()

    async def stalled() -> None:
        try:
            await asyncio.Event().wait()  # the server never answers
        finally:
            await release.wait()  # and cancelling waits on it too, as asyncpg's does
            cleaned.set()

    assert await asyncio.wait_for(check(stalled(), timeout=0.05), 30) == "down: TimeoutError"
    assert not cleaned.is_set()  # answered before the clean-up ended
    release.set()
    await asyncio.wait_for(cleaned.wait(), 30)


async def test_probe_outcomes() -> None:
    async def fine() -> int:
        return 1

    async def refused() -> None:
        raise ConnectionRefusedError

    assert await check(fine()) == "ok"
    assert await check(refused()) == "down: ConnectionRefusedError"
