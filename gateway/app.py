"""The FastAPI application: built from settings and the service URLs, opening the hub's
connections for its lifetime."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import fastapi_offline
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from starlette.routing import BaseRoute

from channels.sendgrid import SIGNATURE_HEADER, TIMESTAMP_HEADER
from config.settings import Settings
from gateway import errors, pages, realtime
from gateway.deps import get_principal
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
        docs_url=None, redoc_url=None,  # served by `install_docs`, from the hub itself
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
    api = (webhooks, tenants, providers, contacts, messaging, sending, campaigns, templates,
           suppressions, events, ops, realtime, unsubscribe)
    for module in api:
        app.include_router(module.router)
    install_docs(app, [route for module in api for route in module.router.routes])
    # Provider callbacks, the highest-rate traffic, are served ahead of FastAPI's routing
    # (inside the body limit and the request metrics).
    app.add_middleware(ProviderWebhooks, routes={r.path: r for r in webhooks.router.routes})
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes,
                       import_limit=settings.max_import_bytes)
    app.add_middleware(Metrics)
    return app


# --- the OpenAPI document and its pages ------------------------------------------------

#: Files of Swagger UI and ReDoc, from the fastapi-offline package: /docs works offline.
DOCS_STATIC = "/docs/static"

#: What each error status means, as /docs says it; the body is always a Problem.
_ERRORS: dict[int, str] = {
    400: "The provider's callback cannot be read (not a UTF-8 form, or missing its fields).",
    401: "No API key, or one that is unknown or revoked (`Authorization: Bearer <key>`).",
    403: "Refused: this key or role may not do this (some actions need an agency key), or "
         "a provider's signature or an unsubscribe link is not valid.",
    404: "No such resource, or one of another sub-account (they are not told apart).",
    409: "The resource's state refuses this change (e.g. a campaign already launched); "
         "`code` says why.",
    413: "The body is larger than the hub accepts.",
    422: "A field, parameter or header is invalid; `errors[]` names each one.",
    503: "PostgreSQL or Redis cannot be reached right now; nothing was done. Retry after "
         "`Retry-After` seconds with the same Idempotency-Key.",
}

_SECURITY_SCHEMES: dict[str, dict[str, str]] = {
    "apiKey": {"type": "http", "scheme": "bearer",
               "description": "An agency or sub-account API key: `Authorization: Bearer "
                             "<key>`. (The pages under /app use their session cookie "
                             "instead.)"},
    "twilioSignature": {"type": "apiKey", "in": "header", "name": "X-Twilio-Signature",
                        "description": "Twilio's signature of HUB_PUBLIC_URL + path + form "
                                       "with the provider account's auth token; no API key."},
    "sendgridSignature": {"type": "apiKey", "in": "header", "name": SIGNATURE_HEADER,
                          "description": "SendGrid's ECDSA signature of "
                                         f"{TIMESTAMP_HEADER} + body, checked with the "
                                         "account's event_webhook_public_key; no API key."},
}

#: The handlers that refuse a request without an Idempotency-Key (gateway/routes/sending.py,
#: 422): the header is required there and optional everywhere else.
_KEY_REQUIRED: tuple[Callable[..., Any], ...] = (sending.send_message, sending.reply)


def _calls(dependant: Dependant) -> Iterator[Any]:
    for sub in dependant.dependencies:
        yield sub.call
        yield from _calls(sub)


def _error_statuses(route: APIRoute, method: str, documented: set[int]) -> set[int]:
    """The error statuses one operation can answer, from what the route is: FastAPI's own
    422 where it has parameters; 401/403 where it takes an API key, 404 where it names
    resources, 409 where it changes them; 413 for any body (the body limit); 503 wherever
    PostgreSQL or Redis is used (everywhere but /healthz)."""
    statuses = documented & {422}
    if route.endpoint is not ops.healthz:
        statuses.add(503)
    if method in ("POST", "PUT", "PATCH"):
        statuses.add(413)
    if get_principal in _calls(route.dependant):
        statuses |= {401, 403}
        if route.param_convertors or route.body_field is not None:
            statuses.add(404)
        if method != "GET":
            statuses.add(409)
    elif route in webhooks.router.routes:
        statuses |= {400, 403}
    elif route.endpoint is unsubscribe.unsubscribe:
        statuses.add(403)
    return statuses


def _security(route: APIRoute) -> list[dict[str, list[str]]] | None:
    """How an operation is authenticated when it is not by the API key (the default)."""
    if get_principal in _calls(route.dependant):
        return None
    if route in webhooks.router.routes:
        return [{"sendgridSignature" if "/sendgrid/" in route.path else "twilioSignature": []}]
    return []  # /healthz, /readyz, and the unsubscribe link (its `sig` is the credential)


def _require_idempotency_key(operation: dict[str, Any]) -> None:
    for param in operation.get("parameters", []):
        if param["name"] == "Idempotency-Key":
            param.update(required=True, schema={"type": "string", "minLength": 1,
                                                "maxLength": 255})
            param["description"] = ("required: any unique string, reused only to retry the "
                                    "same request; " + param.get("description", ""))


def document(schema: dict[str, Any], routes: list[BaseRoute]) -> dict[str, Any]:
    """FastAPI's OpenAPI document, corrected to what the API does: every error is a Problem
    (`application/problem+json`, gateway/errors.py), not FastAPI's HTTPValidationError;
    the API key is a bearer security scheme, with the routes that take none marked so;
    the Idempotency-Key is required where the handler refuses a request without it."""
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    schemas.update(errors.PROBLEM_SCHEMAS)
    components["securitySchemes"] = _SECURITY_SCHEMES
    schema["security"] = [{"apiKey": []}]
    for route in routes:
        if not isinstance(route, APIRoute) or not route.include_in_schema:
            continue
        for method in route.methods or ():
            operation = schema["paths"][route.path_format][method.lower()]
            responses = operation.setdefault("responses", {})
            statuses = _error_statuses(route, method,
                                       {int(s) for s in responses if s.isdigit()})
            for status in sorted(statuses):
                responses[str(status)] = {
                    "description": _ERRORS[status],
                    "content": {errors.PROBLEM: {
                        "schema": {"$ref": "#/components/schemas/Problem"}}},
                }
            if 503 in statuses:
                responses["503"]["headers"] = {"Retry-After": {
                    "description": "seconds", "schema": {"type": "integer"}}}
            security = _security(route)
            if security is not None:
                operation["security"] = security
            if route.endpoint in _KEY_REQUIRED:
                _require_idempotency_key(operation)
    return schema


def install_docs(app: FastAPI, api_routes: list[BaseRoute]) -> None:
    """/openapi.json as `document` corrects it (`api_routes`: the routers' own routes, which
    carry their full paths); /docs (Swagger UI) and /redoc from files the hub serves
    itself, not from a CDN: they work on a machine without internet."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document(generate(), api_routes)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    static = Path(fastapi_offline.__file__).parent / "static"
    app.mount(DOCS_STATIC, StaticFiles(directory=static), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json", title=f"{app.title} API",
            swagger_js_url=f"{DOCS_STATIC}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_STATIC}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_STATIC}/favicon.png",
            swagger_ui_parameters={"persistAuthorization": True})

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url="/openapi.json", title=f"{app.title} API",
                              redoc_js_url=f"{DOCS_STATIC}/redoc.standalone.js",
                              redoc_favicon_url=f"{DOCS_STATIC}/favicon.png",
                              with_google_fonts=False)
