"""`Hub.transaction` and the event log against the real PostgreSQL: a nested transaction
joins the outer one (a caught inner failure needs `savepoint=True`), and every sub-account's
events get gap-free, ordered seqs however writers interleave."""

from __future__ import annotations

import asyncio
from uuid import UUID

import pytest

from hub import events
from hub.actions import do_create_contact
from hub.context import Hub
from hub.errors import Conflict
from hub.store import tenants
from tests.conftest import Tenant


async def _sub_account(hub: Hub, id_: str) -> dict:
    sa = await tenants.get_sub_account(hub.pool, UUID(id_))
    assert sa is not None
    return sa


async def _phones(hub: Hub, sa: str) -> list[str]:
    return sorted(r["phone"] for r in await hub.pool.fetch(
        "SELECT phone FROM contacts WHERE sub_account_id = $1", UUID(sa)))


async def _contact_events(hub: Hub, sa: str) -> list[str]:
    return sorted(r["phone"] for r in await hub.pool.fetch(
        """SELECT data->>'phone' AS phone FROM events
           WHERE sub_account_id = $1 AND type = 'contact.created'""", UUID(sa)))


async def _try_and_fail(hub: Hub, sa: dict, phone: str, *, savepoint: bool) -> None:
    """Writes a contact (and its event) in a nested transaction, then fails; caught."""
    try:
        async with hub.transaction(savepoint=savepoint):
            await do_create_contact(hub, sa, {"phone": phone})
            raise Conflict("changed our mind", code="test")
    except Conflict:
        pass


async def test_a_caught_inner_failure_is_undone_alone_in_a_savepoint(
    hub: Hub, tenant: Tenant
) -> None:
    sa = await _sub_account(hub, tenant.sa1)
    async with hub.transaction():
        await do_create_contact(hub, sa, {"phone": "+12125550101"})
        await _try_and_fail(hub, sa, "+12125550102", savepoint=True)
        await do_create_contact(hub, sa, {"phone": "+12125550103"})
    assert await _phones(hub, tenant.sa1) == ["+12125550101", "+12125550103"]
    assert await _contact_events(hub, tenant.sa1) == ["+12125550101", "+12125550103"]


async def test_a_caught_inner_failure_without_a_savepoint_commits_nothing(
    hub: Hub, tenant: Tenant
) -> None:
    sa = await _sub_account(hub, tenant.sa1)
    with pytest.raises(RuntimeError, match="savepoint=True"):
        async with hub.transaction():
            await do_create_contact(hub, sa, {"phone": "+12125550101"})
            await _try_and_fail(hub, sa, "+12125550102", savepoint=False)
    assert await _phones(hub, tenant.sa1) == []
    assert await _contact_events(hub, tenant.sa1) == []


async def test_interleaved_writers_get_gap_free_ordered_seqs_per_sub_account(
    hub: Hub, tenant: Tenant
) -> None:
    a, b = UUID(tenant.sa1), UUID(tenant.sa2)
    base = {sa: int(await hub.pool.fetchval(
        "SELECT event_seq FROM sub_accounts WHERE id = $1", sa)) for sa in (a, b)}

    async def writer(n: int) -> None:
        # Each transaction interleaves both sub-accounts, in either order.
        first, second = (a, b) if n % 2 else (b, a)
        async with hub.transaction() as tx:
            for i in range(3):
                tx.emit(first, "test.event", {"writer": n, "i": i})
                tx.emit(second, "test.event", {"writer": n, "i": i})

    await asyncio.gather(*(writer(n) for n in range(20)))
    for sa in (a, b):
        rows = await hub.pool.fetch(
            """SELECT seq, data FROM events WHERE sub_account_id = $1 AND type = 'test.event'
               ORDER BY seq""", sa)
        assert [r["seq"] for r in rows] == list(range(base[sa] + 1, base[sa] + 61))
        assert await hub.pool.fetchval(
            "SELECT event_seq FROM sub_accounts WHERE id = $1", sa) == base[sa] + 60
        # One transaction's events are consecutive and in emit order.
        by_writer: dict[int, list[tuple[int, int]]] = {}
        for r in rows:
            by_writer.setdefault(r["data"]["writer"], []).append((r["seq"], r["data"]["i"]))
        for seen in by_writer.values():
            assert [i for _, i in seen] == [0, 1, 2]
            assert seen[-1][0] - seen[0][0] == 2


async def test_append_returns_each_event_with_its_own_seq(hub: Hub, tenant: Tenant) -> None:
    a, b = UUID(tenant.sa1), UUID(tenant.sa2)
    pending = [events.PendingEvent(sa, "test.event", {"n": n})
               for n, sa in enumerate([b, a, b, b, a])]
    async with hub.pool.acquire() as conn, conn.transaction():
        heads = {sa: await conn.fetchval("SELECT event_seq FROM sub_accounts WHERE id = $1",
                                         sa) for sa in (a, b)}
        written = await events.append(conn, pending)
    got = {(e.sub_account_id, e.seq): e.data["n"] for e in written}
    assert got == {(b, heads[b] + 1): 0, (b, heads[b] + 2): 2, (b, heads[b] + 3): 3,
                   (a, heads[a] + 1): 1, (a, heads[a] + 2): 4}
    stored = await hub.pool.fetch(
        "SELECT id, sub_account_id, seq, data FROM events WHERE type = 'test.event'")
    assert {(r["sub_account_id"], r["seq"]): r["data"]["n"] for r in stored} == got
    assert {r["id"] for r in stored} == {e.id for e in written}
