"""Sign in, sign out, the home page (your sub-accounts), and the static files."""

from __future__ import annotations

import hmac
import secrets
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response

from gateway import sessions
from gateway.pages.common import SessionDep, render, static_file
from hub import users
from hub.context import Hub
from hub.errors import Unauthorized
from hub.store import users as user_store
from hub.users import Role

router = APIRouter()
LOGIN_CSRF = "sb_login_csrf"


def _safe_next(value: str | None) -> str:
    # Only our own pages: never an absolute or scheme-relative URL (open redirect).
    if value and value.startswith("/app") and not value.startswith("//"):
        return value
    return "/app"


def _login_page(request: Request, next_url: str, error: str = "",
                status: int = 200) -> Response:
    token = secrets.token_urlsafe(24)
    response = render(request, "login.html", status=status, next_url=next_url, error=error,
                      login_csrf=token)
    hub: Hub = request.app.state.hub
    response.set_cookie(LOGIN_CSRF, token, httponly=True, samesite="strict", path="/app",
                        secure=sessions.cookie_secure(hub.settings), max_age=3600)
    return response


@router.get("/login")
async def login_form(request: Request, next: str | None = None) -> Response:
    return _login_page(request, _safe_next(next))


@router.post("/login")
async def login(request: Request, email: Annotated[str, Form(max_length=320)],
                password: Annotated[str, Form(max_length=1000)],
                csrf_token: Annotated[str, Form(max_length=200)] = "",
                next: Annotated[str, Form(max_length=500)] = "/app") -> Response:
    hub: Hub = request.app.state.hub
    expected = request.cookies.get(LOGIN_CSRF, "")
    if not expected or not hmac.compare_digest(expected, csrf_token):
        return _login_page(request, _safe_next(next), "The form expired; please try again.",
                           403)
    try:
        token, session = await users.do_login(hub, email, password)
    except Unauthorized:
        return _login_page(request, _safe_next(next), "Wrong email or password.", 401)
    response = RedirectResponse(_safe_next(next), status_code=303)
    sessions.set_cookie(response, hub.settings, token, session.expires_at)
    response.delete_cookie(LOGIN_CSRF, path="/app")
    return response


@router.post("/logout")
async def logout(request: Request, session: SessionDep,
                 csrf_token: Annotated[str, Form(max_length=200)] = "") -> Response:
    sessions.check_csrf(request, session, csrf_token)
    hub: Hub = request.app.state.hub
    await users.do_logout(hub, request.cookies.get(sessions.COOKIE))
    response = RedirectResponse("/app/login", status_code=303)
    sessions.clear_cookie(response, hub.settings)
    return response


@router.get("")
async def home(request: Request, session: SessionDep) -> Response:
    hub: Hub = request.app.state.hub
    grants = await user_store.grants_of(hub.pool, session.user_id)
    if len(grants) == 1:  # one place to work: go straight there
        g = grants[0]
        target = "inbox" if g["role"] == Role.AGENT else "campaigns"
        return RedirectResponse(f"/app/sa/{g['sub_account_id']}/{target}", status_code=303)
    return render(request, "home.html", grants=grants, sa=None, access=None)


@router.get("/static/{name}")
async def static(name: str) -> Response:
    return static_file(name)
