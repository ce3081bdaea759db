"""The actors' warnings in the log of the hub that watches them. Every actor (Sender and
Scheduler shards, Supervisor) publishes its WARNING-and-up records to one Redis stream,
`hub:logs`; every `hub serve` (or `hub demo`) follows the stream and hands each record to
its own logging, so it is formatted like the hub's own lines (key=value, or one JSON object
with HUB_LOG_JSON=true) and goes where they go. INFO stays in Ray's worker log files.

Why not Ray's `log_to_driver`: Ray sends a worker's output only to the driver of the job
that created the actor, and the Supervisor is detached: it and the shards it creates belong
to the job of whichever hub started it first, so a restarted hub, or a second replica,
would never see them. Ray also prints each line behind a "(SenderShell pid=…)" prefix,
which makes a JSON line unparseable, and its de-duplication rewrites repeated lines. The
Redis the hub already runs reaches every node of a cluster and every replica (each replica
shows every actor's warnings: an operator may watch any one of them).

A storm (a provider refusing every send at thousands a second) is bounded where it starts:
per kind of record and (sub-account, error code), the first record of a 10 s window is
published and the rest are counted into one "N more like this in the last 10 s" record at
the window's end. Publishing is a deque append; a task of the actor's loop writes the
batch to Redis, so a log call never waits on the network. If Redis is down the records
are dropped: they are still in the worker's own log file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from config.logging import extra_fields

log = logging.getLogger(__name__)

STREAM = "hub:logs"
STREAM_MAXLEN = 10_000  # about a minute of a bounded storm over many sub-accounts
WINDOW_S = 10.0
FLUSH_EVERY_S = 0.5
PENDING_MAX = 5_000  # records waiting for Redis at most; the oldest go first


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """What a record carries to another process: its level, logger, time, message and the
    structured fields (`extra`); what JSON cannot hold is sent as its `str`."""
    fields = extra_fields(record)
    fields.update(name=record.name, levelno=record.levelno, levelname=record.levelname,
                  created=record.created, msg=record.getMessage())
    if record.exc_info and "exc" not in fields:
        fields["exc"] = logging.Formatter().formatException(record.exc_info)
    return fields


def throttle_key(record: logging.LogRecord) -> Hashable:
    """Records alike: the same logger and message template, for the same sub-account and
    provider error code (either may be absent)."""
    return (record.name, str(record.msg), str(getattr(record, "sub_account_id", "")),
            str(getattr(record, "code", "")))


@dataclass
class _Window:
    opened: float
    sample: dict[str, Any]
    more: int = 0  # records held back
    count: int = 0  # what they counted (their `count` field), or the records themselves


@dataclass
class Throttle:
    """Per key, the first record of a `window_s` window passes; the others are counted,
    and each window that ends with a count becomes one summary record (`due`)."""

    window_s: float = WINDOW_S
    windows: dict[Hashable, _Window] = field(default_factory=dict)
    ended: list[dict[str, Any]] = field(default_factory=list)

    def admit(self, key: Hashable, fields: dict[str, Any], now: float) -> bool:
        w = self.windows.get(key)
        if w is not None and now - w.opened < self.window_s:
            w.more += 1
            n = fields.get("count")
            w.count += n if isinstance(n, int) else 1
            return False
        if w is not None:
            self._end(w)
        self.windows[key] = _Window(now, fields)
        return True

    def due(self, now: float) -> list[dict[str, Any]]:
        for key, w in list(self.windows.items()):
            if now - w.opened >= self.window_s:
                del self.windows[key]
                self._end(w)
        out, self.ended = self.ended, []
        return out

    def _end(self, w: _Window) -> None:
        if w.more:
            sample = {k: v for k, v in w.sample.items() if k != "message_id"}
            self.ended.append({**sample, "created": time.time(), "repeated": w.more,
                               "count": w.count, "msg": (
                f"{w.more} more like this in the last {self.window_s:g} s: "
                f"{sample['msg']}")})


class RelayHandler(logging.Handler):
    """Queues WARNING-and-up records for `flush_to`, throttled per `throttle_key`."""

    def __init__(self, source: str, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(logging.WARNING)
        self.source = source
        self.clock = clock
        self.throttle = Throttle()
        self.pending: deque[dict[str, Any]] = deque(maxlen=PENDING_MAX)
        self._mu = threading.Lock()  # Ray's own threads log too

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "_relayed", False):
            return  # a shell run in the hub's own process: not round and round
        try:
            fields = {**record_fields(record), "actor": self.source}
            with self._mu:
                if self.throttle.admit(throttle_key(record), fields, self.clock()):
                    self.pending.append(fields)
        except Exception:
            self.handleError(record)

    def take(self) -> list[dict[str, Any]]:
        """Everything due for Redis now: queued records and ended windows' summaries."""
        with self._mu:
            out = list(self.pending)
            self.pending.clear()
            out.extend(self.throttle.due(self.clock()))
        return out

    async def flush_to(self, redis: aioredis.Redis) -> None:
        batch = self.take()
        if not batch:
            return
        async with redis.pipeline(transaction=False) as pipe:
            for fields in batch:
                pipe.xadd(STREAM, {"r": json.dumps(fields, default=str)},
                          maxlen=STREAM_MAXLEN, approximate=True)
            await pipe.execute()


