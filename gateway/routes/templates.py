"""Saved message templates: named text with {{merge_fields}} per channel, listed, changed,
deleted, and previewed with a contact's fields; a campaign can be created from one."""

from __future__ import annotations

from typing import Annotated, Literal
from uuid import UUID

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse

from gateway import idempotency
from gateway.deps import HubDep, IdempotencyKey, PageDep, PrincipalDep, SubAccountDep
from gateway.schemas import NoNul, Page, TemplateIn, TemplateOut, TemplatePatch, TemplatePreview
from hub import template_actions as actions
from hub.pagination import make_page
from hub.store import templates as store

router = APIRouter(prefix="/v1/sub-accounts/{sa}/templates", tags=["templates"])

Channel = Literal["sms", "mms", "email", "voice"]


@router.get("", response_model=Page[TemplateOut])
async def list_templates(
    hub: HubDep, sub_account: SubAccountDep, page: PageDep,
    channel: Annotated[Channel | None, Query()] = None,
    q: Annotated[str | None, Query(max_length=200, description="part of the name"),
                 NoNul] = None,
) -> Page[TemplateOut]:
    rows = await store.list_page(hub.pool, sub_account["id"], channel=channel, q=q,
                                 cursor=page.cursor, limit=page.limit)
    p = make_page(rows, page.limit)
    return Page[TemplateOut](data=[TemplateOut(**r) for r in p.data], has_more=p.has_more,
                             next_cursor=p.next_cursor)


@router.post("", status_code=201, response_model=TemplateOut)
async def create_template(hub: HubDep, principal: PrincipalDep, sub_account: SubAccountDep,
                          body: TemplateIn, request: Request,
                          key: IdempotencyKey = None) -> JSONResponse:
    async def work() -> tuple[int, TemplateOut]:
        row = await actions.do_create_template(hub, sub_account["id"],
                                               body.model_dump(mode="json"))
        return 201, TemplateOut(**row)

    return await idempotency.run(hub, principal, key, "POST", request.url.path, body, work)


@router.get("/{template_id}", response_model=TemplateOut)
async def get_template(hub: HubDep, sub_account: SubAccountDep,
                       template_id: UUID) -> TemplateOut:
    return TemplateOut(**await actions.get_template(hub, sub_account["id"], template_id))


@router.patch("/{template_id}", response_model=TemplateOut)
async def update_template(hub: HubDep, sub_account: SubAccountDep, template_id: UUID,
                          body: TemplatePatch) -> TemplateOut:
    row = await actions.do_update_template(hub, sub_account["id"], template_id,
                                           body.model_dump(mode="json", exclude_unset=True))
    return TemplateOut(**row)


@router.delete("/{template_id}", status_code=204)
async def delete_template(hub: HubDep, sub_account: SubAccountDep,
                          template_id: UUID) -> Response:
    await actions.do_delete_template(hub, sub_account["id"], template_id)
    return Response(status_code=204)


@router.get("/{template_id}/preview", response_model=TemplatePreview)
async def preview_template(
    hub: HubDep, sub_account: SubAccountDep, template_id: UUID,
    contact_id: Annotated[UUID | None, Query(
        description="render with this contact's fields (default: the newest contact)")] = None,
) -> TemplatePreview:
    contact, check = await actions.preview_template(hub, sub_account["id"], template_id,
                                                    contact_id)
    return TemplatePreview(contact_id=contact.get("id"), body=check.body, subject=check.subject,
                           characters=check.characters, segments=check.segments,
                           encoding=check.encoding, missing=check.missing,
                           warnings=check.warnings)
