"""The web pages under /app: server-rendered with Jinja2, htmx 2 (vendored in static/) for
partial refreshes, and a small vanilla script for the live feed and JSON forms."""

from __future__ import annotations

from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response

from gateway.pages import admin, auth, console, contacts, inbox
from gateway.pages.common import LoginRequired, PageDenied, error_page


def install(app: FastAPI) -> None:
    """Register the pages and their two page-only answers (sign in; not yours)."""
    for module in (auth, contacts, console, inbox, admin):
        app.include_router(module.router, prefix="/app", include_in_schema=False)

    @app.exception_handler(LoginRequired)
    async def login_required(request: Request, exc: LoginRequired) -> Response:
        return RedirectResponse(f"/app/login?next={quote(exc.next_url)}", status_code=303)

    @app.exception_handler(PageDenied)
    async def denied(request: Request, exc: PageDenied) -> Response:
        return error_page(request, exc.status, exc.title, exc.detail)
