"""Sending one message, an agent's reply in a conversation, and cancelling a queued one."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any
from uuid import UUID

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from gateway import idempotency
from gateway.deps import HubDep, IdempotencyKey, PrincipalDep, SubAccountDep
from gateway.schemas import MessageIn, MessageOut, ReplyIn
from hub import sending
from hub.context import Hub
from hub.conversations import reply_subject
from hub.errors import NotFound, ValidationFailed
from hub.store import messaging
from hub.store import sending as send_store
from hub.tenancy import Principal
from hub.users import UserPrincipal

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/sub-accounts/{sa}", tags=["sending"])


def _require_key(key: str | None) -> str:
    if key is None:
        raise ValidationFailed.field(
            "Idempotency-Key", "sending needs an Idempotency-Key header (any unique string, "
            "reused only to retry the same request)", "missing")
    return key


def _lease_to(request: Request) -> Callable[[str, int], str] | None:
    """Whom a new message is leased to: the Sender shard it is handed to (no actors: none)."""
    actors = getattr(request.app.state, "actors", None)
    return actors.owner if actors is not None else None


async def _hand_off(hub: Hub, request: Request, response: JSONResponse,
                    message: dict[str, Any]) -> None:
    """Give the message just created (not a replay's) to the Sender shard it is leased to;
    if the shard cannot be reached, give the lease back, so that a claim takes it at once
    rather than when the lease expires."""
    actors = getattr(request.app.state, "actors", None)
    if actors is None or not message or response.headers.get("Idempotent-Replayed"):
        return
    if not await actors.submit(message["channel"], message["slot"], [message["lane"]]):
        owner = actors.owner(message["channel"], message["slot"])
        try:
            await send_store.release(hub.pool, owner, [message["id"]])
        except Exception:  # it is queued all the same: its lease expires, then it is claimed
            log.warning("could not give back the lease of a message not handed off",
                        exc_info=True, extra={"message_id": str(message["id"])})


def _user_id(principal: Principal) -> UUID | None:
    """Who sends from the console, recorded on the message; an API key is nobody."""
    return principal.user_id if isinstance(principal, UserPrincipal) else None


def _req(body: MessageIn | ReplyIn) -> dict[str, Any]:
    data = body.model_dump(mode="json", exclude_unset=False)
    data["media_urls"] = [str(u) for u in getattr(body, "media_urls", [])]
    for k in ("contact_id", "sender_id"):
        if data.get(k):
            data[k] = UUID(str(data[k]))
    return data


@router.post("/messages", status_code=202, response_model=MessageOut)
async def send_message(hub: HubDep, principal: PrincipalDep, sub_account: SubAccountDep,
                       body: MessageIn, request: Request,
                       key: IdempotencyKey = None) -> JSONResponse:
    """Queue one message (SMS, MMS, email or a voice call) to a contact, an E.164 number or
    an email address. 202: it is queued; follow its status on the realtime feed or here."""
    created: dict[str, Any] = {}

    async def work() -> tuple[int, MessageOut]:
        message = await sending.do_send_message(hub, sub_account, _req(body),
                                                lease_to=_lease_to(request),
                                                sent_by=_user_id(principal))
        created.update(message)
        return 202, MessageOut(**sending.public(message))

    response = await idempotency.run(hub, principal, _require_key(key), "POST",
                                     request.url.path, body, work)
    await _hand_off(hub, request, response, created)
    return response


@router.post("/conversations/{conversation_id}/messages", status_code=202,
             response_model=MessageOut)
async def reply(hub: HubDep, principal: PrincipalDep, sub_account: SubAccountDep,
                conversation_id: UUID, body: ReplyIn, request: Request,
                key: IdempotencyKey = None) -> JSONResponse:
    """An agent's reply: sent on the reply lane, ahead of any bulk traffic."""
    conversation = await messaging.get_conversation(hub.pool, sub_account["id"],
                                                    conversation_id)
    if conversation is None:
        raise NotFound("no such conversation", code="conversation_not_found")
    created: dict[str, Any] = {}

    async def work() -> tuple[int, MessageOut]:
        req = _req(body)
        req.update(channel=("mms" if req["media_urls"] else "sms")
                   if conversation["channel"] == "sms" else conversation["channel"],
                   contact_id=conversation["contact_id"],
                   subject=await reply_subject(hub, conversation, body.subject))
        message = await sending.do_send_message(hub, sub_account, req, priority="reply",
                                                conversation_id=conversation_id,
                                                lease_to=_lease_to(request),
                                                sent_by=_user_id(principal))
        created.update(message)
        return 202, MessageOut(**sending.public(message))

    response = await idempotency.run(hub, principal, _require_key(key), "POST",
                                     request.url.path, body, work)
    await _hand_off(hub, request, response, created)
    return response


@router.post("/messages/{message_id}/cancel", response_model=MessageOut)
async def cancel_message(hub: HubDep, sub_account: SubAccountDep,
                         message_id: UUID) -> MessageOut:
    """Cancel a message that has not started sending (409 once it has)."""
    row = await sending.do_cancel_message(hub, sub_account["id"], message_id)
    return MessageOut(**row)
