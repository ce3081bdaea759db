"""What every page shares: the Jinja2 environment, the signed-in user and their access to a
sub-account, the static files, and small display helpers."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Annotated, Any
from uuid import UUID

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape

from gateway import sessions
from hub.context import Hub
from hub.store import tenants
from hub.users import Role, Session

PACKAGE = "gateway.pages"
STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml",
                ".txt": "text/plain"}

env = Environment(loader=PackageLoader(PACKAGE, "templates"),
                  autoescape=select_autoescape(["html"]), trim_blocks=True,
                  lstrip_blocks=True)


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value else "—"


def _clock(value: datetime | None) -> str:
    return value.strftime("%H:%M:%S") if value else ""


env.filters["when"] = _when
env.filters["clock"] = _clock


class LoginRequired(Exception):
    """Raised by page dependencies; the app answers with a redirect to the login page."""

    def __init__(self, next_url: str) -> None:
        super().__init__(next_url)
        self.next_url = next_url


class PageDenied(Exception):
    def __init__(self, status: int, title: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail = status, title, detail


def render(request: Request, name: str, status: int = 200, **ctx: Any) -> HTMLResponse:
    session: Session | None = getattr(request.state, "session", None)
    html = env.get_template(name).render(request=request, session=session, **ctx)
    return HTMLResponse(html, status_code=status)


def error_page(request: Request, status: int, title: str, detail: str,
               headers: dict[str, str] | None = None) -> HTMLResponse:
    """An error in words: a page in the site's layout with a way back, or for an htmx
    request the fragment it swaps in where the answer was going (base.html lets htmx swap
    error answers, so a partial shows what went wrong where it happened)."""
    name = "_error.html" if request.headers.get("HX-Request") else "error.html"
    response = render(request, name, status=status, title=title, detail=detail, access=None)
    response.headers.update(headers or {})
    return response


async def page_session(request: Request) -> Session:
    session = await sessions.current(request)
    if session is None:
        raise LoginRequired(str(request.url.path))
    return session


SessionDep = Annotated[Session, Depends(page_session)]


@dataclass(frozen=True, slots=True)
class Access:
    """A signed-in user on one of their sub-accounts."""

    session: Session
    sub_account: dict[str, Any]
    role: Role

    @property
    def sa_id(self) -> UUID:
        sa_id: UUID = self.sub_account["id"]
        return sa_id

    @property
    def me(self) -> str:
        """How this user is named in a conversation's assignee."""
        return str(self.session.user_id)

    def can(self, *roles: Role) -> bool:
        return self.role in roles


async def access(request: Request, sa: UUID, session: SessionDep) -> Access:
    role = session.role_in(sa)
    hub: Hub = request.app.state.hub
    row = await tenants.get_sub_account(hub.pool, sa) if role is not None else None
    if row is None or role is None:
        raise PageDenied(404, "Not found", "There is no such sub-account, or it is not yours.")
    return Access(session, row, role)


def require(a: Access, *roles: Role) -> None:
    if a.role not in roles:
        raise PageDenied(403, "Not allowed", f"This page is for {' or '.join(roles)} users; "
                         f"your role here is {a.role}.")


AccessDep = Annotated[Access, Depends(access)]


def static_file(name: str) -> Response:
    suffix = name[name.rfind("."):] if "." in name else ""
    if "/" in name or name.startswith(".") or suffix not in STATIC_TYPES:
        return Response(status_code=404)
    path = resources.files(PACKAGE).joinpath("static", name)
    if not path.is_file():
        return Response(status_code=404)
    return Response(path.read_bytes(), media_type=STATIC_TYPES[suffix],
                    headers={"Cache-Control": "public, max-age=3600"})


def contact_label(row: dict[str, Any]) -> str:
    name = f"{row.get('first_name') or ''} {row.get('last_name') or ''}".strip()
    return name or row.get("phone") or row.get("email") or "Unknown contact"