_installed: tuple[RelayHandler, asyncio.Task[None]] | None = None


def install(redis: aioredis.Redis, source: str) -> asyncio.Task[None]:
    """Relay this actor process's warnings to the hub's log; call it after every
    `setup_logging`, which replaces the root logger's handlers. Returns the task that
    writes them to Redis: one a process, for as long as the actor lives."""
    global _installed
    root = logging.getLogger()
    if _installed is None or _installed[1].done():  # first, or its event loop is gone
        if _installed is not None:
            root.removeHandler(_installed[0])
        handler = RelayHandler(source)
        _installed = handler, asyncio.get_running_loop().create_task(
            _flush_loop(handler, redis))
    if _installed[0] not in root.handlers:
        root.addHandler(_installed[0])
    return _installed[1]


async def _flush_loop(handler: RelayHandler, redis: aioredis.Redis) -> None:
    failing = False
    while True:
        await asyncio.sleep(FLUSH_EVERY_S)
        try:
            await handler.flush_to(redis)
            failing = False
        except (RedisError, OSError) as exc:
            if not failing:  # INFO: never relayed, so never round and round
                log.info("relaying warnings to the hub's log failed; dropping them until "
                         "Redis answers", extra={"error": f"{type(exc).__name__}: {exc}"})
            failing = True


def emit(fields: dict[str, Any]) -> None:
    """Hand a relayed record to this process's logging, under its original logger."""
    record = logging.makeLogRecord({**fields, "args": None, "exc_info": None,
                                    "_relayed": True})
    logger = logging.getLogger(record.name)
    if logger.isEnabledFor(record.levelno):
        logger.handle(record)


async def follow(redis_url: str) -> None:
    """Re-emit the actors' relayed records here until cancelled (the driver's side). Starts
    at the stream's end: what was logged before this hub started is not its news."""
    client = aioredis.from_url(redis_url)
    last: Any = None  # the id of the last entry seen (bytes)
    try:
        while True:
            try:
                if last is None:
                    newest = await client.xrevrange(STREAM, count=1)
                    last = newest[0][0] if newest else b"0-0"
                got: Any = await client.xread({STREAM: last}, block=5_000, count=500)
            except (RedisError, OSError):
                await asyncio.sleep(1.0)  # Redis restarting: the hub says so elsewhere
                continue
            for _, entries in got or ():
                for entry_id, data in entries:
                    last = entry_id
                    with contextlib.suppress(ValueError, KeyError):
                        emit(json.loads(data[b"r"]))
    finally:
        await client.aclose()
