"""Dependencies shared by the routes, as `Annotated` aliases."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any
from uuid import UUID

from fastapi import Depends, Header, Path, Query, Request

from gateway import sessions
from hub.context import Hub
from hub.pagination import Cursor, decode_cursor
from hub.tenancy import Principal, authenticate, sub_account_for


def get_hub(request: Request) -> Hub:
    hub: Hub = request.app.state.hub
    return hub


HubDep = Annotated[Hub, Depends(get_hub)]


async def get_principal(
    hub: HubDep,
    request: Request,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Principal:
    """An API key when `Authorization` is sent (machines); else the pages' session cookie,
    with CSRF and the user's role checked for this route (gateway/sessions.py)."""
    if authorization is None and sessions.COOKIE in request.cookies:
        return await sessions.principal(request)
    principal, request.state.sub_account = await authenticate(
        hub.pool, authorization, _route_sub_account(request))
    return principal


def _route_sub_account(request: Request) -> UUID | None:
    """The route's `{sa}`, read with the API key in the same round trip (`get_sub_account`
    checks it; a malformed one is its 422)."""
    try:
        return UUID(request.path_params["sa"])
    except (KeyError, ValueError):
        return None


PrincipalDep = Annotated[Principal, Depends(get_principal)]


async def get_sub_account(
    hub: HubDep, principal: PrincipalDep, request: Request,
    sa: Annotated[UUID, Path(description="sub-account id")],
) -> dict[str, Any]:
    return await sub_account_for(hub.pool, principal, sa,
                                 getattr(request.state, "sub_account", None))


SubAccountDep = Annotated[dict[str, Any], Depends(get_sub_account)]


@dataclass(frozen=True, slots=True)
class PageParams:
    limit: int
    cursor: Cursor | None


def get_page_params(
    request: Request,
    limit: Annotated[int | None, Query(ge=1, le=500, description="page size")] = None,
    cursor: Annotated[str | None, Query(max_length=200, description="next_cursor of the "
                                        "previous page")] = None,
) -> PageParams:
    hub: Hub = request.app.state.hub
    return PageParams(limit or hub.settings.page_limit_default, decode_cursor(cursor))


PageDep = Annotated[PageParams, Depends(get_page_params)]

IdempotencyKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", max_length=255,
           description="replays return the first response; reusing a key with another body "
                       "is 422"),
]
