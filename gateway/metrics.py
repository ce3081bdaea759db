"""Gauges the gateway reads from PostgreSQL when Prometheus scrapes it: the send queue's depth
and the age of its oldest message, per channel. The database is the truth here, so the
figures stay right when every Sender shard is down (which is when they matter most); each
replica reports the same values, so dashboards take `max` across replicas.

Request, webhook and WebSocket metrics are recorded where they happen (gateway/middleware.py,
gateway/realtime.py); the actors' metrics reach Prometheus through Ray (actors/metrics.py).
Under `hub serve` the webhook applier runs in a process of its own, where receipts and
keyword opt-outs are counted: it writes its metrics in Prometheus's multiprocess files, and
this gateway's `/metrics` serves them with its own (`exposition`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry, Gauge, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from hub.context import Hub
from hub.store import queues

log = logging.getLogger(__name__)

CHANNELS = ("sms", "mms", "email", "voice")
#: A scrape must answer even when PostgreSQL does not: the queue gauges keep their last
#: values then, and `hub_database_up` says they are stale.
REFRESH_TIMEOUT_S = 2.0

QUEUE_DEPTH = Gauge("hub_queue_depth", "messages queued in PostgreSQL, by channel",
                    ["channel"])
QUEUE_OLDEST_AGE = Gauge("hub_queue_oldest_age_seconds",
                         "age of the oldest queued message, by channel", ["channel"])
DATABASE_UP = Gauge("hub_database_up",
                    "1 when this replica read PostgreSQL at the latest scrape, else 0 (the "
                    "queue gauges then keep their last values)")


async def refresh(hub: Hub) -> None:
    """Read the queue's figures now; on a slow or absent database keep the last ones and
    say so: a frozen `hub_queue_oldest_age_seconds` would otherwise hide a queue that no
    longer moves (alerts.yml: SwitchboardDatabaseDown)."""
    try:
        async with asyncio.timeout(REFRESH_TIMEOUT_S):
            stats = await queues.queue_stats(hub.pool)
    except Exception as exc:  # /metrics must answer; /readyz reports the database
        DATABASE_UP.set(0)
        log.warning("queue gauges not refreshed: PostgreSQL did not answer",
                    extra={"error": type(exc).__name__})
        return
    DATABASE_UP.set(1)
    for channel in CHANNELS:
        depth, oldest = stats.get(channel, (0, 0.0))
        QUEUE_DEPTH.labels(channel).set(depth)
        QUEUE_OLDEST_AGE.labels(channel).set(oldest)


class _Merged(Collector):
    """Metric families of several collectors as one family per name: the gateway defines
    the applier's metrics too (it imports their modules) without counting anything in
    them, and an exposition may name a family once. Samples with the same name and labels
    add up (counters and histogram buckets; neither process keeps a gauge the other has)."""

    def __init__(self, sources: Iterable[Collector]) -> None:
        self.sources = list(sources)

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for source in self.sources:
            for family in source.collect():
                merged = families.setdefault(
                    family.name, Metric(family.name, family.documentation, family.type,
                                        family.unit))
                merged.samples.extend(family.samples)
        for family in families.values():
            summed: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
            first = {}
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                summed[key] = summed.get(key, 0.0) + sample.value
                first.setdefault(key, sample)
            family.samples = [first[k]._replace(value=v) for k, v in summed.items()]
            yield family


def exposition(applier_dir: Path | None) -> bytes:
    """This process's metrics, with those the applier process wrote in `applier_dir`."""
    if applier_dir is None:
        return generate_latest()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged([REGISTRY, MultiProcessCollector(None, path=str(applier_dir))]))
    return generate_latest(registry)
