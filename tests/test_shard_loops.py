"""A shard's loop outlives a round that fails with an unexpected error (a bug, not an
outage): it logs the error with its traceback and carries on, on the real PostgreSQL and
the sandbox carrier. A loop that died would leave a live actor that answers the
Supervisor's ping and sends nothing.

The failure is injected into the core's own round (a subclass), not into PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
import pytest

from actors.ring import sender_owner
from actors.scheduler import SchedulerCore
from actors.sender import SenderCore
from hub.context import Hub
from tests.test_lease_at_creation import _core, _running, _send, _sent_once, _sub_account
from tests.test_scheduler_tick import _campaigns, _principal
from tests.test_sending import carrier, carrier_log, wait_for

__all__ = ["carrier", "carrier_log"]  # fixtures shared with test_sending


def _failing_once(method: Any) -> Any:
    """`method` that raises a RuntimeError the first time it is called."""
    calls = 0

    async def wrapped(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug in one round")
        return await method(*args, **kwargs)

    return wrapped


def _logged_bug(caplog: pytest.LogCaptureFixture, message: str) -> None:
    errors = [r for r in caplog.records
              if r.levelno == logging.ERROR and r.getMessage() == message]
    assert len(errors) == 1 and errors[0].exc_info is not None
    assert errors[0].error == "RuntimeError: a bug in one round"  # type: ignore[attr-defined]


async def test_a_sender_shard_keeps_sending_after_a_round_fails_unexpectedly(
    hub: Hub, carrier: Any, carrier_log: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    slot = 9_107
    sa = await _sub_account(hub, carrier.url, slot)
    m = await _send(hub, sa, None)  # created unleased: only the shard's claim finds it
    core: SenderCore = _core(hub, sender_owner("sms", 0), slot)
    core.claim = _failing_once(core.claim)  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="actors.sender"):
        async with _running(core):
            await _sent_once(carrier_log, m["to_address"])
    _logged_bug(caplog, "sender shard round failed unexpectedly; retrying")


async def test_a_scheduler_keeps_ticking_after_a_tick_fails_unexpectedly(
    hub: Hub, caplog: pytest.LogCaptureFixture
) -> None:
    slot = 5_006
    (campaign,) = await _campaigns(hub, await _principal(hub), 1, slot, quiet=False)
    core = SchedulerCore(f"scheduler:test{slot}", (slot,), hub.pool, hub.redis)
    core.tick = _failing_once(core.tick)  # type: ignore[method-assign]

    async def created() -> int:
        n: int = await hub.pool.fetchval(
            "SELECT count(*) FROM messages WHERE campaign_id = $1", campaign["id"])
        return n

    stop = asyncio.Event()
    with caplog.at_level(logging.WARNING, logger="actors.scheduler"):
        task = asyncio.create_task(core.run(stop, interval_s=0.05, idle_interval_s=0.05))
        try:
            await wait_for(created, timeout=30)
        finally:
            stop.set()
            await task
    assert await created() == 1  # the contact whose window is open; the other opted out
    _logged_bug(caplog, "scheduler tick failed unexpectedly; retrying")
