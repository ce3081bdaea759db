"""Gauges the gateway reads from PostgreSQL when Prometheus scrapes it: the send queue's depth
and the age of its oldest message, per channel. The database is the truth here, so the
figures stay right when every Sender shard is down (which is when they matter most); each
replica reports the same values, so dashboards take `max` across replicas.

Request, webhook and WebSocket metrics are recorded where they happen (gateway/middleware.py,
gateway/realtime.py); the actors' metrics reach Prometheus through Ray (actors/metrics.py).
"""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import Gauge

from hub.context import Hub
from hub.store import queues

log = logging.getLogger(__name__)

CHANNELS = ("sms", "mms", "email", "voice")
#: A scrape must answer even when PostgreSQL does not: the gauges keep their last values.
REFRESH_TIMEOUT_S = 2.0

QUEUE_DEPTH = Gauge("hub_queue_depth", "messages queued in PostgreSQL, by channel",
                    ["channel"])
QUEUE_OLDEST_AGE = Gauge("hub_queue_oldest_age_seconds",
                         "age of the oldest queued message, by channel", ["channel"])


async def refresh(hub: Hub) -> None:
    """Read the queue's figures now; on a slow or absent database keep the last ones."""
    try:
        async with asyncio.timeout(REFRESH_TIMEOUT_S):
            stats = await queues.queue_stats(hub.pool)
    except Exception as exc:  # /metrics must answer; /readyz reports the database
        log.warning("queue gauges not refreshed", extra={"error": type(exc).__name__})
        return
    for channel in CHANNELS:
        depth, oldest = stats.get(channel, (0, 0.0))
        QUEUE_DEPTH.labels(channel).set(depth)
        QUEUE_OLDEST_AGE.labels(channel).set(oldest)
