"""Suppressions: list, add, remove with a reason (removed ones stay as history)."""

from __future__ import annotations

from typing import Annotated, Literal
from uuid import UUID

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from gateway import idempotency
from gateway.deps import HubDep, IdempotencyKey, PageDep, PrincipalDep, SubAccountDep
from gateway.schemas import NoNul, Page, SuppressionIn, SuppressionOut
from hub import actions
from hub.contacts import phone_search
from hub.errors import NotFound
from hub.pagination import make_page
from hub.store import suppressions as store

router = APIRouter(prefix="/v1/sub-accounts/{sa}", tags=["suppressions"])


@router.get("/suppressions", response_model=Page[SuppressionOut])
async def list_suppressions(
    hub: HubDep, sub_account: SubAccountDep, page: PageDep,
    channel: Annotated[Literal["sms", "email", "voice"] | None, Query()] = None,
    address: Annotated[str | None, Query(
        max_length=320, description="part of the address; a phone number written any way "
                                    "((646) 555-0112) finds its E.164 form"),
        NoNul] = None,
    include_removed: Annotated[bool, Query()] = False,
) -> Page[SuppressionOut]:
    rows = await store.list_page(hub.pool, sub_account["id"], channel=channel,
                                 address=phone_search(address, sub_account["default_region"])
                                 .lower() if address else None,
                                 include_removed=include_removed, cursor=page.cursor,
                                 limit=page.limit)
    p = make_page(rows, page.limit)
    return Page[SuppressionOut](data=[SuppressionOut(**r) for r in p.data],
                                has_more=p.has_more, next_cursor=p.next_cursor)


@router.post("/suppressions", status_code=201, response_model=SuppressionOut,
             responses={200: {"model": SuppressionOut, "description": "already suppressed"}})
async def add_suppression(hub: HubDep, principal: PrincipalDep, sub_account: SubAccountDep,
                          body: SuppressionIn, request: Request,
                          key: IdempotencyKey = None) -> JSONResponse:
    async def work() -> tuple[int, SuppressionOut]:
        row, created = await actions.do_add_suppression(
            hub, sub_account, body.channel, body.address, body.reason, "api", principal.actor
        )
        return (201 if created else 200), SuppressionOut(**row)

    return await idempotency.run(hub, principal, key, "POST", request.url.path, body, work)


@router.get("/suppressions/{suppression_id}", response_model=SuppressionOut)
async def get_suppression(hub: HubDep, sub_account: SubAccountDep,
                          suppression_id: UUID) -> SuppressionOut:
    row = await store.get(hub.pool, sub_account["id"], suppression_id)
    if row is None:
        raise NotFound("no such suppression", code="suppression_not_found")
    return SuppressionOut(**row)


@router.delete("/suppressions/{suppression_id}", response_model=SuppressionOut)
async def remove_suppression(
    hub: HubDep, principal: PrincipalDep, sub_account: SubAccountDep, suppression_id: UUID,
    reason: Annotated[str, Query(min_length=1, max_length=500,
                                 description="why this address may be contacted again"),
                      NoNul],
) -> SuppressionOut:
    row = await actions.do_remove_suppression(hub, sub_account["id"], suppression_id, reason,
                                              principal.actor)
    return SuppressionOut(**row)
