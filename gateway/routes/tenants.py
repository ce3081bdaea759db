"""Sub-accounts, their API keys and the agency's own."""

from __future__ import annotations

from uuid import UUID

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from gateway import idempotency
from gateway.deps import (
    HubDep,
    IdempotencyKey,
    PageDep,
    PageParams,
    PrincipalDep,
    SubAccountDep,
)
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
from hub.context import Hub
from hub.pagination import make_page
from hub.store import tenants
from hub.tenancy import Principal

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
    return await _list_keys(hub, sub_account["agency_id"], sub_account["id"], page)


@router.post("/sub-accounts/{sa}/api-keys", status_code=201, response_model=ApiKeyCreated)
async def create_api_key(hub: HubDep, principal: PrincipalDep, sub_account: SubAccountDep,
                         body: ApiKeyIn, request: Request,
                         key: IdempotencyKey = None) -> JSONResponse:
    return await _create_key(hub, principal, sub_account["id"], body, request, key)


@router.delete("/sub-accounts/{sa}/api-keys/{key_id}", response_model=ApiKeyOut)
async def revoke_api_key(hub: HubDep, principal: PrincipalDep, sub_account: SubAccountDep,
                         key_id: UUID) -> ApiKeyOut:
    return ApiKeyOut(**await actions.do_revoke_api_key(hub, principal, sub_account["id"], key_id))


# The agency's own keys (they reach every sub-account), for agency keys only.


@router.get("/agency/api-keys", response_model=Page[ApiKeyOut], tags=["agency"])
async def list_agency_api_keys(hub: HubDep, principal: PrincipalDep,
                               page: PageDep) -> Page[ApiKeyOut]:
    principal.require_agency()
    return await _list_keys(hub, principal.agency_id, None, page)


@router.post("/agency/api-keys", status_code=201, response_model=ApiKeyCreated, tags=["agency"])
async def create_agency_api_key(hub: HubDep, principal: PrincipalDep, body: ApiKeyIn,
                                request: Request, key: IdempotencyKey = None) -> JSONResponse:
    principal.require_agency()
    return await _create_key(hub, principal, None, body, request, key)


@router.delete("/agency/api-keys/{key_id}", response_model=ApiKeyOut, tags=["agency"])
async def revoke_agency_api_key(hub: HubDep, principal: PrincipalDep, key_id: UUID) -> ApiKeyOut:
    principal.require_agency()
    return ApiKeyOut(**await actions.do_revoke_api_key(hub, principal, None, key_id))


async def _list_keys(hub: Hub, agency_id: UUID, sub_account_id: UUID | None,
                     page: PageParams) -> Page[ApiKeyOut]:
    rows = await tenants.list_api_keys(hub.pool, agency_id, sub_account_id, page.cursor,
                                       page.limit)
    p = make_page(rows, page.limit)
    return Page[ApiKeyOut](data=[ApiKeyOut(**r) for r in p.data], has_more=p.has_more,
                           next_cursor=p.next_cursor)


async def _create_key(hub: Hub, principal: Principal, sub_account_id: UUID | None,
                      body: ApiKeyIn, request: Request, key: str | None) -> JSONResponse:
    """The secret is in this answer only: the Idempotency-Key record keeps the rest."""
    async def work() -> tuple[int, ApiKeyCreated]:
        row, secret = await actions.do_create_api_key(hub, principal, sub_account_id, body.name)
        return 201, ApiKeyCreated(**row, key=secret)

    return await idempotency.run(hub, principal, key, "POST", request.url.path, body, work,
                                 shown_once="key")
