"""The FastAPI application: built from settings and the service URLs, opening the hub's
connections for its lifetime."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from config.settings import Settings
from gateway import errors, pages, realtime
from gateway.middleware import BodyLimit, Metrics
from gateway.routes import (
    campaigns,
    contacts,
    events,
    messaging,
    ops,
    providers,
    sending,
    suppressions,
    templates,
    tenants,
    unsubscribe,
    webhooks,
)
from gateway.webhook_fastpath import ProviderWebhooks
from hub import imports
from hub.context import Hub
from hub.store import idempotency as idempotency_store
from hub.store import imports as import_store
from hub.store import tenants as tenant_store

log = logging.getLogger(__name__)


class Jobs:
    """Background work owned by the app: kept referenced, logged when it fails, cancelled
    at shutdown (durable jobs resume from PostgreSQL at the next start)."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background job failed", exc_info=task.exception())

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def _resume_imports(hub: Hub, jobs: Jobs) -> None:
    for job in await import_store.unfinished(hub.pool):
        sa = await tenant_store.get_sub_account(hub.pool, job["sub_account_id"])
        if sa is not None:
            jobs.spawn(imports.run_import(hub, job["id"], sa["id"], sa["default_region"]))


async def _expire_idempotency_keys(hub: Hub) -> None:
    while True:
        try:
            await idempotency_store.expire(hub.pool, hub.settings.idempotency_ttl_hours)
        except Exception:
            log.warning("idempotency key expiry failed", exc_info=True)
        await asyncio.sleep(3600)


def freeze_startup_heap() -> None:
    """Move what start-up built (modules, routes, pools: it lives as long as the process)
    out of the garbage collector's sight, so that a full collection scans only what
    requests allocate; and collect the youngest generation every 10,000 allocations
    instead of 700, so that fewer of a request's short-lived objects are still alive at a
    collection and promoted to the old generations (whose growth triggers full
    collections). At 1,000 callbacks/s the gateway otherwise ran a full collection every
    ~1.2 s, each pausing it for 100–200 ms (BENCHMARKS.md, webhook sections)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, *gc.get_threshold()[1:])


#: uvicorn options every server of this app takes. Its own WebSocket pings are off: the
#: feed's heartbeat (docs/realtime.md) decides liveness, and closes with the documented 4008
#: after 2 x heartbeat_s, where uvicorn's 20 s ping would cut a silent client first, at
#: about 40 s and with no close code.
SERVER_OPTIONS: dict[str, Any] = {"ws_ping_interval": None, "ws_ping_timeout": None,
                                  "log_config": None, "lifespan": "on"}


def create_app(settings: Settings, database_url: str, redis_url: str, *,
               apply_webhooks: bool = True, applier_metrics: Path | None = None) -> FastAPI:
    """`apply_webhooks=False`: this process does not apply the webhook inbox, a
    `python -m hub.applier` beside it does (as `hub serve` runs it), writing its metrics
    in Prometheus's multiprocess files in `applier_metrics`, which `/metrics` serves."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        hub = await Hub.open(settings, database_url, redis_url)
        app.state.hub = hub
        app.state.apply_webhooks = apply_webhooks
        app.state.applier_metrics = applier_metrics
        app.state.jobs = jobs = Jobs()
        await _resume_imports(hub, jobs)
        app.state.actors = None
        if settings.actors:
            from actors import log_relay
            from actors.handles import ActorHandles

            jobs.spawn(log_relay.follow(redis_url))  # the actors' warnings in this log
            app.state.actors = await ActorHandles.connect(settings, database_url, redis_url)
        jobs.spawn(_expire_idempotency_keys(hub))
        app.state.feed = feed = realtime.FeedHub(hub, realtime.config_for(app))
        feed.start()
        freeze_startup_heap()
        try:
            yield
        finally:
            await feed.close()
            await jobs.close()
            await hub.close()

    app = FastAPI(
        title="Switchboard",
        version="0.1.0",
        description="Messaging hub for multi-tenant marketing CRMs: contacts, conversations, "
                    "SMS/MMS, email and voice. Errors are RFC 9457 problem documents.",
        lifespan=lifespan,
        # The hub exports Prometheus metrics, not OpenTelemetry. Switched off, FastAPI no
        # longer looks for a configured OTel provider (environment reads) on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    errors.install(app)
    pages.install(app)
    for module in (webhooks, tenants, providers, contacts, messaging, sending, campaigns,
                   templates, suppressions, events, ops, realtime, unsubscribe):
        app.include_router(module.router)
    # Provider callbacks, the highest-rate traffic, are served ahead of FastAPI's routing
    # (inside the body limit and the request metrics).
    app.add_middleware(ProviderWebhooks, routes={r.path: r for r in webhooks.router.routes})
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes,
                       import_limit=settings.max_import_bytes)
    app.add_middleware(Metrics)
    return app
