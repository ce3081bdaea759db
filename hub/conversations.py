"""Writers for a conversation's handling: assigning it to an agent and marking it read.
Both publish `conversation.updated` on the conversation's topic, so every open inbox moves."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from hub.context import Hub
from hub.errors import NotFound
from hub.store import conversations as store

Row = dict[str, Any]


def _missing() -> NotFound:
    return NotFound("no such conversation", code="conversation_not_found")


async def do_assign_conversation(hub: Hub, sub_account_id: UUID, id_: UUID,
                                 assignee: str | None) -> Row:
    async with hub.transaction() as tx:
        row = await store.set_assignee(tx.conn, sub_account_id, id_, assignee or None)
        if row is None:
            raise _missing()
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
