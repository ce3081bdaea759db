"""The agent inbox: Mine / Unassigned / All with unread badges, a thread with delivery ticks
that move live, assignment, and a reply box that refuses opted-out contacts up front.

The page follows the sub-account's feed over the WebSocket (static/app.js) and re-fetches
the list and the open thread from here when an event touches them. The list pages with the
API's cursors ("Load more", and an Unread filter so every unread thread is reachable); a
long thread shows its latest messages with "Show older" before them."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlsplit
from uuid import UUID

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from gateway.pages.common import Access, AccessDep, PageDenied, contact_label, render
from gateway.pages.explain import STATUS_WORDS, explain
from gateway.schemas import NoNul
from hub import events
from hub.context import Hub
from hub.pagination import decode_cursor, encode_cursor, make_page
from hub.store import contacts as contact_store
from hub.store import conversations as conv_store
from hub.store import messaging
from hub.store import suppressions as suppression_store
from hub.store import users as user_store

router = APIRouter()
Tab = Annotated[str, Query(pattern="^(mine|unassigned|all)$")]
PageCursor = Annotated[str, Query(max_length=200), NoNul]
LIST_LIMIT = 100
THREAD_LIMIT = 200


def _hub(request: Request) -> Hub:
    hub: Hub = request.app.state.hub
    return hub


async def _list_ctx(hub: Hub, access: Access, tab: str, current: UUID | None,
                    unread: bool = False, cursor: str = "") -> dict:
    counts = await conv_store.inbox_counts(hub.pool, access.sa_id, access.me)
    rows = await conv_store.inbox_page(hub.pool, access.sa_id, tab, access.me, LIST_LIMIT + 1,
                                       unread=unread, cursor=decode_cursor(cursor or None))
    page = make_page(rows, LIST_LIMIT, by_activity=True)
    for r in page.data:
        r["label"] = contact_label(r)
    return {"tab": tab, "counts": counts, "conversations": page.data, "current": current,
            "unread": unread, "next_cursor": page.next_cursor}


@router.get("/sa/{sa}/inbox")
async def inbox(request: Request, access: AccessDep, tab: Tab = "all",
                c: UUID | None = None, unread: bool = False,
                cursor: PageCursor = "") -> HTMLResponse:
    hub = _hub(request)
    # The feed resumes from the head as it was before the page read anything: an event
    # that lands while the page renders is replayed, never missed.
    bounds = await events.log_bounds(hub.pool, access.sa_id)
    ctx = await _list_ctx(hub, access, tab, c, unread, cursor)
    thread = await _thread_ctx(hub, access, c) if c else None
    return render(request, "inbox.html", access=access, section="inbox", thread=thread,
                  seq=bounds[1] if bounds else "", paged=bool(cursor), **ctx)


@router.get("/sa/{sa}/inbox/list")
async def inbox_list(request: Request, access: AccessDep, tab: Tab = "all",
                     c: UUID | None = None, unread: bool = False) -> HTMLResponse:
    ctx = await _list_ctx(_hub(request), access, tab, c, unread)
    return render(request, "_inbox_list.html", access=access, **ctx)


@router.get("/sa/{sa}/inbox/more")
async def inbox_more(request: Request, access: AccessDep, cursor: PageCursor,
                     tab: Tab = "all", c: UUID | None = None,
                     unread: bool = False) -> HTMLResponse:
    """The threads after `cursor`, which "Load more" appends to the list."""
    ctx = await _list_ctx(_hub(request), access, tab, c, unread, cursor)
    return render(request, "_inbox_list.html", access=access, rows_only=True, **ctx)


@router.get("/sa/{sa}/inbox/thread/{conversation_id}")
async def thread(request: Request, access: AccessDep, conversation_id: UUID) -> HTMLResponse:
    ctx = await _thread_ctx(_hub(request), access, conversation_id)
    return render(request, "_thread.html", access=access, thread=ctx)


@router.get("/sa/{sa}/inbox/thread/{conversation_id}/messages")
async def thread_messages(request: Request, access: AccessDep, conversation_id: UUID,
                          before: PageCursor = "") -> HTMLResponse:
    """The thread's latest messages; with `before`, the older ones "Show older" puts in
    front of them (without the opt-out state, which the latest ones carry)."""
    ctx = await _thread_ctx(_hub(request), access, conversation_id, before)
    return render(request, "_messages.html", access=access, thread=ctx, older=bool(before))


def _pictures(urls: list[str] | None) -> list[str]:
    """The media URLs a page may link and show: http(s) only (never javascript: or data:)."""
    return [u for u in urls or [] if _is_web_address(u)]


def _is_web_address(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:  # "http://[" and the like, stored as the provider gave them
        return False
    return parts.scheme.lower() in ("http", "https") and bool(parts.netloc)


async def _thread_ctx(hub: Hub, access: Access, conversation_id: UUID,
                      before: str = "") -> dict[str, Any]:
    conv = await messaging.get_conversation(hub.pool, access.sa_id, conversation_id)
    if conv is None:
        raise PageDenied(404, "Not found", "There is no such conversation here.")
    contact = await contact_store.get(hub.pool, access.sa_id, conv["contact_id"]) or {}
    address = (contact.get("email") or "").lower() if conv["channel"] == "email" \
        else contact.get("phone")
    opted_out = bool(address) and await suppression_store.is_suppressed(
        hub.pool, access.sa_id, conv["channel"], address or "")
    messages = await conv_store.thread(hub.pool, access.sa_id, conversation_id,
                                       THREAD_LIMIT + 1, decode_cursor(before or None))
    # One more than shown says whether there are older ones; the first shown is their cursor.
    older = len(messages) > THREAD_LIMIT
    messages = messages[-THREAD_LIMIT:]
    older_cursor = encode_cursor(messages[0]["created_at"], messages[0]["id"]) \
        if older else None
    for m in messages:
        m["pictures"] = _pictures(m["media_urls"])
        m["words"] = STATUS_WORDS.get(m["status"], m["status"])
        m["reason"] = (m["error_message"] or explain(m["error_code"])) \
            if m["status"] in ("failed", "undelivered") \
            else (m["error_message"] or "") if m["status"] == "queued" else ""
    agents = await user_store.members(hub.pool, access.sa_id, ["agent", "admin"])
    return {"conversation": conv, "contact": contact, "label": contact_label(contact),
            "opted_out": opted_out, "messages": messages, "agents": agents,
            "older_cursor": older_cursor}
