"""Contact imports never drop a row without saying so: every row ends created, updated or in
the error report with its reason, also when other writers create contacts meanwhile; the
error report pages without losing errors; headers and cells that fit no column are reported.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from uuid import UUID

import asyncpg
import httpx

from hub.context import Hub
from hub.store import contacts as contact_store
from tests.conftest import Tenant, assert_problem, auth
from tests.test_api_imports import _upload, _wait


async def _import(api: httpx.AsyncClient, tenant: Tenant, csv: bytes) -> dict[str, Any]:
    r = await _upload(api, tenant, csv)
    assert r.status_code == 202, r.text
    return await _wait(api, f"/v1/sub-accounts/{tenant.sa1}/contacts/imports/{r.json()['id']}",
                       tenant.sa1_key)


async def _errors(api: httpx.AsyncClient, tenant: Tenant, job: dict[str, Any],
                  **params: Any) -> dict[str, Any]:
    r = await api.get(f"/v1/sub-accounts/{tenant.sa1}/contacts/imports/{job['id']}/errors",
                      headers=auth(tenant.sa1_key), params=params)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _all_counted(job: dict[str, Any]) -> bool:
    return bool(job["created_rows"] + job["updated_rows"] + job["error_rows"]
                == job["total_rows"])


async def _contact(hub: Hub, tenant: Tenant, phone: str) -> dict[str, Any] | None:
    row = await hub.pool.fetchrow(
        "SELECT phone, email, first_name FROM contacts WHERE sub_account_id = $1 AND phone = $2",
        UUID(tenant.sa1), phone)
    return dict(row) if row else None


async def _waiting_on_locks(hub: Hub, n: int) -> None:
    """Until `n` other sessions of this database wait on a lock (the imports' merges)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        waiting = await hub.pool.fetchval(
            """SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
               AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()""")
        if waiting >= n:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"fewer than {n} sessions came to wait on a lock")


async def test_two_rows_that_hit_one_contact_apply_one_and_report_the_other(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant
) -> None:
    h = auth(tenant.sa1_key)
    for phone, email in (("+16462000200", "user200@example.com"),
                         ("+16462000300", "user300@example.com")):
        r = await api.post(f"/v1/sub-accounts/{tenant.sa1}/contacts", headers=h,
                           json={"phone": phone, "email": email})
        assert r.status_code == 201, r.text
    job = await _import(api, tenant, (
        b"phone,email,first_name\n"
        b"+16462000200,new1@ex.com,One\n"          # 1 updates X by phone
        b"+16469999999,user200@example.com,Two\n"  # 2 X again, by email: reported
        b"+16469999998,user300@example.com,Three\n"  # 3 Y by email: row 4 takes Y by phone
        b"+16462000300,new4@ex.com,Four\n"         # 4 updates Y
    ))
    assert job["status"] == "completed", job
    assert (job["total_rows"], job["created_rows"], job["updated_rows"],
            job["error_rows"]) == (4, 0, 2, 2)
    errors = {(e["row_number"], e["field"]): e for e in (await _errors(api, tenant, job))["data"]}
    assert set(errors) == {(2, "email"), (3, "email")}
    assert errors[(2, "email")]["code"] == "same_contact"
    assert "row 1" in errors[(2, "email")]["message"]
    assert "row 4" in errors[(3, "email")]["message"]
    x = await _contact(hub, tenant, "+16462000200")
    assert x is not None and (x["email"], x["first_name"]) == ("new1@ex.com", "One")
    y = await _contact(hub, tenant, "+16462000300")
    assert y is not None and (y["email"], y["first_name"]) == ("new4@ex.com", "Four")
    assert await _contact(hub, tenant, "+16469999999") is None


async def test_rows_another_writer_creates_during_the_merge_become_updates(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant
) -> None:
    """A writer (a `POST /contacts`, an inbound message) creates a contact with a phone of
    the file after the import matched its rows, and a second import of the same rows runs
    at once: both imports count every row, and apply it."""
    n = 300
    phones = [f"+1646300{i:04d}" for i in range(n)]
    csv = ("phone,first_name\n" + "".join(f"{p},Row{i}\n" for i, p in enumerate(phones))).encode()
    writer: asyncpg.Connection
    async with hub.pool.acquire() as writer:
        tx = writer.transaction()
        await tx.start()
        await contact_store.insert(writer, UUID(tenant.sa1), {"phone": phones[-1],
                                                              "first_name": "Writer"})
        first = asyncio.create_task(_import(api, tenant, csv))
        await _waiting_on_locks(hub, 1)  # the first import's insert waits on the writer
        second = asyncio.create_task(_import(api, tenant, csv))
        await _waiting_on_locks(hub, 2)  # and the second import's merge on the first
        await tx.commit()
    a, b = await first, await second
    assert a["status"] == b["status"] == "completed", (a, b)
    assert (a["created_rows"], a["updated_rows"], a["error_rows"]) == (n - 1, 1, 0)
    assert (b["created_rows"], b["updated_rows"], b["error_rows"]) == (0, n, 0)
    last = await _contact(hub, tenant, phones[-1])
    assert last is not None and last["first_name"] == f"Row{n - 1}"
    assert await hub.pool.fetchval("SELECT count(*) FROM contacts WHERE sub_account_id = $1",
                                   UUID(tenant.sa1)) == n


