"""The webhook inbox's applier, apart from the requests: `python -m hub.applier`, which
`hub serve` starts beside its gateway and stops with it.

One applier at a time applies, whatever the number of gateway replicas: the one holding a
PostgreSQL advisory lock (`lead`). The others wait on the lock and take over when the
leader's session ends (a crash or a stop closes its connection, which frees the lock; a
transaction it had open rolls back, and its rows stay due). The leader LISTENs on the
channel the inbox NOTIFYs once an insert has committed (hub/store/webhooks.py,
`wake_applier`), and looks for due rows every second anyway.

So one process serves HTTP and the WebSockets while another applies (BENCHMARKS.md, webhook
sections), and the appliers of several replicas no longer queue on the same sub-accounts'
`event_seq` row locks.

Compliance replies queued by an inbound STOP or HELP are not handed to a sender shard from
this process (it has no Ray connection): the shards claim queued messages from PostgreSQL
every `claim_interval_s` (0.25 s). An app built with `create_app(apply_webhooks=True)`, as
the tests build it, runs `lead` in its own process and hands replies off at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from typing import Any

from config.logging import setup_logging
from config.settings import Settings
from hub.context import Hub
from hub.inbox import Applier, HandOff
from hub.store.webhooks import INBOX_CHANNEL

log = logging.getLogger(__name__)

#: pg_advisory_lock key of the leading applier (any constant unique in this database).
LEADER_LOCK = 0x5B_0A2D_0001


async def lead(hub: Hub, hand_off: HandOff, *, every_s: float = 1.0,
               lock: int = LEADER_LOCK) -> None:
    """Apply the inbox whenever this process holds the advisory lock `lock` (tried every
    `every_s`); runs until cancelled."""
    applier = Applier(hub, hand_off, every_s=every_s)

    def wake(*_: object) -> None:
        applier.wake()

    while True:
        try:
            async with hub.pool.acquire() as conn:
                if await conn.fetchval("SELECT pg_try_advisory_lock($1)", lock):
                    await conn.add_listener(INBOX_CHANNEL, wake)
                    log.info("webhook applier leading", extra={"pid": os.getpid()})
                    run = asyncio.create_task(applier.run())  # returns only if cancelled
                    try:
                        while not conn.is_closed() and not run.done():
                            await asyncio.wait([run], timeout=every_s)
                    finally:
                        run.cancel()
                        await asyncio.gather(run, return_exceptions=True)
                        # The pool does not reset sessions (hub/db.py): ending this one frees
                        # the lock and the LISTEN.
                        conn.terminate()
                    log.warning("webhook applier stopped leading")
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning("webhook applier could not take the lead; retrying", exc_info=True)
        await asyncio.sleep(every_s)


async def _no_hand_off(messages: list[dict[str, Any]]) -> None:
    """Sender shards claim queued replies themselves (see the module's docstring)."""


async def _run(settings: Settings) -> None:
    assert settings.database_url and settings.redis_url, "set by `hub serve`"
    hub = await Hub.open(settings, settings.database_url, settings.redis_url)
    task = asyncio.create_task(lead(hub, _no_hand_off))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    # The gateway that started this process (a parent gone before this line ran leaves
    # init as the parent, which would never change).
    parent = int(os.environ.get("HUB_PARENT_PID") or os.getppid())
    try:
        # Orphaned (the gateway was killed): stop, so that another replica's applier leads.
        while not task.done() and os.getppid() == parent:
            await asyncio.wait([task], timeout=1.0)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await hub.close()


def main() -> None:
    import uvloop

    settings = Settings()
    setup_logging(settings.log_level, settings.log_json)
    uvloop.run(_run(settings))


if __name__ == "__main__":
    main()
