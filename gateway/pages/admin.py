"""Sub-account settings (admins): quiet hours and help text, provider accounts (secrets are
write-only: the page never shows one), senders, and suppressions with search and removal
with a reason. Changes go through the REST API from the browser."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from gateway.pages.common import AccessDep, render, require
from hub.context import Hub
from hub.store import suppressions as suppression_store
from hub.store import tenants
from hub.users import Role

router = APIRouter()


@router.get("/sa/{sa}/settings")
async def settings_page(request: Request, access: AccessDep,
                        q: Annotated[str, Query(max_length=320)] = "") -> HTMLResponse:
    require(access, Role.ADMIN)
    hub: Hub = request.app.state.hub
    providers = await tenants.list_provider_accounts(hub.pool, access.sa_id, None, 100)
    senders = await tenants.list_senders(hub.pool, access.sa_id, None, None, 200)
    suppressions = await suppression_store.list_page(
        hub.pool, access.sa_id, channel=None, address=q.strip().lower() or None,
        include_removed=False, cursor=None, limit=100)
    return render(request, "settings.html", access=access, section="settings",
                  providers=providers[:100], senders=senders[:200],
                  suppressions=suppressions[:100], q=q)
