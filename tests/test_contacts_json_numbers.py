"""NaN and Infinity, which Python's JSON reads but which are not JSON (and which
PostgreSQL's JSON refuses), are refused in every request body by the gateway: a 422 naming
the field's path, and nothing written. Found first in contacts' custom fields; here every
route that takes free JSON (custom fields, provider config, campaign audiences) and the
templates' text fields."""

from __future__ import annotations

import json
from typing import Any

import httpx

from hub.context import Hub
from tests.conftest import Tenant, assert_problem, auth
from tests.test_webhooks import add_provider, add_sender

NAN, INF = float("nan"), float("inf")


async def test_a_non_finite_number_in_any_body_is_a_problem_naming_its_path(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant
) -> None:
    sa, h = f"/v1/sub-accounts/{tenant.sa1}", auth(tenant.sa1_key)
    contact = await api.post(f"{sa}/contacts", headers=h, json={"phone": "+12125550160"})
    assert contact.status_code == 201, contact.text
    provider = await add_provider(api, tenant, tenant.sa1, tenant.sa1_key, provider="smtp",
                                  config={"host": "localhost", "port": 25})
    await add_sender(api, tenant.sa1, tenant.sa1_key,
                     await add_provider(api, tenant, tenant.sa1, tenant.sa1_key))
    draft = await api.post(f"{sa}/campaigns", headers=h, json={
        "name": "c", "channel": "sms", "body": "hi", "audience": {"all_contacts": True}})
    assert draft.status_code == 201, draft.text
    template = await api.post(f"{sa}/templates", headers=h, json={
        "name": "t", "channel": "sms", "body": "hi"})
    assert template.status_code == 201, template.text
    score = {"field": "custom.score", "op": "gt", "value": NAN}
    cases: list[tuple[str, str, dict[str, Any], str, str]] = [
        ("POST", f"{sa}/contacts", {"phone": "+12125550161", "custom_fields": {"score": NAN}},
         "custom_fields.score", "NaN"),
        ("PATCH", f"{sa}/contacts/{contact.json()['id']}",
         {"custom_fields": {"s": {"deep": [1, -INF]}}}, "custom_fields.s.deep[1]", "-Infinity"),
        ("POST", f"{sa}/contacts/upsert", {"phone": "+12125550160",
                                           "custom_fields": {"score": INF}},
         "custom_fields.score", "Infinity"),
        ("POST", f"{sa}/providers", {"provider": "smtp", "name": "m", "account_id": "u",
                                     "secret": "s", "config": {"host": "localhost", "port": INF}},
         "config.port", "Infinity"),
        ("PATCH", f"{sa}/providers/{provider}", {"config": {"timeout": NAN}},
         "config.timeout", "NaN"),
        ("POST", f"{sa}/campaigns", {"name": "c", "channel": "sms", "body": "hi",
                                     "audience": {"filters": [score]}},
         "audience.filters[0].value", "NaN"),
        ("PATCH", f"{sa}/campaigns/{draft.json()['id']}", {"audience": {"filters": [score]}},
         "audience.filters[0].value", "NaN"),
    ]
    before = await hub.pool.fetchval("SELECT count(*) FROM events")
    headers = {**h, "Content-Type": "application/json"}
    for method, url, body, field, written in cases:
        r = await api.request(method, url, headers=headers, content=json.dumps(body))
        problem = assert_problem(r, 422, "validation_failed", field=field)
        error = next(e for e in problem["errors"] if e["field"] == field)
        assert error["code"] == "invalid_number" and written in error["message"], problem
    # Where text is expected, a number of any kind is a type error, named too.
    for method, url in (("POST", f"{sa}/templates"),
                        ("PATCH", f"{sa}/templates/{template.json()['id']}")):
        r = await api.request(method, url, headers=headers, content=json.dumps(
            {"name": "t", "channel": "sms", "body": NAN}))
        assert_problem(r, 422, "validation_failed", field="body")
    assert await hub.pool.fetchval("SELECT count(*) FROM events") == before
    stored = await hub.pool.fetchval(
        """SELECT count(*) FROM contacts WHERE custom_fields <> '{}'""")
    assert stored == 0
    assert (await api.get(f"{sa}/providers/{provider}", headers=h)).json()["config"] == {
        "host": "localhost", "port": 25}
