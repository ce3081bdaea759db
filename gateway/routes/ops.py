"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from gateway import metrics as gauges
from gateway.deps import HubDep
from gateway.errors import problem

router = APIRouter(tags=["ops"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


#: Probes given up on, kept referenced until their clean-up ends (see `check`).
_abandoned: set[asyncio.Task[object]] = set()


async def check(probe: Awaitable[object], timeout: float = 2.0) -> str:
    """"ok", or why not, within `timeout` however the server behaves. The probe runs as a
    task of its own and is cancelled without waiting for it: asyncpg cleans up a cancelled
    query by talking to the server, and a stalled (not dead) PostgreSQL held the answer for
    a minute."""
    task = asyncio.ensure_future(probe)
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if not done:
        task.cancel()
        _abandoned.add(task)
        task.add_done_callback(_abandoned.discard)
        return "down: TimeoutError"
    exc = task.exception()
    return "ok" if exc is None else f"down: {type(exc).__name__}"


@router.get("/readyz", response_model=None)
async def readyz(hub: HubDep) -> dict[str, object] | Response:
    postgres, redis = await asyncio.gather(check(hub.pool.fetchval("SELECT 1")),
                                           check(hub.redis.ping()))
    checks = {"postgres": postgres, "redis": redis}
    if all(v == "ok" for v in checks.values()):
        return {"status": "ready", "checks": checks}
    return problem(503, "not_ready", "Not ready",
                   "; ".join(f"{k} {v}" for k, v in checks.items() if v != "ok"), "/readyz")


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request, hub: HubDep) -> Response:
    await gauges.refresh(hub)
    return Response(gauges.exposition(request.app.state.applier_metrics),
                    media_type=CONTENT_TYPE_LATEST)
