"""Contacts: CRUD, upsert by phone or email, and CSV imports as 202 jobs."""

from __future__ import annotations

import json
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse

from gateway import idempotency
from gateway.deps import HubDep, IdempotencyKey, PageDep, PrincipalDep, SubAccountDep
from gateway.schemas import (
    ContactIn,
    ContactOut,
    ContactPatch,
    ImportErrorOut,
    ImportErrorsPage,
    ImportJobOut,
    NoNul,
    Page,
)
from hub import actions, imports
from hub.contacts import phone_search
from hub.errors import NotFound, ValidationFailed
from hub.pagination import make_page
from hub.store import contacts as contact_store
from hub.store import imports as import_store

router = APIRouter(prefix="/v1/sub-accounts/{sa}", tags=["contacts"])


@router.get("/contacts", response_model=Page[ContactOut])
async def list_contacts(
    hub: HubDep, sub_account: SubAccountDep, page: PageDep,
    tag: Annotated[str | None, Query(max_length=64), NoNul] = None,
    q: Annotated[str | None,
                 Query(max_length=200, description="part of a phone number (written any "
                       "way), an email's start or part of a name (accents and case "
                       "aside: jose finds José)"), NoNul] = None,
) -> Page[ContactOut]:
    phone = phone_search(q, sub_account["default_region"]) if q is not None else None
    rows = await contact_store.list_page(hub.pool, sub_account["id"], tag=tag, q=q,
                                         phone=phone, cursor=page.cursor, limit=page.limit)
    p = make_page(rows, page.limit)
    return Page[ContactOut](data=[ContactOut(**r) for r in p.data], has_more=p.has_more,
                            next_cursor=p.next_cursor)


@router.post("/contacts", status_code=201, response_model=ContactOut)
async def create_contact(hub: HubDep, principal: PrincipalDep, sub_account: SubAccountDep,
                         body: ContactIn, request: Request,
                         key: IdempotencyKey = None) -> JSONResponse:
    async def work() -> tuple[int, ContactOut]:
        row = await actions.do_create_contact(hub, sub_account, body.model_dump())
        return 201, ContactOut(**row)

    return await idempotency.run(hub, principal, key, "POST", request.url.path, body, work)


@router.post("/contacts/upsert", response_model=ContactOut,
             responses={201: {"model": ContactOut, "description": "created"},
                        200: {"model": ContactOut, "description": "updated"}})
async def upsert_contact(hub: HubDep, principal: PrincipalDep, sub_account: SubAccountDep,
                         body: ContactIn, request: Request,
                         key: IdempotencyKey = None) -> JSONResponse:
    """Create the contact, or update the one with the same phone (else the same email).
    Tags and custom fields are merged, never dropped."""
    async def work() -> tuple[int, ContactOut]:
        row, created = await actions.do_upsert_contact(
            hub, sub_account, body.model_dump(exclude_unset=True)
        )
        return (201 if created else 200), ContactOut(**row)

    return await idempotency.run(hub, principal, key, "POST", request.url.path, body, work)


@router.get("/contacts/imports", response_model=Page[ImportJobOut])
async def list_imports(hub: HubDep, sub_account: SubAccountDep,
                       page: PageDep) -> Page[ImportJobOut]:
    rows = await import_store.list_page(hub.pool, sub_account["id"], page.cursor, page.limit)
    p = make_page(rows, page.limit)
    return Page[ImportJobOut](data=[ImportJobOut(**r) for r in p.data], has_more=p.has_more,
                              next_cursor=p.next_cursor)


@router.post("/contacts/imports", status_code=202, response_model=ImportJobOut,
             openapi_extra={"requestBody": {"content": {
                 "text/csv": {"schema": {"type": "string"}},
                 "multipart/form-data": {"schema": {"type": "object", "properties": {
                     "file": {"type": "string", "format": "binary"}}}}}}})
