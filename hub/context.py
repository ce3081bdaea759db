"""The hub's running services, built once at start-up and passed down: settings, the
PostgreSQL pool, Redis and the credential box. `transaction()` is the one way writers run."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import asyncpg
import redis.asyncio as aioredis

from config.settings import Settings
from hub import db, events
from hub.crypto import SecretBox


@dataclass
class Tx:
    """A transaction in progress and the events it will publish once committed."""

    conn: asyncpg.Connection
    pending: list[events.PendingEvent] = field(default_factory=list)
    #: a joined inner transaction failed: this one must not commit (see `Hub.transaction`)
    broken: bool = False

    def emit(self, sub_account_id: UUID, type_: str, data: dict[str, Any],
             topic: str | None = None) -> None:
        self.pending.append(events.PendingEvent(sub_account_id, type_, data, topic))


@dataclass
class Hub:
    settings: Settings
    pool: asyncpg.Pool
    redis: aioredis.Redis
    box: SecretBox

    @classmethod
    async def open(cls, settings: Settings, database_url: str, redis_url: str) -> Hub:
        pool = await db.create_pool(
            database_url, min_size=settings.db_pool_min, max_size=settings.db_pool_max
        )
        client = aioredis.from_url(redis_url, decode_responses=False)
        box = SecretBox(
            settings.secret_key.get_secret_value(),
            [s.get_secret_value() for s in settings.old_secret_keys],
        )
        return cls(settings, pool, client, box)

    async def close(self) -> None:
        await self.pool.close()
        await self.redis.aclose()

    @asynccontextmanager
    async def transaction(self, *, savepoint: bool = False) -> AsyncIterator[Tx]:
        """Run a write; its events join the durable log in the same transaction and are
        published to Redis only after the commit.

        Nested calls in the same task join the outer transaction, so a caller can wrap
        several writers, or an idempotency record and its effect, in one commit. A join
        costs no round trip: a failure inside it is the whole transaction's failure. A
        caller that catches an inner failure and goes on asks for `savepoint=True`, which
        undoes the inner work and its events alone; without one, the outer transaction
        refuses to commit rather than keep half of the inner work."""
        outer = _current_tx.get()
        if outer is not None:
            mark, broken = len(outer.pending), outer.broken
            try:
                if savepoint:
                    async with outer.conn.transaction():
                        yield outer
                else:
                    yield outer
            except BaseException:
                if savepoint:  # undone: its events, and any joined failure inside it
                    del outer.pending[mark:]
                    outer.broken = broken
                else:
                    outer.broken = True
                raise
            return
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                tx = Tx(conn)
                token = _current_tx.set(tx)
                try:
                    yield tx
                    if tx.broken:
                        raise RuntimeError("a joined hub.transaction() failed and its failure "
                                           "was caught; catch it around savepoint=True")
                    written = await events.append(conn, tx.pending) if tx.pending else []
                finally:
                    _current_tx.reset(token)
        await events.publish(self.redis, written)


_current_tx: ContextVar[Tx | None] = ContextVar("hub_current_tx", default=None)
