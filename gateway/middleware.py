"""Pure-ASGI middleware: request body limits (413 before the app reads too much) and
Prometheus request metrics. Pure ASGI keeps the webhook hot path cheap."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import Counter, Histogram
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import problem

REQUESTS = Counter("hub_http_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram(
    "hub_http_request_duration_seconds", "HTTP request latency", ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)


def too_large(limit: int) -> str:
    return f"the request body exceeds {limit} bytes; send less per request"


class BodyLimit:
    """Refuses bodies over `limit` bytes (`import_limit` for CSV imports) with a 413 problem,
    whether the client declared Content-Length or streams chunks."""

    def __init__(self, app: ASGIApp, limit: int, import_limit: int) -> None:
        self.app, self.limit, self.import_limit = app, limit, import_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        limit = self.import_limit if path.endswith("/contacts/imports") else self.limit
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._refuse(scope, receive, send, limit)
            return
        seen = 0

        async def limited_receive() -> Message:
            # Raised where the app reads the body, so the app's error handler answers 413.
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise HTTPException(413, too_large(limit))
            return message

        await self.app(scope, limited_receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        response = problem(
            413, "payload_too_large", "Payload too large", too_large(limit),
            scope["path"], errors=[{"field": "body", "message": f"at most {limit} bytes",
                                    "code": "too_large"}],
        )
        await response(scope, receive, send)


class Metrics:
    """Request count and latency per method, route template and status. The labelled
    children are looked up once per combination (prometheus_client's `labels()` takes a
    lock and builds a key on every call, which shows on the webhook hot path)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._counters: dict[tuple[str, str, int], Any] = {}
        self._timers: dict[tuple[str, str], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)  # type: ignore[arg-type]

        try:
            await self.app(scope, receive, send_wrapper)  # type: ignore[arg-type]
        finally:
            route = scope.get("route")
            name: str = getattr(route, "path", "unmatched")
            method: str = scope["method"]
            counter = self._counters.get((method, name, status))
            if counter is None:
                counter = self._counters[(method, name, status)] = REQUESTS.labels(
                    method, name, str(status))
            timer = self._timers.get((method, name))
            if timer is None:
                timer = self._timers[(method, name)] = LATENCY.labels(method, name)
            counter.inc()
            timer.observe(time.perf_counter() - started)
