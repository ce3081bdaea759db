"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway import metrics as gauges
from gateway.deps import HubDep
from gateway.errors import problem

router = APIRouter(tags=["ops"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", response_model=None)
async def readyz(hub: HubDep) -> dict[str, object] | Response:
    checks: dict[str, str] = {}
    try:
        async with asyncio.timeout(2):
            await hub.pool.fetchval("SELECT 1")
        checks["postgres"] = "ok"
    except Exception as exc:  # readiness reports, it does not raise
        checks["postgres"] = f"down: {type(exc).__name__}"
    try:
        async with asyncio.timeout(2):
            await hub.redis.ping()
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"down: {type(exc).__name__}"
    if all(v == "ok" for v in checks.values()):
        return {"status": "ready", "checks": checks}
    return problem(503, "not_ready", "Not ready",
                   "; ".join(f"{k} {v}" for k, v in checks.items() if v != "ok"), "/readyz")


@router.get("/metrics", include_in_schema=False)
async def metrics(hub: HubDep) -> Response:
    await gauges.refresh(hub)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
