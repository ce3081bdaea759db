"""CSV contact imports: a 202 job with progress, a per-row error report, set-wise merge with
existing contacts, and a 100k-row file loaded through COPY."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from hub import imports
from hub.bench import contacts_csv
from hub.context import Hub
from tests.conftest import Tenant, assert_problem, auth


async def _wait(api: httpx.AsyncClient, url: str, key: str) -> dict[str, Any]:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        job: dict[str, Any] = (await api.get(url, headers=auth(key))).json()
        if job["status"] in ("completed", "failed"):
            return job
        await asyncio.sleep(0.2)
    raise AssertionError(f"import did not finish: {job}")


async def _upload(api: httpx.AsyncClient, tenant: Tenant, csv: bytes,
                  **headers: str) -> httpx.Response:
    return await api.post(f"/v1/sub-accounts/{tenant.sa1}/contacts/imports",
                          headers={**auth(tenant.sa1_key), "Content-Type": "text/csv", **headers},
                          content=csv, params={"filename": "list.csv"})


async def test_import_reports_each_bad_row_and_merges_the_rest(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant
) -> None:
    h = auth(tenant.sa1_key)
    existing = await api.post(f"/v1/sub-accounts/{tenant.sa1}/contacts", headers=h,
                              json={"phone": "+12125550001", "tags": ["old"]})
    csv = (
        b"Phone Number,E-mail,First Name,Last Name,Tags,Plan\n"
        b"+12125550001,,Ada,Lovelace,vip;new,gold\n"   # 1 updates the existing contact
        b"(212) 555-0002,bob@example.com,Bob,,lead,\n"  # 2 created
        b"12,carol@example.com,Carol,,,\n"              # 3 bad phone
        b",not-an-email,Dan,,,\n"                       # 4 bad email
        b",,Eve,,,\n"                                   # 5 no phone, no email
        b"+12125550006,erin@example.com,Erin,,,silver\n"  # 6 created
        b"+12125550006,,Erin2,,,\n"                     # 7 same phone as 6: later row wins
        b"12345,,Frank,,,\n"                            # 8 bad phone and so no phone or email
    )
    r = await _upload(api, tenant, csv)
    assert r.status_code == 202, r.text
    assert r.json()["status"] in ("pending", "running", "completed")
    job = await _wait(api, f"/v1/sub-accounts/{tenant.sa1}/contacts/imports/{r.json()['id']}",
                      tenant.sa1_key)
    assert job["status"] == "completed", job
    assert (job["total_rows"], job["created_rows"], job["updated_rows"]) == (8, 2, 1)
    assert job["error_rows"] == 5
    errs = (await api.get(f"/v1/sub-accounts/{tenant.sa1}/contacts/imports/{job['id']}/errors",
                          headers=h)).json()["data"]
    by_row = {(e["row_number"], e["field"]): e["code"] for e in errs}
    assert by_row[(3, "phone")] == "invalid_phone"
    assert by_row[(4, "email")] == "invalid_email"
    assert by_row[(5, "phone")] == "phone_or_email_required"
    assert by_row[(6, "row")] == "superseded"
    assert by_row[(8, "phone")] == "invalid_phone"  # the precise one of its two phone errors
    ada = (await api.get(f"/v1/sub-accounts/{tenant.sa1}/contacts/{existing.json()['id']}",
                         headers=h)).json()
    assert ada["first_name"] == "Ada" and sorted(ada["tags"]) == ["new", "old", "vip"]
    assert ada["custom_fields"] == {"plan": "gold"}  # the key as templates name it
    erin = (await api.get(f"/v1/sub-accounts/{tenant.sa1}/contacts", headers=h,
                          params={"q": "+12125550006"})).json()["data"]
    assert [c["first_name"] for c in erin] == ["Erin2"]


async def test_import_refuses_files_it_cannot_read(api: httpx.AsyncClient, tenant: Tenant) -> None:
    r = await _upload(api, tenant, b"name,colour\nAda,blue\n")
    job = await _wait(api, f"/v1/sub-accounts/{tenant.sa1}/contacts/imports/{r.json()['id']}",
                      tenant.sa1_key)
    assert job["status"] == "failed" and "phone" in job["error"]
    r = await api.post(f"/v1/sub-accounts/{tenant.sa1}/contacts/imports",
                       headers={**auth(tenant.sa1_key), "Content-Type": "application/pdf"},
                       content=b"%PDF")
    assert_problem(r, 422, field="Content-Type")
    r = await _upload(api, tenant, b"")
    assert_problem(r, 422, field="file")


async def test_import_by_multipart_upload(api: httpx.AsyncClient, tenant: Tenant) -> None:
    r = await api.post(f"/v1/sub-accounts/{tenant.sa1}/contacts/imports",
                       headers=auth(tenant.sa1_key),
                       files={"file": ("people.csv", b"email\na@example.com\nb@example.com\n")})
    assert r.status_code == 202, r.text
    assert r.json()["filename"] == "people.csv"
    job = await _wait(api, f"/v1/sub-accounts/{tenant.sa1}/contacts/imports/{r.json()['id']}",
                      tenant.sa1_key)
    assert job["created_rows"] == 2


async def test_100k_row_import(hub: Hub, api: httpx.AsyncClient, tenant: Tenant) -> None:
    n = 100_000
    csv = contacts_csv(n)
    started = time.perf_counter()
    r = await _upload(api, tenant, csv)
    assert r.status_code == 202, r.text
    url = f"/v1/sub-accounts/{tenant.sa1}/contacts/imports/{r.json()['id']}"
    progress_seen = []
    while True:
        job = (await api.get(url, headers=auth(tenant.sa1_key))).json()
        progress_seen.append(job["processed_rows"])
        if job["status"] in ("completed", "failed"):
            break
        await asyncio.sleep(0.25)
    elapsed = time.perf_counter() - started
    assert job["status"] == "completed", job
    assert job["error_rows"] == n // 1000
    assert job["created_rows"] == n - n // 1000
    assert any(0 < p < n for p in progress_seen), "no intermediate progress was reported"
    count = await hub.pool.fetchval("SELECT count(*) FROM contacts WHERE sub_account_id = $1",
                                    tenant.sa1)
    assert count == n - n // 1000
    print(f"\n100k import: {elapsed:.1f} s, {n / elapsed:,.0f} rows/s")


def test_a_large_file_is_validated_in_worker_processes_with_the_same_result() -> None:
    """Rows in file order, row numbers that skip blank lines, errors in order: the same from
    the worker processes as from one."""
    lines = contacts_csv(imports.POOL_FROM_ROWS + 2_345, bad_every=997).split(b"\n")
    source = b"\n".join([*lines[:5_003], b"", b" , ", *lines[5_003:]])  # blank rows mid-file
    seen: list[int] = []
    one = imports.parse_csv(source, "US")
    two = imports.parse_csv(source, "US", seen.append, workers=2)
    assert two == one
    records, errors, total = two
    assert total == imports.POOL_FROM_ROWS + 2_345
    assert [r[0] for r in records] == [n for n in range(1, total + 1) if n % 997]
    assert [e[:2] for e in errors] == [(n, "phone") for n in range(997, total + 1, 997)]
    assert sorted(seen) == seen and seen[-1] == total
    assert len(seen) == -(-total // imports.PROGRESS_EVERY)  # one report per chunk


def test_a_semicolon_or_tab_separated_file_is_read_by_its_header() -> None:
    """Spreadsheets where the comma is the decimal mark write semicolons (or tabs)."""
    for sep in (";", "\t"):
        source = sep.join(["Phone", "First Name", "Tags", "Plan"]).encode() + b"\n" + \
            sep.join(["+12125550123", "Ada", "vip|new", "gold, yearly"]).encode() + b"\n"
        records, errors, total = imports.parse_csv(source, "US")
        assert (errors, total) == ([], 1)
        assert records[0][1] == "+12125550123" and records[0][4] == "Ada"
        assert sorted(records[0][7]) == ["new", "vip"] and records[0][8] == {"plan": "gold, yearly"}
