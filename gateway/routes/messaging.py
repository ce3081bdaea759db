"""Conversations and messages: the read side, assignment to an agent, marking read."""

from __future__ import annotations

from typing import Annotated, Literal
from uuid import UUID

from fastapi import APIRouter, Query
from pydantic import Field

from gateway.deps import HubDep, PageDep, PrincipalDep, SubAccountDep
from gateway.schemas import (
    ConversationOut,
    Input,
    MessageDetail,
    MessageOut,
    NoNul,
    Page,
    StatusChange,
)
from hub.conversations import do_assign_conversation, do_mark_read
from hub.errors import NotFound
from hub.pagination import make_page
from hub.status import Status
from hub.store import messaging
from hub.users import Role, UserPrincipal

router = APIRouter(prefix="/v1/sub-accounts/{sa}", tags=["conversations and messages"])

StatusFilter = Annotated[Status | None, Query(description="only messages in this status")]
DirectionFilter = Annotated[Literal["inbound", "outbound"] | None, Query()]
ChannelFilter = Annotated[Literal["sms", "mms", "email", "voice"] | None, Query()]


@router.get("/conversations", response_model=Page[ConversationOut])
async def list_conversations(
    hub: HubDep, sub_account: SubAccountDep, page: PageDep,
    contact_id: Annotated[UUID | None, Query()] = None,
    unread: Annotated[bool | None, Query(description="only threads with unread messages")] = None,
    assignee: Annotated[str | None, Query(
        max_length=200, description="only threads assigned to this assignee"), NoNul] = None,
    unassigned: Annotated[bool | None, Query(
        description="true: only threads nobody is assigned; false: only assigned ones")] = None,
) -> Page[ConversationOut]:
    """Threads by latest message, newest first; threads with no message yet come last. A
    thread that gets a message while you page may be listed twice or skipped."""
    rows = await messaging.list_conversations(hub.pool, sub_account["id"], contact_id=contact_id,
                                              unread=unread, assignee=assignee,
                                              unassigned=unassigned, cursor=page.cursor,
                                              limit=page.limit)
    p = make_page(rows, page.limit, by_activity=True)
    return Page[ConversationOut](data=[ConversationOut(**r) for r in p.data],
                                 has_more=p.has_more, next_cursor=p.next_cursor)


@router.get("/conversations/{conversation_id}", response_model=ConversationOut)
async def get_conversation(hub: HubDep, sub_account: SubAccountDep,
                           conversation_id: UUID) -> ConversationOut:
    row = await messaging.get_conversation(hub.pool, sub_account["id"], conversation_id)
    if row is None:
        raise NotFound("no such conversation", code="conversation_not_found")
    return ConversationOut(**row)


class AssignmentIn(Input):
    assignee: UUID | None = Field(None, description="the id of the user (agent or admin of "
                                  "this sub-account) who handles the thread; null unassigns")
    take_over: bool = Field(False, description="take the thread from the user who holds it; "
                            "without it, a thread someone else holds is 409 already_assigned")


@router.put("/conversations/{conversation_id}/assignment", response_model=ConversationOut)
async def assign_conversation(hub: HubDep, principal: PrincipalDep, sub_account: SubAccountDep,
                              conversation_id: UUID, body: AssignmentIn) -> ConversationOut:
    """Assign the thread to a user of this sub-account, or unassign it with
    `{"assignee": null}`. A thread another user holds is 409 `already_assigned` (naming
    them) unless `take_over` is true; admins and API keys reassign freely."""
    user = principal if isinstance(principal, UserPrincipal) else None
    row = await do_assign_conversation(
        hub, sub_account["id"], conversation_id, body.assignee,
        caller=user.user_id if user else None,
        override=body.take_over or user is None or user.role == Role.ADMIN)
    return ConversationOut(**row)


@router.post("/conversations/{conversation_id}/read", response_model=ConversationOut)
async def mark_conversation_read(hub: HubDep, sub_account: SubAccountDep,
                                 conversation_id: UUID) -> ConversationOut:
    """Clear the thread's unread count (an agent opened it)."""
    return ConversationOut(**await do_mark_read(hub, sub_account["id"], conversation_id))


@router.get("/conversations/{conversation_id}/messages", response_model=Page[MessageOut])
async def list_conversation_messages(hub: HubDep, sub_account: SubAccountDep,
                                     conversation_id: UUID, page: PageDep) -> Page[MessageOut]:
    if await messaging.get_conversation(hub.pool, sub_account["id"], conversation_id) is None:
        raise NotFound("no such conversation", code="conversation_not_found")
    rows = await messaging.list_messages(hub.pool, sub_account["id"],
                                         conversation_id=conversation_id, status=None,
                                         direction=None, channel=None, cursor=page.cursor,
                                         limit=page.limit)
    p = make_page(rows, page.limit)
    return Page[MessageOut](data=[MessageOut(**r) for r in p.data], has_more=p.has_more,
                            next_cursor=p.next_cursor)


@router.get("/messages", response_model=Page[MessageOut])
async def list_messages(hub: HubDep, sub_account: SubAccountDep, page: PageDep,
                        status: StatusFilter = None, direction: DirectionFilter = None,
                        channel: ChannelFilter = None) -> Page[MessageOut]:
    rows = await messaging.list_messages(hub.pool, sub_account["id"], conversation_id=None,
                                         status=status, direction=direction, channel=channel,
                                         cursor=page.cursor, limit=page.limit)
    p = make_page(rows, page.limit)
    return Page[MessageOut](data=[MessageOut(**r) for r in p.data], has_more=p.has_more,
                            next_cursor=p.next_cursor)


@router.get("/messages/{message_id}", response_model=MessageDetail)
async def get_message(hub: HubDep, sub_account: SubAccountDep, message_id: UUID) -> MessageDetail:
    row = await messaging.get_message(hub.pool, sub_account["id"], message_id)
    if row is None:
        raise NotFound("no such message", code="message_not_found")
    history = await messaging.message_history(hub.pool, message_id)
    return MessageDetail(**row, history=[StatusChange(**h) for h in history])
