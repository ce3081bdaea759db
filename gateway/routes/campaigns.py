"""Campaigns: create, edit a draft, launch / pause / resume / cancel (an invalid transition
is 409), live stats with an ETA, recipients by status, and a dry run of the timeline."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse

from gateway import idempotency
from gateway.deps import HubDep, IdempotencyKey, PageDep, PrincipalDep, SubAccountDep
from gateway.schemas import (
    CampaignIn,
    CampaignOut,
    CampaignPatch,
    CampaignStats,
    DryRunOut,
    Page,
    RecipientOut,
)
from hub import campaign_actions as actions
from hub.campaign_actions import snapshot
from hub.campaigns import CampaignStatus
from hub.pagination import make_page
from hub.store import campaigns as store

router = APIRouter(prefix="/v1/sub-accounts/{sa}/campaigns", tags=["campaigns"])

#: What a recipient is filtered on: its own status until it has a message (pending,
#: skipped, canceled), then its message's (never `received`: campaigns send).
RecipientStatus = Literal["pending", "skipped", "canceled", "queued", "scheduled", "sending",
                          "sent", "delivered", "read", "undelivered", "failed"]


def _out(row: dict[str, Any]) -> CampaignOut:
    return CampaignOut(**snapshot(row))


async def _kick(request: Request, sub_account: dict[str, Any]) -> None:
    handles = getattr(request.app.state, "actors", None)
    if handles is not None:
        slot = await request.app.state.hub.pool.fetchval(
            "SELECT slot FROM sub_accounts WHERE id = $1", sub_account["id"])
        await handles.kick(slot)


@router.get("", response_model=Page[CampaignOut])
async def list_campaigns(hub: HubDep, sub_account: SubAccountDep, page: PageDep,
                         status: Annotated[CampaignStatus | None, Query()] = None
                         ) -> Page[CampaignOut]:
    rows = await store.list_page(hub.pool, sub_account["id"], status, page.cursor, page.limit)
    p = make_page(rows, page.limit)
    return Page[CampaignOut](data=[_out(r) for r in p.data], has_more=p.has_more,
                             next_cursor=p.next_cursor)


@router.post("", status_code=201, response_model=CampaignOut)
async def create_campaign(hub: HubDep, principal: PrincipalDep, sub_account: SubAccountDep,
                          body: CampaignIn, request: Request,
                          key: IdempotencyKey = None) -> JSONResponse:
    async def work() -> tuple[int, CampaignOut]:
        data = body.model_dump(mode="python")
        data["voice"] = body.voice.model_dump(mode="json") if body.voice else None
        row = await actions.do_create_campaign(hub, sub_account, data)
        return 201, _out(row)

    return await idempotency.run(hub, principal, key, "POST", request.url.path, body, work)


@router.get("/{campaign_id}", response_model=CampaignOut)
async def get_campaign(hub: HubDep, sub_account: SubAccountDep,
                       campaign_id: UUID) -> CampaignOut:
    return _out(await actions.get_campaign(hub, sub_account["id"], campaign_id))


@router.patch("/{campaign_id}", response_model=CampaignOut)
async def update_campaign(hub: HubDep, sub_account: SubAccountDep, campaign_id: UUID,
                          body: CampaignPatch) -> CampaignOut:
    """Edits a draft (fields left out stay; the result is checked as a create is); of a
    launched campaign only the name may change (anything else is 409: duplicate it)."""
    changes = body.model_dump(mode="python", exclude_unset=True)
    if "voice" in changes:
        changes["voice"] = body.voice.model_dump(mode="json") if body.voice else None
    return _out(await actions.do_update_campaign(hub, sub_account, campaign_id, changes))


@router.delete("/{campaign_id}", status_code=204)
async def delete_campaign(hub: HubDep, sub_account: SubAccountDep,
                          campaign_id: UUID) -> Response:
    """Deletes a draft; a launched campaign is 409 (cancel it instead)."""
    await actions.do_delete_campaign(hub, sub_account, campaign_id)
    return Response(status_code=204)


@router.post("/{campaign_id}/duplicate", status_code=201, response_model=CampaignOut)
async def duplicate(hub: HubDep, principal: PrincipalDep, sub_account: SubAccountDep,
                    campaign_id: UUID, request: Request,
                    key: IdempotencyKey = None) -> JSONResponse:
    """A new draft with this campaign's content, audience, window and limits."""
    async def work() -> tuple[int, CampaignOut]:
        return 201, _out(await actions.do_duplicate_campaign(hub, sub_account, campaign_id))

    return await idempotency.run(hub, principal, key, "POST", request.url.path, None, work)


@router.post("/{campaign_id}/launch", response_model=CampaignOut)
async def launch(hub: HubDep, principal: PrincipalDep, sub_account: SubAccountDep,
                 campaign_id: UUID, request: Request,
                 key: IdempotencyKey = None) -> JSONResponse:
    """Materialise the audience and start sending (or wait for `start_at`)."""
    async def work() -> tuple[int, CampaignOut]:
        return 200, _out(await actions.do_launch_campaign(hub, sub_account, campaign_id))

    response = await idempotency.run(hub, principal, key, "POST", request.url.path, None, work)
    await _kick(request, sub_account)
    return response


@router.post("/{campaign_id}/pause", response_model=CampaignOut)
async def pause(hub: HubDep, sub_account: SubAccountDep, campaign_id: UUID) -> CampaignOut:
    return _out(await actions.do_pause_campaign(hub, sub_account, campaign_id))


@router.post("/{campaign_id}/resume", response_model=CampaignOut)
async def resume(hub: HubDep, sub_account: SubAccountDep, campaign_id: UUID,
                 request: Request) -> CampaignOut:
    row = await actions.do_resume_campaign(hub, sub_account, campaign_id)
    await _kick(request, sub_account)
    return _out(row)


@router.post("/{campaign_id}/cancel", response_model=CampaignOut)
async def cancel(hub: HubDep, sub_account: SubAccountDep, campaign_id: UUID) -> CampaignOut:
    return _out(await actions.do_cancel_campaign(hub, sub_account, campaign_id))


@router.get("/{campaign_id}/stats", response_model=CampaignStats)
async def stats(hub: HubDep, sub_account: SubAccountDep, campaign_id: UUID) -> CampaignStats:
    return CampaignStats(**await actions.campaign_stats(hub, sub_account, campaign_id))


@router.get("/{campaign_id}/recipients")
async def recipients(
    hub: HubDep, sub_account: SubAccountDep, campaign_id: UUID,
    status: Annotated[RecipientStatus | None, Query(description="pending, skipped, "
                                                    "canceled or a message status")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[UUID | None, Query(description="next_cursor of the previous page")] = None,
) -> dict[str, Any]:
    await actions.get_campaign(hub, sub_account["id"], campaign_id)
    rows = await store.recipients_page(hub.pool, campaign_id, status, cursor, limit + 1)
    has_more = len(rows) > limit
    rows = rows[:limit]
    return {"data": [RecipientOut(**r).model_dump(mode="json") for r in rows],
            "has_more": has_more,
            "next_cursor": str(rows[-1]["contact_id"]) if has_more else None}


@router.post("/{campaign_id}/dry-run", response_model=DryRunOut)
async def dry_run(hub: HubDep, sub_account: SubAccountDep, campaign_id: UUID) -> DryRunOut:
    """The projected timeline: when each time zone's recipients would be sent."""
    return DryRunOut(**await actions.campaign_dry_run(hub, sub_account, campaign_id))
