"""Sub-accounts and their API keys."""

from __future__ import annotations

from uuid import UUID

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from gateway import idempotency
from gateway.deps import HubDep, IdempotencyKey, PageDep, PrincipalDep, SubAccountDep
from gateway.schemas import (
    ApiKeyCreated,
    ApiKeyIn,
    ApiKeyOut,
    Page,
    SubAccountIn,
    SubAccountOut,
    SubAccountPatch,
)
from hub import actions
from hub.pagination import make_page
from hub.store import tenants

router = APIRouter(prefix="/v1", tags=["sub-accounts"])


@router.get("/sub-accounts", response_model=Page[SubAccountOut])
async def list_sub_accounts(hub: HubDep, principal: PrincipalDep,
                            page: PageDep) -> Page[SubAccountOut]:
    rows = await tenants.list_sub_accounts(hub.pool, principal.agency_id,
                                           principal.sub_account_id, page.cursor, page.limit)
    p = make_page(rows, page.limit)
    return Page[SubAccountOut](data=[SubAccountOut(**r) for r in p.data], has_more=p.has_more,
                               next_cursor=p.next_cursor)


@router.post("/sub-accounts", status_code=201, response_model=SubAccountOut)
async def create_sub_account(hub: HubDep, principal: PrincipalDep, body: SubAccountIn,
                             request: Request, key: IdempotencyKey = None) -> JSONResponse:
    async def work() -> tuple[int, SubAccountOut]:
        row = await actions.do_create_sub_account(hub, principal, body.model_dump())
        return 201, SubAccountOut(**row)

    return await idempotency.run(hub, principal, key, "POST", request.url.path, body, work)


@router.get("/sub-accounts/{sa}", response_model=SubAccountOut)
async def get_sub_account(sub_account: SubAccountDep) -> SubAccountOut:
    return SubAccountOut(**sub_account)


@router.patch("/sub-accounts/{sa}", response_model=SubAccountOut)
async def update_sub_account(hub: HubDep, sub_account: SubAccountDep,
                             body: SubAccountPatch) -> SubAccountOut:
    row = await actions.do_update_sub_account(hub, sub_account["id"],
                                              body.model_dump(exclude_unset=True))
    return SubAccountOut(**row)


@router.get("/sub-accounts/{sa}/api-keys", response_model=Page[ApiKeyOut])
async def list_api_keys(hub: HubDep, sub_account: SubAccountDep, page: PageDep) -> Page[ApiKeyOut]:
    rows = await tenants.list_api_keys(hub.pool, sub_account["id"], page.cursor, page.limit)
    p = make_page(rows, page.limit)
    return Page[ApiKeyOut](data=[ApiKeyOut(**r) for r in p.data], has_more=p.has_more,
                           next_cursor=p.next_cursor)


@router.post("/sub-accounts/{sa}/api-keys", status_code=201, response_model=ApiKeyCreated)
async def create_api_key(hub: HubDep, principal: PrincipalDep, sub_account: SubAccountDep,
                         body: ApiKeyIn, request: Request,
                         key: IdempotencyKey = None) -> JSONResponse:
    async def work() -> tuple[int, ApiKeyCreated]:
        row, secret = await actions.do_create_api_key(hub, principal, sub_account, body.name)
        return 201, ApiKeyCreated(**row, key=secret)

    return await idempotency.run(hub, principal, key, "POST", request.url.path, body, work)


@router.delete("/sub-accounts/{sa}/api-keys/{key_id}", response_model=ApiKeyOut)
async def revoke_api_key(hub: HubDep, principal: PrincipalDep, sub_account: SubAccountDep,
                         key_id: UUID) -> ApiKeyOut:
    row = await actions.do_revoke_api_key(hub, principal, sub_account["id"], key_id)
    return ApiKeyOut(**row)