async def create_import(
    hub: HubDep, principal: PrincipalDep, sub_account: SubAccountDep, request: Request,
    filename: Annotated[str | None, Query(max_length=255), NoNul] = None,
    key: IdempotencyKey = None,
) -> JSONResponse:
    """Upload a CSV (`Content-Type: text/csv`, or a multipart `file` field). The job runs in
    the background: poll it, or follow `contact_import.*` events."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form()
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise ValidationFailed.field("file", "attach the CSV as a `file` field", "missing")
        source, filename = await upload.read(), filename or upload.filename
    elif content_type.split(";")[0].strip() in ("text/csv", "application/csv", "text/plain"):
        source = await request.body()
    else:
        raise ValidationFailed.field("Content-Type", "send text/csv or multipart/form-data",
                                     "unsupported_media_type")
    if not source.strip():
        raise ValidationFailed.field("file", "the file is empty", "empty_file")

    async def work() -> tuple[int, ImportJobOut]:
        job = await imports.do_create_import(hub, sub_account["id"], filename, source)
        return 202, ImportJobOut(**job)

    response = await idempotency.run(hub, principal, key, "POST", request.url.path, source, work)
    if response.headers.get("Idempotent-Replayed") is None:
        job_id = UUID(json.loads(response.body)["id"])
        request.app.state.jobs.spawn(
            imports.run_import(hub, job_id, sub_account["id"], sub_account["default_region"])
        )
    return response


@router.get("/contacts/imports/{job_id}", response_model=ImportJobOut)
async def get_import(hub: HubDep, sub_account: SubAccountDep, job_id: UUID) -> ImportJobOut:
    job = await import_store.get(hub.pool, sub_account["id"], job_id)
    if job is None:
        raise NotFound("no such import", code="import_not_found")
    return ImportJobOut(**job)


@router.get("/contacts/imports/{job_id}/errors", response_model=ImportErrorsPage)
async def get_import_errors(
    hub: HubDep, sub_account: SubAccountDep, job_id: UUID,
    limit: Annotated[int, Query(ge=1, le=5000)] = 500,
    cursor: Annotated[str | None,
                      Query(pattern=r"^\d{1,9}:.+$", max_length=300,
                            description="the last error seen: `row:field`"), NoNul] = None,
) -> ImportErrorsPage:
    """The per-row error report: which row, which field, why."""
    if await import_store.get(hub.pool, sub_account["id"], job_id) is None:
        raise NotFound("no such import", code="import_not_found")
    row, _, field = (cursor or "0:").partition(":")
    rows = await import_store.list_errors(hub.pool, job_id, (int(row), field), limit + 1)
    has_more = len(rows) > limit
    rows = rows[:limit]
    nxt = f"{rows[-1]['row_number']}:{rows[-1]['field']}" if has_more else None
    return ImportErrorsPage(data=[ImportErrorOut(**r) for r in rows], has_more=has_more,
                            next_cursor=nxt)


@router.get("/contacts/{contact_id}", response_model=ContactOut)
async def get_contact(hub: HubDep, sub_account: SubAccountDep, contact_id: UUID) -> ContactOut:
    row = await contact_store.get(hub.pool, sub_account["id"], contact_id)
    if row is None:
        raise NotFound("no such contact", code="contact_not_found")
    return ContactOut(**row)


@router.patch("/contacts/{contact_id}", response_model=ContactOut)
async def update_contact(hub: HubDep, sub_account: SubAccountDep, contact_id: UUID,
                         body: ContactPatch) -> ContactOut:
    """Change the fields given. Null clears phone, email or timezone; for the other fields
    it is a 422 naming the field (send "", [] or {} to empty them)."""
    row = await actions.do_update_contact(hub, sub_account, contact_id,
                                          body.model_dump(exclude_unset=True))
    return ContactOut(**row)


@router.delete("/contacts/{contact_id}", status_code=204)
async def delete_contact(hub: HubDep, sub_account: SubAccountDep, contact_id: UUID) -> Response:
    """Delete a contact and its conversations (the inbox's threads with it). Its messages
    stay, without the contact, for campaign statistics and the receipts still to come; its
    recipients still pending in campaigns are skipped (`contact_deleted`), and a message
    already queued for it still goes. Suppressions are kept: they name the address, not
    the contact, so a re-imported number stays opted out."""
    await actions.do_delete_contact(hub, sub_account["id"], contact_id)
    return Response(status_code=204)
