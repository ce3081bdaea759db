"""The agent inbox: Mine / Unassigned / All with unread badges, a thread with delivery ticks
that move live, assignment, and a reply box that refuses opted-out contacts up front.

The page follows the sub-account's feed over the WebSocket (static/app.js) and re-fetches
the list and the open thread from here when an event touches them."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from gateway.pages.common import Access, AccessDep, PageDenied, contact_label, render
from gateway.pages.explain import STATUS_WORDS, explain
from hub import events
from hub.context import Hub
from hub.store import contacts as contact_store
from hub.store import conversations as conv_store
from hub.store import messaging
from hub.store import suppressions as suppression_store
from hub.store import users as user_store

router = APIRouter()
Tab = Annotated[str, Query(pattern="^(mine|unassigned|all)$")]
THREAD_LIMIT = 200


def _hub(request: Request) -> Hub:
    hub: Hub = request.app.state.hub
    return hub


async def _list_ctx(hub: Hub, access: Access, tab: str, current: UUID | None) -> dict:
    counts = await conv_store.inbox_counts(hub.pool, access.sa_id, access.me)
    rows = await conv_store.inbox_page(hub.pool, access.sa_id, tab, access.me, 100)
    for r in rows:
        r["label"] = contact_label(r)
    return {"tab": tab, "counts": counts, "conversations": rows, "current": current}


@router.get("/sa/{sa}/inbox")
async def inbox(request: Request, access: AccessDep, tab: Tab = "all",
                c: UUID | None = None) -> HTMLResponse:
    hub = _hub(request)
    # The feed resumes from the head as it was before the page read anything: an event
    # that lands while the page renders is replayed, never missed.
    bounds = await events.log_bounds(hub.pool, access.sa_id)
    ctx = await _list_ctx(hub, access, tab, c)
    thread = await _thread_ctx(hub, access, c) if c else None
    return render(request, "inbox.html", access=access, section="inbox", thread=thread,
                  seq=bounds[1] if bounds else "", **ctx)


@router.get("/sa/{sa}/inbox/list")
async def inbox_list(request: Request, access: AccessDep, tab: Tab = "all",
                     c: UUID | None = None) -> HTMLResponse:
    ctx = await _list_ctx(_hub(request), access, tab, c)
    return render(request, "_inbox_list.html", access=access, **ctx)


@router.get("/sa/{sa}/inbox/thread/{conversation_id}")
async def thread(request: Request, access: AccessDep, conversation_id: UUID) -> HTMLResponse:
    ctx = await _thread_ctx(_hub(request), access, conversation_id)
    return render(request, "_thread.html", access=access, thread=ctx)


@router.get("/sa/{sa}/inbox/thread/{conversation_id}/messages")
async def thread_messages(request: Request, access: AccessDep,
                          conversation_id: UUID) -> HTMLResponse:
    ctx = await _thread_ctx(_hub(request), access, conversation_id)
    return render(request, "_messages.html", access=access, thread=ctx)


async def _thread_ctx(hub: Hub, access: Access, conversation_id: UUID) -> dict:
    conv = await messaging.get_conversation(hub.pool, access.sa_id, conversation_id)
    if conv is None:
        raise PageDenied(404, "Not found", "There is no such conversation here.")
    contact = await contact_store.get(hub.pool, access.sa_id, conv["contact_id"]) or {}
    address = (contact.get("email") or "").lower() if conv["channel"] == "email" \
        else contact.get("phone")
    opted_out = bool(address) and await suppression_store.is_suppressed(
        hub.pool, access.sa_id, conv["channel"], address or "")
    messages = await conv_store.thread(hub.pool, access.sa_id, conversation_id, THREAD_LIMIT)
    for m in messages:
        m["words"] = STATUS_WORDS.get(m["status"], m["status"])
        m["reason"] = (m["error_message"] or explain(m["error_code"])) \
            if m["status"] in ("failed", "undelivered") \
            else (m["error_message"] or "") if m["status"] == "queued" else ""
    agents = await user_store.members(hub.pool, access.sa_id, ["agent", "admin"])
    return {"conversation": conv, "contact": contact, "label": contact_label(contact),
            "opted_out": opted_out, "messages": messages, "agents": agents}
