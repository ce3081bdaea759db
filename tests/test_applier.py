"""The webhook applier's leadership (hub/applier.py): of several appliers, one at a time
holds the advisory lock and applies; when it stops, another takes over. (That the rows are
applied, after a crash too, is for tests/test_webhooks.py, tests/test_chaos.py and
tests/test_bench_webhooks.py, which runs the applier as `hub serve` does: its own process.)
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import Any

from hub import applier
from hub.context import Hub
from hub.embedded import Services
from tests.test_sending import wait_for


async def _holders(hub: Hub, key: int) -> list[int]:
    rows = await hub.pool.fetch(
        """SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted
           AND classid = $1 AND objid = $2 AND objsubid = 1""",
        key >> 32, key & 0xFFFF_FFFF)
    return [r["pid"] for r in rows]


async def _no_hand_off(messages: list[dict[str, Any]]) -> None:
    raise AssertionError("nothing to hand off here")


async def test_one_applier_leads_and_another_takes_over(hub: Hub, services: Services
                                                        ) -> None:
    key = random.randrange(1 << 40, 1 << 41)  # not the real lock: the session's gateway
    # applies the real inbox meanwhile
    other = await Hub.open(hub.settings, services.database_url, services.redis_url)

    async def one_holder() -> list[int]:
        holders = await _holders(hub, key)
        assert len(holders) <= 1, holders
        return holders

    first = asyncio.create_task(applier.lead(hub, _no_hand_off, every_s=0.05, lock=key))
    second: asyncio.Task[None] | None = None
    try:
        [leader] = await wait_for(one_holder, timeout=10, every=0.02)
        # Its own pool, as in another process: other database sessions.
        second = asyncio.create_task(applier.lead(other, _no_hand_off, every_s=0.05,
                                                  lock=key))
        for _ in range(20):  # a second's worth of tries by the second one: it waits
            assert await one_holder() == [leader]
            await asyncio.sleep(0.05)
        first.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await first

        async def taken_over() -> bool:
            holders = await one_holder()
            return bool(holders) and holders != [leader]

        await wait_for(taken_over, timeout=10, every=0.02)
    finally:
        for task in (first, second):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await other.close()
    await wait_for(lambda: _none_left(hub, key), timeout=10, every=0.05)


async def _none_left(hub: Hub, key: int) -> bool:
    return not await _holders(hub, key)
