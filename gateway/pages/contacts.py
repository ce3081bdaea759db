"""Contacts: the list with search, a tag filter and "Load more" paging; a CSV import with a
live progress bar and its error rows; one contact with its opt-outs and conversations.

Reads come straight from the hub, as the API's do; the CSV goes to the REST API from the
browser (static/app.js), so the API's checks and the role table apply to the upload."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from gateway.pages.common import Access, AccessDep, PageDenied, contact_label, render
from gateway.schemas import NoNul
from hub.contacts import phone_search
from hub.context import Hub
from hub.pagination import decode_cursor, make_page
from hub.store import audience as audience_store
from hub.store import contact_states
from hub.store import contacts as contact_store
from hub.store import imports as import_store
from hub.timezones import contact_timezone
from hub.users import Role

router = APIRouter()
Row = dict[str, Any]
PAGE_SIZE = 50
ERRORS_SHOWN = 100  # on the page; the API's report has them all
MARKETING = (Role.ADMIN, Role.MARKETER)
#: The channels a contact can be opted out of, as the pages name them, and the contact's
#: field that is the address there (MMS goes by the SMS opt-out).
CHANNELS = (("sms", "SMS", "phone"), ("voice", "Voice", "phone"), ("email", "Email", "email"))
STATE_WORDS = {"subscribed": "subscribed", "opted_out": "opted out",
               "no_address": "no address"}
IMPORT_WORDS = {"pending": "Waiting to start", "running": "Importing", "completed": "Done",
                "failed": "Failed"}
Search = Annotated[str, Query(max_length=200), NoNul]
Tag = Annotated[str, Query(max_length=64), NoNul]
PageCursor = Annotated[str, Query(max_length=200), NoNul]


def _hub(request: Request) -> Hub:
    hub: Hub = request.app.state.hub
    return hub


def channel_states(contact: Row, opt_outs: list[Row]) -> list[Row]:
    """Per channel: `no_address`, `subscribed`, or `opted_out` with the suppression."""
    mine = {o["channel"]: o for o in opt_outs if o["contact_id"] == contact["id"]}
    out = []
    for channel, label, field in CHANNELS:
        state = "opted_out" if channel in mine else "subscribed" if contact[field] \
            else "no_address"
        out.append({"channel": channel, "label": label, "state": state,
                    "words": STATE_WORDS[state], "opt_out": mine.get(channel)})
    return out


async def _decorate(hub: Hub, access: Access, contacts: list[Row]) -> None:
    """Add what the pages show beside the contact's fields, for all of them in two queries."""
    ids = [c["id"] for c in contacts]
    opt_outs = await contact_states.opt_outs(hub.pool, access.sa_id, ids)
    conversations = await contact_states.conversations(hub.pool, access.sa_id, ids)
    zone = access.sub_account["timezone"]
    for c in contacts:
        c["label"] = contact_label(c)
        c["channels"] = channel_states(c, opt_outs)
        c["conversations"] = [v for v in conversations if v["contact_id"] == c["id"]]
        c["last_activity"] = max((v["last_message_at"] for v in c["conversations"]
                                  if v["last_message_at"]), default=None)
        # Without a zone of its own, quiet hours use the number's (else the sub-account's).
        c["zone"] = c["timezone"] or contact_timezone(None, c["phone"], zone).key


async def _list_ctx(hub: Hub, access: Access, q: str, tag: str, cursor: str) -> dict:
    q, tag = q.strip(), tag.strip()
    phone = phone_search(q, access.sub_account["default_region"]) if q else None
    rows = await contact_store.list_page(hub.pool, access.sa_id, tag=tag or None,
                                         q=q or None, phone=phone,
                                         cursor=decode_cursor(cursor or None), limit=PAGE_SIZE)
    page = make_page(rows, PAGE_SIZE)
    await _decorate(hub, access, page.data)
    return {"contacts": page.data, "next_cursor": page.next_cursor, "q": q, "tag": tag,
            "phone": phone}


@router.get("/sa/{sa}/contacts")
async def contacts(request: Request, access: AccessDep, q: Search = "", tag: Tag = "",
                   cursor: PageCursor = "", import_id: UUID | None = None) -> HTMLResponse:
    hub = _hub(request)
    ctx = await _list_ctx(hub, access, q, tag, cursor)
    total = await contact_store.count(hub.pool, access.sa_id)
    matching = (await contact_store.count(hub.pool, access.sa_id, tag=ctx["tag"] or None,
                                          q=ctx["q"] or None, phone=ctx["phone"])
                if ctx["q"] or ctx["tag"] else None)
    tags = await audience_store.tags(hub.pool, access.sa_id)
    imp = await _import_ctx(hub, access, import_id) if import_id else None
    return render(request, "contacts.html", access=access, section="contacts", total=total,
                  matching=matching, tags=tags, can_import=access.can(*MARKETING),
                  paged=bool(cursor), imp=imp, **ctx)


@router.get("/sa/{sa}/contacts/rows")
async def contact_rows(request: Request, access: AccessDep, q: Search = "", tag: Tag = "",
                       cursor: PageCursor = "") -> HTMLResponse:
    """The next page of the table, which "Load more" appends."""
    ctx = await _list_ctx(_hub(request), access, q, tag, cursor)
    return render(request, "_contacts_list.html", access=access, **ctx)


async def _import_ctx(hub: Hub, access: Access, import_id: UUID) -> dict:
    job = await import_store.get(hub.pool, access.sa_id, import_id)
    if job is None:
        raise PageDenied(404, "Not found", "There is no such import here.")
    done = job["status"] in ("completed", "failed")
    errors = await import_store.list_errors(hub.pool, import_id, (0, ""),
                                            ERRORS_SHOWN + 1) if done else []
    total = job["total_rows"]
    pct = 100.0 if done else round(100 * job["processed_rows"] / total, 1) if total else 0.0
    return {"job": job, "done": done, "words": IMPORT_WORDS.get(job["status"], job["status"]),
            "pct": pct, "errors": errors[:ERRORS_SHOWN], "more_errors": len(errors) > ERRORS_SHOWN}


@router.get("/sa/{sa}/contacts/imports/{import_id}")
async def import_progress(request: Request, access: AccessDep, import_id: UUID) -> HTMLResponse:
    """The import's progress, polled by the page until the job is done."""
    imp = await _import_ctx(_hub(request), access, import_id)
    return render(request, "_import.html", access=access, imp=imp)


@router.get("/sa/{sa}/contacts/{contact_id}")
async def contact(request: Request, access: AccessDep, contact_id: UUID) -> HTMLResponse:
    hub = _hub(request)
    row = await contact_store.get(hub.pool, access.sa_id, contact_id)
    if row is None:
        raise PageDenied(404, "Not found", "There is no such contact here.")
    await _decorate(hub, access, [row])
    return render(request, "contact.html", access=access, section="contacts", c=row)
