"""Provider accounts (secrets are write-only) and senders."""

from __future__ import annotations

from typing import Annotated, Literal
from uuid import UUID

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse

from channels import smtp
from channels.base import ProviderCredentials
from gateway import idempotency
from gateway.deps import HubDep, IdempotencyKey, PageDep, PrincipalDep, SubAccountDep
from gateway.schemas import (
    Page,
    ProviderAccountIn,
    ProviderAccountOut,
    ProviderAccountPatch,
    ProviderTestOut,
    SenderIn,
    SenderOut,
)
from hub import actions
from hub.errors import Conflict, NotFound, ValidationFailed
from hub.pagination import make_page
from hub.store import tenants

router = APIRouter(prefix="/v1/sub-accounts/{sa}", tags=["providers and senders"])


def _provider_fields(body: ProviderAccountIn | ProviderAccountPatch) -> dict[str, object]:
    fields = body.model_dump(exclude_unset=True)
    if fields.get("base_url") is not None:
        fields["base_url"] = str(fields["base_url"]).rstrip("/")
    return fields


@router.get("/providers", response_model=Page[ProviderAccountOut])
async def list_providers(hub: HubDep, sub_account: SubAccountDep,
                         page: PageDep) -> Page[ProviderAccountOut]:
    rows = await tenants.list_provider_accounts(hub.pool, sub_account["id"], page.cursor,
                                                page.limit)
    p = make_page(rows, page.limit)
    return Page[ProviderAccountOut](data=[ProviderAccountOut(**r) for r in p.data],
                                    has_more=p.has_more, next_cursor=p.next_cursor)


@router.post("/providers", status_code=201, response_model=ProviderAccountOut)
async def create_provider(hub: HubDep, principal: PrincipalDep, sub_account: SubAccountDep,
                          body: ProviderAccountIn, request: Request,
                          key: IdempotencyKey = None) -> JSONResponse:
    async def work() -> tuple[int, ProviderAccountOut]:
        row = await actions.do_create_provider_account(hub, sub_account["id"],
                                                       _provider_fields(body))
        return 201, ProviderAccountOut(**row)

    return await idempotency.run(hub, principal, key, "POST", request.url.path, body, work)


@router.get("/providers/{provider_id}", response_model=ProviderAccountOut)
async def get_provider(hub: HubDep, sub_account: SubAccountDep,
                       provider_id: UUID) -> ProviderAccountOut:
    row = await tenants.get_provider_account(hub.pool, sub_account["id"], provider_id)
    if row is None:
        raise NotFound("no such provider account", code="provider_account_not_found")
    return ProviderAccountOut(**row)


@router.patch("/providers/{provider_id}", response_model=ProviderAccountOut)
async def update_provider(hub: HubDep, sub_account: SubAccountDep, provider_id: UUID,
                          body: ProviderAccountPatch) -> ProviderAccountOut:
    row = await actions.do_update_provider_account(hub, sub_account["id"], provider_id,
                                                   _provider_fields(body))
    return ProviderAccountOut(**row)


@router.post("/providers/{provider_id}/test", response_model=ProviderTestOut)
async def check_provider(hub: HubDep, sub_account: SubAccountDep,
                         provider_id: UUID) -> ProviderTestOut:
    """Check an SMTP account's settings without sending: connect, EHLO, STARTTLS and AUTH
    exactly as a send would, then QUIT. 200 says what worked; a 422 problem names the
    setting that failed (`config.host`, `config.port`, `config.start_tls`, `secret` …) and
    what to do. Takes at most 30 s (the SMTP timeout). Other providers: 409."""
    row = await tenants.get_provider_account(hub.pool, sub_account["id"], provider_id)
    secret = await tenants.get_provider_secret(hub.pool, sub_account["id"], provider_id)
    if row is None or secret is None:
        raise NotFound("no such provider account", code="provider_account_not_found")
    if row["provider"] != smtp.PROVIDER:
        raise Conflict("only SMTP accounts can be tested here; a Twilio or SendGrid account "
                       "shows its errors on the first send", code="provider_test_unsupported")
    creds = ProviderCredentials(row["provider"], row["account_id"], hub.box.decrypt(secret),
                                row["base_url"], dict(row["config"] or {}))
    try:
        found = await smtp.check_relay(creds)
    except smtp.RelayCheckFailed as failed:
        raise ValidationFailed.field(failed.field, failed.message, failed.code) from None
    return ProviderTestOut.model_validate(found)


@router.delete("/providers/{provider_id}", status_code=204)
async def delete_provider(hub: HubDep, sub_account: SubAccountDep, provider_id: UUID) -> Response:
    await actions.do_delete_provider_account(hub, sub_account["id"], provider_id)
    return Response(status_code=204)


@router.get("/senders", response_model=Page[SenderOut])
async def list_senders(
    hub: HubDep, sub_account: SubAccountDep, page: PageDep,
    channel: Annotated[Literal["sms", "email", "voice"] | None, Query()] = None,
) -> Page[SenderOut]:
    rows = await tenants.list_senders(hub.pool, sub_account["id"], channel, page.cursor,
                                      page.limit)
    p = make_page(rows, page.limit)
    return Page[SenderOut](data=[SenderOut(**r) for r in p.data], has_more=p.has_more,
                           next_cursor=p.next_cursor)


@router.post("/senders", status_code=201, response_model=SenderOut)
async def create_sender(hub: HubDep, principal: PrincipalDep, sub_account: SubAccountDep,
                        body: SenderIn, request: Request,
                        key: IdempotencyKey = None) -> JSONResponse:
    async def work() -> tuple[int, SenderOut]:
        row = await actions.do_create_sender(hub, sub_account, body.model_dump())
        return 201, SenderOut(**row)

    return await idempotency.run(hub, principal, key, "POST", request.url.path, body, work)


@router.get("/senders/{sender_id}", response_model=SenderOut)
async def get_sender(hub: HubDep, sub_account: SubAccountDep, sender_id: UUID) -> SenderOut:
    row = await tenants.get_sender(hub.pool, sub_account["id"], sender_id)
    if row is None:
        raise NotFound("no such sender", code="sender_not_found")
    return SenderOut(**row)


@router.delete("/senders/{sender_id}", status_code=204)
async def delete_sender(hub: HubDep, sub_account: SubAccountDep, sender_id: UUID) -> Response:
    await actions.do_delete_sender(hub, sub_account["id"], sender_id)
    return Response(status_code=204)
