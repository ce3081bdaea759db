"""Login sessions over HTTP: the cookie, CSRF on every write made with it, the role check
for REST calls made from the pages, and the WebSocket's cookie-plus-Origin check.

The cookie holds a random token (the database keeps only its SHA-256); it is HttpOnly,
SameSite=Lax, and Secure when the public URL is https. Every non-GET request authenticated
by the cookie must echo the session's CSRF token in `X-CSRF-Token` (or, for a plain HTML
form, a `csrf_token` field): a cross-site page can make the browser send the cookie, but it
cannot read the token. Requests with `Authorization` never look at the cookie.
"""

from __future__ import annotations

import hmac
from datetime import datetime
from uuid import UUID

from fastapi import Request, WebSocket
from starlette.responses import Response

from config.settings import Settings
from hub import users
from hub.context import Hub
from hub.errors import Forbidden, Unauthorized
from hub.users import Role, Session, UserPrincipal

COOKIE = "sb_session"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def cookie_secure(settings: Settings) -> bool:
    return settings.base_url.startswith("https://")


def set_cookie(response: Response, settings: Settings, token: str, expires: datetime) -> None:
    response.set_cookie(COOKIE, token, expires=expires, path="/", httponly=True,
                        samesite="lax", secure=cookie_secure(settings))


def clear_cookie(response: Response, settings: Settings) -> None:
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="lax",
                           secure=cookie_secure(settings))


async def current(request: Request) -> Session | None:
    """The request's live session (looked up once per request)."""
    if hasattr(request.state, "session"):
        cached: Session | None = request.state.session
        return cached
    hub: Hub = request.app.state.hub
    session = await users.load_session(hub, request.cookies.get(COOKIE))
    request.state.session = session
    return session


def csrf_ok(session: Session, token: str | None) -> bool:
    return bool(token) and hmac.compare_digest(session.csrf_token, token or "")


def check_csrf(request: Request, session: Session, form_token: str | None = None) -> None:
    if request.method in SAFE_METHODS:
        return
    if not csrf_ok(session, request.headers.get(CSRF_HEADER) or form_token):
        raise Forbidden(f"missing or wrong CSRF token; send the page's token in {CSRF_HEADER}",
                        code="csrf_failed")


async def principal(request: Request) -> UserPrincipal:
    """The principal of a REST call authenticated by the session cookie: CSRF checked, the
    sub-account granted, and the user's role allowed on this route (hub.users.ROUTE_ROLES)."""
    session = await current(request)
    if session is None:
        raise Unauthorized("your session has ended; sign in again", code="session_expired")
    check_csrf(request, session)
    route = request.scope.get("route")
    template = getattr(route, "path", request.url.path)
    raw = request.path_params.get("sa")
    try:
        sa = UUID(str(raw)) if raw is not None else None
    except ValueError:
        sa = UUID(int=0)  # not granted, so "not found"
    return users.authorize(session, request.method, template, sa)


def origin_allowed(settings: Settings, origin: str | None) -> bool:
    return origin is not None and origin.rstrip("/") == settings.base_url


async def websocket_grant(websocket: WebSocket, sub_account: str | None
                          ) -> tuple[UUID, bytes, Role] | None:
    """The sub-account a cookie-authenticated WebSocket may follow, with the stored hash of
    its login session and the user's role there: only from our own origin (a cross-site
    page cannot ride the cookie), only a granted sub-account."""
    hub: Hub = websocket.app.state.hub
    if not origin_allowed(hub.settings, websocket.headers.get("origin")):
        return None
    token = websocket.cookies.get(COOKIE)
    session = await users.load_session(hub, token)
    if session is None or not sub_account or token is None:
        return None
    try:
        sa = UUID(sub_account)
    except ValueError:
        return None
    role = session.role_in(sa)
    return (sa, users.hash_token(token), role) if role is not None else None
