"""Writers for a conversation's handling: assigning it to an agent and marking it read.
Both publish `conversation.updated` on the conversation's topic, so every open inbox moves.
And the subject of an agent's reply in an email thread."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from hub.context import Hub
from hub.errors import Conflict, FieldError, NotFound, ValidationFailed
from hub.store import conversations as store

Row = dict[str, Any]


def _missing() -> NotFound:
    return NotFound("no such conversation", code="conversation_not_found")


async def do_assign_conversation(hub: Hub, sub_account_id: UUID, id_: UUID,
                                 assignee: UUID | None, *, caller: UUID | None,
                                 override: bool) -> Row:
    """Give the thread to `assignee` (a user of this sub-account), or unassign it (None).

    A thread another user holds does not change hands silently: unless `override` (the
    request takes over explicitly, or a manager reassigns), it is 409 `already_assigned`
    naming the holder. `caller` is the user asking (None for an API key); a thread they
    hold they may pass on or release. The holder learns of a take-over from the
    `conversation.updated` event."""
    who = str(assignee) if assignee else None
    by = str(caller) if caller else None
    async with hub.transaction() as tx:
        if assignee is not None and not await store.is_member(tx.conn, sub_account_id,
                                                               assignee):
            raise ValidationFailed.field("assignee", "no user of this sub-account has this id",
                                         "unknown_user")
        row = await store.set_assignee(tx.conn, sub_account_id, id_, who, by, override)
        if row is None:
            # Refused, or no such thread: lock it so that what we report is what holds.
            exists, holder = await store.lock_assignee(tx.conn, sub_account_id, id_)
            if not exists:
                raise _missing()
            row = await store.set_assignee(tx.conn, sub_account_id, id_, who, by, override)
            if row is None:
                raise Conflict(f"this thread is assigned to {holder}; send \"take_over\": "
                               "true to take it over", code="already_assigned",
                               errors=[FieldError("assignee", f"assigned to {holder}",
                                                  "already_assigned")])
        tx.emit(sub_account_id, "conversation.updated", row, f"conversation:{id_}")
    return row


async def do_mark_read(hub: Hub, sub_account_id: UUID, id_: UUID) -> Row:
    async with hub.transaction() as tx:
        row, changed = await store.mark_read(tx.conn, sub_account_id, id_)
        if row is None:
            raise _missing()
        if changed:
            tx.emit(sub_account_id, "conversation.updated", row, f"conversation:{id_}")
    return row


async def reply_subject(hub: Hub, conversation: Row, subject: str | None) -> str | None:
    """The subject of an agent's reply in `conversation`: in an email thread the one given,
    or "Re: " and the thread's last subject; none in any other thread."""
    if conversation["channel"] != "email":
        if subject:
            raise ValidationFailed.field("subject", "only a reply in an email thread has a "
                                         "subject", "email_only")
        return None
    if subject:
        return subject
    last = await store.last_subject(hub.pool, conversation["sub_account_id"],
                                    conversation["id"])
    if last is None:  # the send asks for one
        return None
    return last if last[:3].lower() == "re:" else f"Re: {last}"