async def test_a_phone_taken_during_the_merge_makes_the_row_a_reported_conflict(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant
) -> None:
    """The row matches a contact by email and gives it a new phone; another writer creates a
    contact with that phone before the merge commits. The row is reported, the rest done."""
    h = auth(tenant.sa1_key)
    r = await api.post(f"/v1/sub-accounts/{tenant.sa1}/contacts", headers=h,
                       json={"email": "ada@example.com"})
    assert r.status_code == 201, r.text
    async with hub.pool.acquire() as writer:
        tx = writer.transaction()
        await tx.start()
        await contact_store.insert(writer, UUID(tenant.sa1), {"phone": "+16463000001"})
        task = asyncio.create_task(_import(api, tenant, (
            b"phone,email\n+16463000001,ada@example.com\n+16463000002,bob@example.com\n")))
        await _waiting_on_locks(hub, 1)
        await tx.commit()
    job = await task
    assert job["status"] == "completed", job
    assert (job["created_rows"], job["updated_rows"], job["error_rows"]) == (1, 0, 1)
    errors = (await _errors(api, tenant, job))["data"]
    assert [(e["row_number"], e["code"]) for e in errors] == [(1, "ambiguous_contact")]


async def test_the_error_report_pages_by_row_and_field(
    api: httpx.AsyncClient, tenant: Tenant
) -> None:
    job = await _import(api, tenant, (
        b"phone,email\n"
        b",not-an-email\n"          # 1 email, and so no phone or email
        b"+16463000010,\n"          # 2 fine
        b"12,also-not-an-email\n"   # 3 phone and email
        b"13,\n"                    # 4 phone
    ))
    assert job["status"] == "completed" and _all_counted(job), job
    everything = [(e["row_number"], e["field"]) for e in (await _errors(api, tenant, job))["data"]]
    assert everything == [(1, "email"), (1, "phone"), (3, "email"), (3, "phone"), (4, "phone")]
    paged: list[tuple[int, str]] = []
    cursor = None
    while True:
        page = await _errors(api, tenant, job, limit=1, **({"cursor": cursor} if cursor else {}))
        paged += [(e["row_number"], e["field"]) for e in page["data"]]
        if not page["has_more"]:
            break
        cursor = page["next_cursor"]
    assert paged == everything
    r = await api.get(f"/v1/sub-accounts/{tenant.sa1}/contacts/imports/{job['id']}/errors",
                      headers=auth(tenant.sa1_key), params={"cursor": "3"})
    assert_problem(r, 422, field="cursor")


async def test_values_without_a_column_are_refused_or_reported(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant
) -> None:
    # Unnamed columns that stay empty (a trailing separator) are fine.
    job = await _import(api, tenant, b"phone,,first_name,\n+16463000020,,Ada,\n")
    assert job["status"] == "completed" and job["created_rows"] == 1, job
    # A value under an unnamed column has nowhere to go: the file is refused, saying where.
    job = await _import(api, tenant, b"phone,,,Plan\n+16463000021,,,gold\n+16463000022,x,y,\n")
    assert job["status"] == "failed", job
    assert "column 2" in job["error"] and "row 2" in job["error"], job
    # A value beyond the header's columns: that row is reported, not imported.
    job = await _import(api, tenant, (
        b"phone,first_name\n"
        b"+16463000023,Smith, Jr.\n"   # 1 an unquoted comma
        b"+16463000024,Bob,,\n"        # 2 trailing empty cells are fine
    ))
    assert (job["created_rows"], job["error_rows"]) == (1, 1), job
    errors = (await _errors(api, tenant, job))["data"]
    assert [(e["row_number"], e["field"], e["code"]) for e in errors] == [
        (1, "row", "extra_cells")]
    assert "column 3" in errors[0]["message"]
    assert await _contact(hub, tenant, "+16463000023") is None
