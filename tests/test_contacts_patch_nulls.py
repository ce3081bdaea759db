"""PATCH of a contact with null: it clears phone, email and timezone, and is a 422 naming
the field for first_name, last_name, tags and custom_fields (a user review found
`"tags": null` and `"custom_fields": null` silently wiping them), as the OpenAPI schema
says."""

from __future__ import annotations

from typing import Any

import httpx

from hub.context import Hub
from tests.conftest import Tenant, assert_problem, auth


async def test_null_refused_where_a_contact_holds_no_null_and_clears_where_it_can(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant
) -> None:
    base, h = f"/v1/sub-accounts/{tenant.sa1}/contacts", auth(tenant.sa1_key)
    r = await api.post(base, headers=h, json={
        "phone": "+12125550140", "email": "ada@example.com", "first_name": "Ada",
        "last_name": "Lovelace", "timezone": "Europe/London", "tags": ["vip"],
        "custom_fields": {"plan": "gold"}})
    assert r.status_code == 201, r.text
    url = f"{base}/{r.json()['id']}"
    before = r.json()
    events = await hub.pool.fetchval("SELECT count(*) FROM events")
    for field, empty in (("tags", "[]"), ("custom_fields", "{}"), ("first_name", '""'),
                         ("last_name", '""')):
        # With another change beside it, as a client sending every field would: no part of
        # the PATCH is applied.
        r = await api.patch(url, headers=h, json={"first_name": "Eve", field: None})
        problem = assert_problem(r, 422, "validation_failed", field=field)
        error = next(e for e in problem["errors"] if e["field"] == field)
        assert error["code"] == "null_not_allowed" and empty in error["message"], problem
    assert (await api.get(url, headers=h)).json() == before
    assert await hub.pool.fetchval("SELECT count(*) FROM events") == events

    # Empty values empty them; null clears what a contact may be without.
    r = await api.patch(url, headers=h, json={"tags": [], "custom_fields": {},
                                              "last_name": "", "timezone": None,
                                              "email": None})
    assert r.status_code == 200, r.text
    c = r.json()
    assert (c["tags"], c["custom_fields"], c["last_name"], c["timezone"], c["email"]) == (
        [], {}, "", None, None)
    assert (c["first_name"], c["phone"]) == ("Ada", "+12125550140")
    # The last of phone and email cannot go.
    assert_problem(await api.patch(url, headers=h, json={"phone": None}), 422, field="phone")
    # A create or an upsert takes no null there either.
    for path in ("", "/upsert"):
        r = await api.post(base + path, headers=h, json={"phone": "+12125550141", "tags": None})
        assert_problem(r, 422, "validation_failed", field="tags")


async def test_the_openapi_schema_says_which_fields_take_null(api: httpx.AsyncClient) -> None:
    spec = (await api.get("/openapi.json")).json()
    patch: dict[str, Any] = spec["components"]["schemas"]["ContactPatch"]["properties"]

    def nullable(prop: dict[str, Any]) -> bool:
        return any(s.get("type") == "null" for s in prop.get("anyOf", []))

    assert [f for f, p in patch.items() if nullable(p)] == ["phone", "email", "timezone"]
    assert patch["tags"]["type"] == "array" and "default" not in patch["tags"]
    assert patch["custom_fields"]["type"] == "object"
    assert "[]" in patch["tags"]["description"] and "{}" in patch["custom_fields"]["description"]
