"""The durable event log, read by sequence number (the realtime feed replays from it)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from gateway.deps import HubDep, PrincipalDep, SubAccountDep
from gateway.schemas import EventOut, EventsPage
from hub import events
from hub.users import UserPrincipal, may_see_event

router = APIRouter(prefix="/v1/sub-accounts/{sa}", tags=["events"])


@router.get("/events", response_model=EventsPage)
async def list_events(
    hub: HubDep, principal: PrincipalDep, sub_account: SubAccountDep,
    after_seq: Annotated[int, Query(ge=0, le=2**63 - 1,
                                    description="return events with seq > after_seq")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> EventsPage:
    rows = await events.list_after(hub.pool, sub_account["id"], after_seq, limit + 1)
    has_more = len(rows) > limit
    rows = rows[:limit]
    role = principal.role if isinstance(principal, UserPrincipal) else None
    return EventsPage(
        data=[EventOut(**e.to_json()) for e in rows if may_see_event(role, e.type)],
        has_more=has_more,
        next_after_seq=rows[-1].seq if rows else after_seq,
    )
