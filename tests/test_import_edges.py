"""Contact imports and writes that used to fail on content: a NUL in a cell, a quote that is
never closed, custom field names a template cannot name, NaN in custom fields, and the
`sep=;` line and blank lines a spreadsheet writes before the header."""

from __future__ import annotations

from typing import Any

import httpx

from hub.context import Hub
from tests.conftest import Tenant, assert_problem, auth
from tests.test_api_imports import _upload, _wait


async def _import(api: httpx.AsyncClient, tenant: Tenant, csv: bytes
                  ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The finished job and its report."""
    r = await _upload(api, tenant, csv)
    assert r.status_code == 202, r.text
    url = f"/v1/sub-accounts/{tenant.sa1}/contacts/imports/{r.json()['id']}"
    job = await _wait(api, url, tenant.sa1_key)
    report = (await api.get(f"{url}/errors", headers=auth(tenant.sa1_key))).json()["data"]
    return job, report


async def _contacts(api: httpx.AsyncClient, tenant: Tenant) -> dict[str, dict[str, Any]]:
    page = (await api.get(f"/v1/sub-accounts/{tenant.sa1}/contacts", headers=auth(tenant.sa1_key),
                          params={"limit": 200})).json()["data"]
    return {c["phone"]: c for c in page}


async def test_a_nul_in_a_cell_reports_that_row_and_imports_the_rest(
    api: httpx.AsyncClient, tenant: Tenant
) -> None:
    job, report = await _import(api, tenant, b"phone,first_name,plan\n"
                                b"+12125558001,A\x00B,gold\n"
                                b"+12125558002,Bob,silver\x00\n"
                                b"+12125558003,Carol,bronze\n")
    assert job["status"] == "completed", job
    assert (job["created_rows"], job["error_rows"]) == (1, 2)
    nul = [(e["row_number"], e["field"]) for e in report if e["code"] == "nul_character"]
    assert nul == [(1, "first_name"), (2, "custom_fields.plan")]
    assert all("NUL character" in e["message"] for e in report if e["code"] == "nul_character")
    assert list(await _contacts(api, tenant)) == ["+12125558003"]


async def test_a_quote_never_closed_fails_the_import_naming_its_row(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant
) -> None:
    for rows in (100, 10_000):  # 10,000 used to overflow csv's field limit; 100 lost 97 rows
        lines = [b"phone,first_name"] + [f"+1347555{i:04d},N{i}".encode() for i in range(rows)]
        lines[3] = b'+13475550002,"Bob,Jones'
        job, _ = await _import(api, tenant, b"\n".join(lines) + b"\n")
        assert job["status"] == "failed", job
        assert job["error"].startswith("file: row 3 (line 4): a quote opens here and is never "
                                       "closed; fix the file"), job
    assert await hub.pool.fetchval("SELECT count(*) FROM contacts WHERE sub_account_id = $1",
                                   tenant.sa1) == 0
    # A quoted value may hold a line break: that file imports whole.
    job, _ = await _import(api, tenant, b'phone,first_name,address\n'
                           b'+13475550001,Ada,"1 Main St\n'
                           b'Springfield"\n'
                           b'+13475550002,Bob,"2 Elm St"\n')
    assert (job["status"], job["created_rows"], job["error_rows"]) == ("completed", 2, 0), job
    assert (await _contacts(api, tenant))["+13475550001"]["custom_fields"] == \
        {"address": "1 Main St\nSpringfield"}


async def test_custom_field_names_become_keys_a_template_can_name(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant
) -> None:
    sa, h = f"/v1/sub-accounts/{tenant.sa1}", auth(tenant.sa1_key)
    job, report = await _import(api, tenant, b"phone,Favourite Colour,Member-ID,city\n"
                                b"+12125559001,blue,M-7,Paris\n")
    # The notes on renamed columns are not rows left out.
    assert (job["status"], job["created_rows"], job["error_rows"]) == ("completed", 1, 0), job
    assert {(e["row_number"], e["field"], e["code"]) for e in report} == {
        (0, "custom_fields.favourite_colour", "column_renamed"),
        (0, "custom_fields.member_id", "column_renamed")}
    assert "`Favourite Colour`" in report[0]["message"]
    imported = (await _contacts(api, tenant))["+12125559001"]
    assert imported["custom_fields"] == {"favourite_colour": "blue", "member_id": "M-7",
                                         "city": "Paris"}

    # The contacts API writes the same keys, on create, upsert and PATCH.
    r = await api.post(f"{sa}/contacts", headers=h, json={
        "phone": "+12125559002", "custom_fields": {"Favourite Colour": "red"}})
    assert r.status_code == 201 and r.json()["custom_fields"] == {"favourite_colour": "red"}
    r = await api.post(f"{sa}/contacts/upsert", headers=h, json={
        "phone": "+12125559002", "custom_fields": {"Member-ID": "M-8"}})
    assert r.json()["custom_fields"] == {"favourite_colour": "red", "member_id": "M-8"}, r.text
    r = await api.patch(f"{sa}/contacts/{r.json()['id']}", headers=h,
                        json={"custom_fields": {"Favourite-Colour": "green"}})
    assert r.json()["custom_fields"] == {"favourite_colour": "green"}, r.text
    r = await api.post(f"{sa}/contacts", headers=h, json={
        "phone": "+12125559003", "custom_fields": {"Member-ID": "1", "member id": "2"}})
    assert_problem(r, 422, field="custom_fields.member id")
    assert_problem(await api.post(f"{sa}/contacts", headers=h, json={
        "phone": "+12125559003", "custom_fields": {"#": "1"}}), 422, field="custom_fields.#")

    # A template names them; a contact stored with the old key reads the same.
    legacy = await hub.pool.fetchval(
        """INSERT INTO contacts (sub_account_id, phone, custom_fields)
           VALUES ($1, '+12125559004', '{"Favourite Colour": "teal"}') RETURNING id""",
        tenant.sa1)
    r = await api.post(f"{sa}/templates", headers=h, json={
        "name": "Colour", "channel": "sms",
        "body": "Colour {{custom.favourite_colour}}, id {{custom.Member_ID}}"})
    assert r.status_code == 201, r.text
    t = r.json()
    for contact_id, body in ((imported["id"], "Colour blue, id M-7"), (legacy, "Colour teal, id ")):
        p = (await api.get(f"{sa}/templates/{t['id']}/preview", headers=h,
                           params={"contact_id": str(contact_id)})).json()
        assert p["body"] == body, p


async def test_a_nan_custom_field_is_a_problem_naming_it(api: httpx.AsyncClient,
                                                         tenant: Tenant) -> None:
    sa, h = f"/v1/sub-accounts/{tenant.sa1}", auth(tenant.sa1_key)
    json_h = {**h, "Content-Type": "application/json"}
    contact = (await api.post(f"{sa}/contacts", headers=h, json={"phone": "+12125557001"})).json()
    for method, url in (("POST", f"{sa}/contacts"), ("POST", f"{sa}/contacts/upsert"),
                        ("PATCH", f"{sa}/contacts/{contact['id']}")):
        for value in ("NaN", "Infinity", '{"deep": [-Infinity]}'):
            body = '{"phone": "+12125557002", "custom_fields": {"score": ' + value + "}}"
            r = await api.request(method, url, headers=json_h, content=body)
            assert_problem(r, 422, field="custom_fields.score" + (".deep[0]" if "deep" in value
                                                                   else ""))
    listed = (await api.get(f"{sa}/contacts", headers=h)).json()["data"]
    assert [c["phone"] for c in listed] == ["+12125557001"]


async def test_excel_sep_line_and_blank_lines_before_the_header(
    api: httpx.AsyncClient, tenant: Tenant
) -> None:
    job, report = await _import(api, tenant, b"\xef\xbb\xbfsep=;\r\n\r\n \r\n"
                                b"Phone;First Name;plan\r\n"
                                b"+12125556001;Ada;gold, yearly\r\n")
    assert (job["status"], job["created_rows"], report) == ("completed", 1, []), job
    ada = (await _contacts(api, tenant))["+12125556001"]
    assert (ada["first_name"], ada["custom_fields"]) == ("Ada", {"plan": "gold, yearly"})


async def test_an_audience_filter_finds_the_custom_field_under_its_stored_key(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant
) -> None:
    """A `Plan` column is stored as `plan`: a campaign filtering on `custom.Plan` (as the
    marketer saw the column) or `custom.plan` finds those contacts, and so do keys stored
    before the rule, once migration 0019 has rewritten them."""
    from pathlib import Path

    from tests.test_campaign_fixes import setup

    await setup(hub, api, tenant)  # an SMS sender (and contacts without custom fields)
    sa, h = f"/v1/sub-accounts/{tenant.sa1}", auth(tenant.sa1_key)
    job, _ = await _import(api, tenant, b"phone,Plan\n+12125557001,gold\n+12125557002,silver\n")
    assert job["created_rows"] == 2, job
    # One contact stored before keys were normalised, as an older hub stored it.
    await hub.pool.execute(
        """INSERT INTO contacts (sub_account_id, phone, custom_fields)
           VALUES ($1, '+12125557003', '{"Plan": "gold", "Zoë Key": 1, "#": 2}')""",
        tenant.sa1)
    migration = Path(__file__).parents[1] / "hub/migrations/0019_custom_field_keys.sql"
    await hub.pool.execute(migration.read_text())
    stored = await hub.pool.fetchval(
        "SELECT custom_fields FROM contacts WHERE sub_account_id = $1 AND phone = $2",
        tenant.sa1, "+12125557003")
    assert stored == {"plan": "gold", "Zoë Key": 1, "#": 2}  # ASCII keys rewritten only
    for field in ("custom.Plan", "custom.plan"):
        r = await api.post(f"{sa}/campaigns", headers=h, json={
            "name": "Gold", "channel": "sms", "body": "Hi",
            "audience": {"filters": [{"field": field, "op": "eq", "value": "gold"}]}})
        assert r.status_code == 201, r.text
        dry = await api.post(f"{sa}/campaigns/{r.json()['id']}/dry-run", headers=h)
        assert dry.status_code == 200, dry.text
        assert dry.json()["recipients"] == 2, (field, dry.json())
