"""How a shard's loop outlives a failed round: it logs the failure and tries again a second
later. A database, Redis or network error passes once the service is back, so it is a
warning; anything else is a bug, logged as an error with its traceback. Either way the loop
goes on: a loop that died would leave a live actor that answers the Supervisor's ping and
sends nothing."""

from __future__ import annotations

import asyncio
import logging

import asyncpg
from redis.exceptions import RedisError

TRANSIENT = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, RedisError)
RETRY_S = 1.0


async def round_failed(log: logging.Logger, what: str, owner: str, exc: Exception) -> None:
    extra = {"owner": owner, "error": f"{type(exc).__name__}: {exc}"}
    if isinstance(exc, TRANSIENT):
        log.warning("%s failed; retrying", what, extra=extra)
    else:
        log.error("%s failed unexpectedly; retrying", what, extra=extra, exc_info=exc)
    await asyncio.sleep(RETRY_S)
